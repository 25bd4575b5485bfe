/**
 * The one progress display of every command (quantize, ppl, downloads). On a terminal: one line,
 * fitted to its width and redrawn in place. Elsewhere (a pipe, a log file, CI): a plain line at the
 * start, every few seconds and at the end, so logs stay readable.
 */

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}

export interface ProgressStream {
  write(s: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export class Progress {
  private readonly started = Date.now();
  private lastDraw = 0;
  private lastLine = '';
  private drawn = false;

  constructor(
    private readonly label: string,
    private readonly stream: ProgressStream = process.stderr,
    /** between plain lines when not on a terminal */
    private readonly intervalMs = 5000,
  ) {}

  /** `done` of `total` units; `detail` is what is happening now (shortened to fit). */
  update(done: number, total: number, detail = ''): void {
    const now = Date.now();
    const tty = this.stream.isTTY === true;
    const finished = done >= total;
    if (this.drawn && !finished && now - this.lastDraw < (tty ? 100 : this.intervalMs)) return;
    this.lastDraw = now;
    this.drawn = true;
    const line = this.line(done, total, detail, tty ? Math.max(20, (this.stream.columns ?? 80) - 1) : undefined);
    if (tty) this.stream.write(`\r\x1b[K${line}`);
    else if (line !== this.lastLine) this.stream.write(`${line}\n`);
    this.lastLine = line;
  }

  /** A message line above the progress line (which a terminal then shows again below it). */
  note(text: string): void {
    if (this.stream.isTTY === true && this.drawn) this.stream.write(`\r\x1b[K${text}\n${this.lastLine}`);
    else this.stream.write(`${text}\n`);
  }

  /** Ends the display (a newline after the in-place line). */
  finish(): void {
    if (this.drawn && this.stream.isTTY === true) this.stream.write('\n');
    this.drawn = false;
  }

  /** The line for `width` columns (bar included), or the plain line without a bar. */
  line(done: number, total: number, detail: string, width?: number): string {
    const fraction = total > 0 ? Math.min(1, done / total) : 0;
    const elapsed = (Date.now() - this.started) / 1000;
    const eta =
      fraction >= 1
        ? `done in ${formatDuration(elapsed)}`
        : fraction > 0
          ? `ETA ${formatDuration((elapsed * (1 - fraction)) / fraction)}`
          : '';
    const percent = `${Math.floor(fraction * 100)}%`.padStart(4);
    if (width === undefined) return [this.label, percent, detail, eta].filter(Boolean).join('  ');
    const fixed = `${this.label} [] ${percent}  ${eta}`.length;
    let room = width - fixed;
    // the bar gets at least 10 columns; the detail what is left (cut with an ellipsis)
    const barWidth = Math.max(10, Math.min(30, room - Math.min(detail.length + 2, Math.max(0, room - 10))));
    room -= barWidth;
    const shown = room <= 3 ? '' : detail.length + 2 <= room ? detail : `${detail.slice(0, room - 3)}…`;
    const filled = Math.round(fraction * barWidth);
    const text = `${this.label} [${'#'.repeat(filled)}${'.'.repeat(barWidth - filled)}] ${percent}${shown ? `  ${shown}` : ''}${eta ? `  ${eta}` : ''}`;
    return text.length > width ? text.slice(0, width) : text;
  }
}
