/**
 * Summarises the context switches of one thread recorded by Linux `perf` (tracepoint
 * `sched:sched_switch` with call chains): how often it blocked (prev_state S/D) and how often it
 * was preempted while runnable (prev_state R), which programs took its CPU, and where it was
 * preempted (inside a write, which for the server is one to a socket: PostgreSQL, Redis or an
 * HTTP client; at a system call's exit; or at an interrupt's return, e.g.
 * the reschedule IPI of a task woken on the other CPU). Reads the text of `perf script`.
 *
 *   perf record -e sched:sched_switch -g -t <server pid> -o /tmp/sched.data -- sleep 8
 *   perf script -i /tmp/sched.data | npx tsx bench/perf/sched-switch-summary.ts
 *
 * The format is perf-script's default for this tracepoint: a header line
 * `comm pid [cpu] time: sched:sched_switch: prev_comm=… prev_state=R ==> next_comm=… …`
 * followed by one indented frame per line (innermost first), events separated by a blank line.
 */
import { readFileSync } from 'node:fs';

/** Counts of one recording: switches by the thread's state, and its preemptions by successor and by place. */
interface SwitchSummary {
  blocked: number;
  preempted: number;
  preemptedBy: Map<string, number>;
  preemptedIn: Map<string, number>;
}

/** Parses `perf script` output of sched:sched_switch events (see the file comment); events of other tracepoints are skipped. */
function summariseSwitches(text: string): SwitchSummary {
  const out: SwitchSummary = { blocked: 0, preempted: 0, preemptedBy: new Map(), preemptedIn: new Map() };
  const bump = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);
  for (const event of text.split(/\n\s*\n/)) {
    const lines = event.trim().split('\n');
    const m = /prev_state=(\S+) ==> next_comm=(\S+)/.exec(lines[0] ?? '');
    if (!m) continue;
    if (!m[1]!.startsWith('R')) {
      out.blocked++;
      continue;
    }
    out.preempted++;
    bump(out.preemptedBy, m[2]!);
    const frames = lines.slice(1, 10).map((l) => l.trim().split(/\s+/)[1] ?? '');
    const place = frames.some((f) => /writev|sendmsg|sendto|write\b/.test(f))
      ? 'in a write (write, writev, sendmsg)'
      : frames.some((f) => f.startsWith('irqentry_exit'))
        ? "at an interrupt's return (IPI, timer)"
        : frames.some((f) => /syscall_exit|do_syscall/.test(f))
          ? "at a system call's exit"
          : 'elsewhere';
    bump(out.preemptedIn, place);
  }
  return out;
}

const s = summariseSwitches(readFileSync(0, 'utf8'));
const total = s.blocked + s.preempted;
const pct = (n: number, of: number) => `${((100 * n) / Math.max(1, of)).toFixed(0)} %`;
console.log(`context switches: ${total}; blocked ${s.blocked} (${pct(s.blocked, total)}), preempted ${s.preempted} (${pct(s.preempted, total)})`);
console.log('preempted by:');
for (const [k, n] of [...s.preemptedBy].sort((a, b) => b[1] - a[1]).slice(0, 8)) console.log(`  ${k.padEnd(20)} ${String(n).padStart(6)}  ${pct(n, s.preempted)}`);
console.log('preempted where:');
for (const [k, n] of [...s.preemptedIn].sort((a, b) => b[1] - a[1])) console.log(`  ${k.padEnd(40)} ${String(n).padStart(6)}  ${pct(n, s.preempted)}`);
