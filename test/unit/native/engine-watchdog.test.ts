/**
 * The engine's watchdog thread (native/src/watchdog.cc) against a real AF_UNIX datagram
 * socket standing in for systemd's $NOTIFY_SOCKET (a python3 receiver: Node has no
 * AF_UNIX datagrams). Checked: WATCHDOG=1 datagrams arrive while JS beats; while the JS
 * event loop is blocked (a synchronous wait, as a stuck loop would be) the thread
 * withholds every ping — no datagram is sent between the first withheld tick and the end
 * of the block — and the pings resume once the loop runs again. Every wait is on an event
 * (a datagram, or the thread's own counters), bounded by a generous deadline.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadNativeAddon } from '../../../src/fuse/native-mount.js';

const RECEIVER = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("listening", flush=True)
while True:
    d = s.recv(4096)
    print(d.decode().replace("\\n", "|"), flush=True)
`;
const DEADLINE_MS = 60_000;

describe('native: engine watchdog (WATCHDOG=1 only while JS beats)', function () {
  this.timeout(120_000);
  let dir: string;
  let receiver: ChildProcess | undefined;
  let received: string[] = [];
  let wake: (() => void) | undefined;
  const saved = process.env['NOTIFY_SOCKET'];

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'narfs-wd-'));
    const sock = join(dir, 'notify');
    received = [];
    receiver = spawn('python3', ['-c', RECEIVER, sock], { stdio: ['ignore', 'pipe', 'inherit'] });
    let buf = '';
    receiver.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const lines = buf.split('\n');
      buf = lines.pop()!;
      received.push(...lines);
      wake?.();
    });
    await until(() => received.includes('listening'), 'the receiver');
    process.env['NOTIFY_SOCKET'] = sock;
  });

  afterEach(async () => {
    loadNativeAddon().watchdogStop();
    if (saved === undefined) delete process.env['NOTIFY_SOCKET'];
    else process.env['NOTIFY_SOCKET'] = saved;
    receiver?.kill();
    await rm(dir, { recursive: true, force: true });
  });

  /** Waits for `cond`, re-checked on every datagram (and every second for the deadline). */
  async function until(cond: () => boolean, what: string): Promise<void> {
    const end = Date.now() + DEADLINE_MS;
    while (!cond()) {
      if (Date.now() > end) assert.fail(`${what}: not within ${DEADLINE_MS / 1000} s (received ${received.join(', ')})`);
      await new Promise<void>((r) => { wake = r; setTimeout(r, 1000); });
    }
  }

  it('pings while JS beats, withholds every ping while the loop is blocked, resumes after', async () => {
    const a = loadNativeAddon();
    a.watchdogStart(null, 20, 100);
    const beat = setInterval(() => a.watchdogBeat(), 20);
    try {
      await until(() => received.filter((l) => l === 'WATCHDOG=1').length >= 3, 'three pings');
      // Block the event loop (no beat can run) until the thread has withheld 5 ticks.
      const cell = new Int32Array(new SharedArrayBuffer(4));
      const before = a.watchdogStats()!;
      const blockEnd = Date.now() + DEADLINE_MS;
      let firstWithheld: { pings: number; withheld: number } | undefined;
      for (;;) {
        Atomics.wait(cell, 0, 0, 10);
        const st = a.watchdogStats()!;
        if (!firstWithheld && st.withheld > before.withheld) firstWithheld = st;
        if (firstWithheld && st.withheld >= firstWithheld.withheld + 5) {
          assert.equal(st.lastReason, 'js-stalled');
          assert.equal(st.pings, firstWithheld.pings, 'no ping once the loop is stale');
          break;
        }
        assert.ok(Date.now() < blockEnd, 'the thread never withheld a ping while JS was blocked');
      }
      const sentBeforeResume = a.watchdogStats()!.pings;
      await until(() => a.watchdogStats()!.pings >= sentBeforeResume + 3, 'pings after the loop runs again');
      await until(() => received.filter((l) => l === 'WATCHDOG=1').length >= sentBeforeResume + 3, 'the datagrams of those pings');
      assert.ok(received.filter((l) => l === 'WATCHDOG=1').length <= a.watchdogStats()!.pings);
    } finally {
      clearInterval(beat);
    }
  });

  it('no beat at all: the thread never pings', async () => {
    const a = loadNativeAddon();
    a.watchdogStart(null, 20, 60);
    const cell = new Int32Array(new SharedArrayBuffer(4));
    // Not beating: wait (without blocking the thread) until it withheld 5 ticks.
    await until(() => {
      Atomics.wait(cell, 0, 0, 5);
      return a.watchdogStats()!.withheld >= 5;
    }, 'withheld ticks');
    const st = a.watchdogStats()!;
    // At most the pings within the first 60 ms (start counts as a beat).
    assert.ok(st.pings <= 3, `pings without beats: ${st.pings}`);
    assert.equal(st.lastReason, 'js-stalled');
  });
});
