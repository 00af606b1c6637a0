/**
 * The record of passthrough backing ids (src/fuse/backing-journal.ts reads it, the engine's
 * C writer native/src/backing_journal.cc appends to it; records here are written by that
 * very writer): a crash at any byte leaves a consistent file.
 *
 * - Live ids: registered and not closed, retired ones flagged, the latest per node.
 * - Every prefix of a real file (a process killed after any byte) opens to exactly the
 *   records wholly inside it, the torn tail is cut off, and the C writer appends after the
 *   good records (the reopened file has prefix + the new record).
 * - A flipped bit ends the valid prefix at that record.
 * - A real kill -9: a child appends with the C writer and reports each record after the
 *   write returned; after SIGKILL (sent once it reported enough, no sleep) every reported
 *   record is in the reopened file, with no gap.
 * - A fresh open empties the file; a file that is not ours starts empty.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BACKING_OP, BackingJournal } from '../../../src/fuse/backing-journal.js';
import { loadNativeAddon } from '../../../src/fuse/native-mount.js';

const HEAD = 8;
const RECORD = 24;

describe('BackingJournal (the record of passthrough backing ids)', () => {
  let dir: string;
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'narfs-backing-')); });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  /** Appends with the engine's writer; returns the new valid size. */
  function append(path: string, size: number, ops: Array<[number, number, number]>): number {
    const fd = openSync(path, 'a');
    try {
      for (const [op, nodeid, id] of ops) {
        const r = loadNativeAddon().backingJournalAppend(fd, size, op, nodeid, id);
        assert.ok(r > 0, `append failed: errno ${-r}`);
        size = r;
      }
    } finally {
      closeSync(fd);
    }
    return size;
  }

  const sorted = (j: BackingJournal) => j.live.sort((a, b) => a.nodeid - b.nodeid);

  it('live ids: registered and not closed, retired flagged, the latest per node', async () => {
    const path = join(dir, 'backing');
    const j0 = BackingJournal.open(path, { fresh: true });
    assert.equal(j0.size, HEAD);
    const { opened, retired, closed } = BACKING_OP;
    const size = append(path, j0.size, [
      [opened, 10, 1], [opened, 11, 2], [opened, 12, 3], [closed, 11, 2], [retired, 12, 3],
      [opened, 2 ** 40, 4], [opened, 13, 5], [closed, 13, 5], [opened, 13, 6],
    ]);
    assert.equal(size, HEAD + 9 * RECORD);
    assert.equal((await stat(path)).size, size);
    const j = BackingJournal.open(path, { fresh: false });
    assert.equal(j.records, 9);
    assert.equal(j.size, size);
    assert.deepEqual(sorted(j), [
      { nodeid: 10, backingId: 1, retired: false },
      { nodeid: 12, backingId: 3, retired: true },
      { nodeid: 13, backingId: 6, retired: false },
      { nodeid: 2 ** 40, backingId: 4, retired: false },
    ]);
    const o = j.engineOptions(77);
    assert.equal(o.unknownBelow, 77);
    assert.equal(o.live.length, 12);
    const fresh = BackingJournal.open(path, { fresh: true });
    assert.equal(fresh.live.length, 0);
    assert.equal((await stat(path)).size, HEAD);
  });

  it('every prefix of the file (a kill after any byte) opens to the records wholly in it', async () => {
    const path = join(dir, 'backing');
    const ops: Array<[number, number, number]> = [
      [BACKING_OP.opened, 5, 1], [BACKING_OP.opened, 6, 2], [BACKING_OP.retired, 5, 1], [BACKING_OP.closed, 6, 2], [BACKING_OP.opened, 7, 3],
    ];
    append(path, BackingJournal.open(path, { fresh: true }).size, ops);
    const full = await readFile(path);
    assert.equal(full.length, HEAD + ops.length * RECORD);
    const cut = join(dir, 'cut');
    for (let len = 0; len <= full.length; len++) {
      await writeFile(cut, full.subarray(0, len));
      const j = BackingJournal.open(cut, { fresh: false });
      const whole = len < HEAD ? 0 : Math.floor((len - HEAD) / RECORD);
      assert.equal(j.records, whole, `prefix of ${len} bytes`);
      assert.equal(j.size, HEAD + whole * RECORD);
      // The state after `whole` records, from the ops themselves.
      const live = new Map<number, { nodeid: number; backingId: number; retired: boolean }>();
      for (const [op, nodeid, id] of ops.slice(0, whole)) {
        if (op === BACKING_OP.opened) live.set(id, { nodeid, backingId: id, retired: false });
        else if (op === BACKING_OP.retired) live.get(id)!.retired = true;
        else live.delete(id);
      }
      assert.deepEqual(sorted(j), [...live.values()].sort((a, b) => a.nodeid - b.nodeid), `prefix of ${len} bytes`);
      assert.equal((await stat(cut)).size, j.size, 'the torn tail is cut');
      // The engine appends after the good records; the new record is read back.
      append(cut, j.size, [[BACKING_OP.opened, 1000, 99]]);
      const again = BackingJournal.open(cut, { fresh: false });
      assert.equal(again.records, whole + 1, `append after a prefix of ${len}`);
      assert.ok(again.live.some((b) => b.nodeid === 1000 && b.backingId === 99));
    }
  });

  it('a flipped bit ends the valid prefix at that record', async () => {
    const path = join(dir, 'backing');
    append(path, BackingJournal.open(path, { fresh: true }).size, [1, 2, 3, 4].map((i) => [BACKING_OP.opened, i, i]));
    const buf = await readFile(path);
    const third = HEAD + 2 * RECORD;
    buf[third + 20] = buf[third + 20]! ^ 0x04; // inside the third record's nodeid
    await writeFile(path, buf);
    const j = BackingJournal.open(path, { fresh: false });
    assert.equal(j.records, 2);
    assert.deepEqual(sorted(j).map((b) => b.nodeid), [1, 2]);
    assert.equal((await stat(path)).size, third);
  });

  it('kill -9 of a process appending: every append that returned is there', async function () {
    this.timeout(120_000);
    const path = join(dir, 'backing');
    BackingJournal.open(path, { fresh: true });
    const mountModule = fileURLToPath(new URL('../../../src/fuse/native-mount.ts', import.meta.url));
    const script = `
      import { openSync, writeSync } from 'node:fs';
      import { loadNativeAddon } from ${JSON.stringify(mountModule)};
      const a = loadNativeAddon();
      const fd = openSync(${JSON.stringify(path)}, 'a');
      // stdout is a non-blocking pipe: retry until the parent drained it.
      const say = (s) => { for (;;) { try { writeSync(1, s); return; } catch (e) { if (e.code !== 'EAGAIN') throw e; } } };
      let size = ${HEAD};
      for (let i = 1; i < 2000000; i++) {
        size = a.backingJournalAppend(fd, size, 1, 1000 + i, i);
        if (size < 0) throw new Error('errno ' + -size);
        say(i + '\\n');
      }
      setInterval(() => {}, 1000); // wait for the kill
    `;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    const reported = await new Promise<number[]>((resolve, reject) => {
      child.on('exit', (code, signal) => (signal === 'SIGKILL' ? undefined : reject(new Error(`child exited ${code}`))));
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const lines = out.split('\n').slice(0, -1);
        if (lines.length >= 2000 && child.exitCode === null && !child.killed) {
          child.kill('SIGKILL');
          child.once('exit', () => resolve((out.split('\n').slice(0, -1)).map(Number)));
        }
      });
    });
    const j = BackingJournal.open(path, { fresh: false });
    const byNode = new Map(j.live.map((b) => [b.nodeid, b.backingId]));
    for (const i of reported) assert.equal(byNode.get(1000 + i), i, `record ${i} was reported written`);
    // No gap: the records are ids 1..n in order.
    assert.equal(j.records, byNode.size);
    for (let i = 1; i <= j.records; i++) assert.equal(byNode.get(1000 + i), i);
    assert.equal((await stat(path)).size, j.size);
  });

  it('a file whose header is not ours starts empty', async () => {
    const path = join(dir, 'backing');
    await writeFile(path, 'something else entirely, long enough for records');
    const j = BackingJournal.open(path, { fresh: false });
    assert.equal(j.records, 0);
    assert.equal(j.size, HEAD);
    append(path, j.size, [[BACKING_OP.opened, 3, 7]]);
    assert.deepEqual(BackingJournal.open(path, { fresh: false }).live, [{ nodeid: 3, backingId: 7, retired: false }]);
  });
});
