/**
 * The progress line in a real terminal (tmux, 80 columns): quantize redraws one line in place
 * instead of stacking a line per update, and no line is wider than the terminal (a wider one wraps
 * on every redraw). Catches a progress line that ignores the terminal's width or never returns to
 * the start of the line.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { binPath } from './run.js';

const haveTmux = spawnSync('tmux', ['-V']).status === 0;
const work = mkdtempSync(join(tmpdir(), 'lowbit-tty-'));
const session = `lowbit-tty-${process.pid}`;
afterAll(() => {
  spawnSync('tmux', ['kill-session', '-t', session]);
  rmSync(work, { recursive: true, force: true });
});

test.skipIf(!haveTmux)(
  'quantize in an 80-column terminal: one progress line, redrawn in place, never wider than the terminal',
  async () => {
    const command = `cd ${work} && '${process.execPath}' '${binPath}' quantize --out q --samples 16 --seq-len 256; echo EXIT=$?; sleep 30`;
    execFileSync('tmux', ['new-session', '-d', '-s', session, '-x', '80', '-y', '40', command]);
    let screen = '';
    const deadline = Date.now() + 100_000;
    while (Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 500));
      screen = execFileSync('tmux', ['capture-pane', '-p', '-J', '-S', '-', '-t', session], { encoding: 'utf8' });
      if (/EXIT=\d+/.test(screen)) break;
    }
    expect(screen).toContain('EXIT=0');
    const lines = screen.split('\n');
    const progress = lines.filter((l) => l.startsWith('quantizing ['));
    expect(progress, screen).toHaveLength(1);
    expect(progress[0]).toMatch(/100%.*done in/);
    expect(progress[0]!.length).toBeLessThanOrEqual(80); // -J joins wrapped rows: a wider line would show here
  },
);
