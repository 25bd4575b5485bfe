/**
 * src/cli/progress.ts, the one progress display of every command. Catches: lines wider than the
 * terminal (each update wraps and stacks up), a redraw that does not return to the line start,
 * log files flooded with one line per update, and ETAs like "3ss".
 */
import { expect, test } from 'vitest';
import { formatBytes, formatDuration, Progress } from '../../src/cli/progress.js';

function recorder(isTTY: boolean, columns?: number) {
  const writes: string[] = [];
  return { writes, stream: { isTTY, columns, write: (s: string) => writes.push(s) } };
}

test('durations and sizes read as a person writes them', () => {
  expect([0, 4.4, 59.6, 185, 3600, 7384].map(formatDuration)).toEqual([
    '0 s',
    '4 s',
    '1 min 0 s',
    '3 min 5 s',
    '1 h 0 min',
    '2 h 3 min',
  ]);
  expect(formatDuration(NaN)).toBe('?');
  expect([512, 1536, 5 * 2 ** 20, 3.5 * 2 ** 30].map(formatBytes)).toEqual([
    '512 B',
    '1.50 KiB',
    '5.00 MiB',
    '3.50 GiB',
  ]);
});

test('on a terminal every line fits its width, whatever the detail, and the bar fills with the work', () => {
  const detail = 'block 12/32 model.layers.11.self_attn.q_proj loss 1.234e-3 and a very long tail of detail text';
  for (const columns of [24, 40, 60, 80, 120, 200]) {
    const { stream } = recorder(true, columns);
    const p = new Progress('quantizing', stream);
    for (const done of [0, 1, 17, 99, 100]) {
      const line = p.line(done, 100, detail, columns - 1);
      expect(line.length, `${columns} columns: ${line}`).toBeLessThanOrEqual(columns - 1);
      expect(line).toMatch(/^quantizing \[[#.]+\]/);
      const bar = /\[([#.]+)\]/.exec(line)![1]!;
      expect(bar.split('#').length - 1, line).toBe(Math.round((done / 100) * bar.length));
    }
  }
});

test('on a terminal it redraws one line in place (\\r and erase), and finish ends it with a newline', () => {
  const { writes, stream } = recorder(true, 80);
  const p = new Progress('ppl', stream);
  p.update(1, 10, 'a');
  p.update(10, 10, 'b');
  p.finish();
  expect(writes.slice(0, 2).every((w) => w.startsWith('\r\x1b[K') && !w.includes('\n'))).toBe(true);
  expect(writes.at(-1)).toBe('\n');
  expect(writes[1]).toMatch(/100%.*done in/);
});

test('not on a terminal: plain lines, the first, at most one per interval, and the last', () => {
  const { writes, stream } = recorder(false);
  const p = new Progress('download', stream, 60_000);
  for (let i = 0; i <= 1000; i++) p.update(i, 1000, `${i} bytes`);
  p.finish();
  expect(writes).toHaveLength(2);
  expect(writes.every((w) => w.endsWith('\n') && !w.includes('\r') && !w.includes('\x1b'))).toBe(true);
  expect(writes[0]).toMatch(/^download\s+0%/);
  expect(writes[1]).toMatch(/^download {2}100% {2}1000 bytes {2}done in/);
});
