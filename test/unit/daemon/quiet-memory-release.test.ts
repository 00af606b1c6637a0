/**
 * QuietMemoryRelease: one GC and, after it, one malloc_trim per quiet period that follows
 * work; nothing while the activity count moves or the daemon is busy; nothing after stop().
 * The checks count the release's own ticks (each asks for the activity once), not the
 * clock, so a loaded machine only makes them slower. The GC hook and the native trim are
 * also called for real once.
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { fullGc, startQuietMemoryRelease } from '../../../src/daemon/quiet-memory-release.js';
import { nativeMallocTrim } from '../../../src/fuse/native-mount.js';

const QUIET = 20;
const DEADLINE_MS = 20_000;

/** A fake daemon: its activity moves on every tick while `working`; counts the ticks. */
class Daemon {
  working = false;
  busy = false;
  ticks = 0;
  #count = 0;
  readonly calls: string[] = [];
  activity = (): number => {
    this.ticks++;
    if (this.working) this.#count++;
    return this.#count;
  };

  /** Resolves after `n` more ticks (or fails at the deadline). */
  async afterTicks(n: number): Promise<void> {
    const until = this.ticks + n;
    const end = Date.now() + DEADLINE_MS;
    while (this.ticks < until) {
      if (Date.now() > end) throw new Error(`only ${this.ticks} of ${until} ticks by the deadline`);
      await sleep(5);
    }
  }

  /** Resolves once `calls` has `n` entries (or fails at the deadline). */
  async untilCalls(n: number): Promise<void> {
    const end = Date.now() + DEADLINE_MS;
    while (this.calls.length < n) {
      if (Date.now() > end) throw new Error(`calls ${JSON.stringify(this.calls)} by the deadline`);
      await sleep(5);
    }
  }
}

describe('QuietMemoryRelease', () => {
  it('releases once after work, then not again until there was work', async () => {
    const d = new Daemon();
    const r = startQuietMemoryRelease({
      activity: d.activity, busy: () => d.busy, quietMs: QUIET, trimAfterGcMs: 1,
      gc: () => d.calls.push('gc'), trim: () => { d.calls.push('trim'); return true; },
    });
    try {
      // Start-up counts as work: the first quiet tick releases, the GC first.
      await d.untilCalls(2);
      assert.deepEqual(d.calls, ['gc', 'trim']);
      assert.equal(r.releases, 1);
      // Quiet on: nothing more.
      await d.afterTicks(4);
      assert.deepEqual(d.calls, ['gc', 'trim']);
      // Work seen on every tick: no release while it lasts.
      d.working = true;
      await d.afterTicks(5);
      assert.deepEqual(d.calls, ['gc', 'trim'], 'no release during work');
      // Busy (a background commit) with the count still: no release either.
      d.working = false;
      d.busy = true;
      await d.afterTicks(5);
      assert.deepEqual(d.calls, ['gc', 'trim'], 'no release while busy');
      // Quiet again: one more release, then none.
      d.busy = false;
      await d.untilCalls(4);
      await d.afterTicks(4);
      assert.deepEqual(d.calls, ['gc', 'trim', 'gc', 'trim']);
      assert.equal(r.releases, 2);
    } finally {
      r.stop();
    }
  });

  it('does nothing after stop(), including a trim that was due', async () => {
    const d = new Daemon();
    const r = startQuietMemoryRelease({
      activity: d.activity, quietMs: QUIET, trimAfterGcMs: 60_000,
      gc: () => d.calls.push('gc'), trim: () => { d.calls.push('trim'); return true; },
    });
    await d.untilCalls(1);
    r.stop();
    const ticks = d.ticks;
    await sleep(QUIET * 5);
    assert.deepEqual(d.calls, ['gc'], 'the pending trim was cancelled');
    assert.equal(d.ticks, ticks, 'no tick after stop()');
  });

  it('runs nothing without a GC hook or a trim', async () => {
    const d = new Daemon();
    const r = startQuietMemoryRelease({ activity: d.activity, quietMs: 5, gc: undefined, trim: undefined });
    await sleep(50);
    r.stop();
    assert.equal(d.ticks, 0, 'no timer was started');
    assert.equal(r.releases, 0);
  });

  it('has a real full GC and a real malloc_trim on this machine', () => {
    const had = (globalThis as { gc?: unknown }).gc;
    const gc = fullGc();
    assert.equal(typeof gc, 'function');
    gc!();
    // The flag was set only to take the hook: the global object did not gain `gc`.
    assert.equal((globalThis as { gc?: unknown }).gc, had);
    const trim = nativeMallocTrim();
    assert.equal(typeof trim, 'function', 'the native engine is built and this is glibc');
    assert.equal(typeof trim!(), 'boolean');
  });
});
