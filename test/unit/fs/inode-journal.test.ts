/**
 * InodeJournal: crash at any point leaves a consistent journal.
 *
 * - Every prefix of a real journal file (a process killed after any byte) opens to exactly
 *   the records wholly inside the prefix, the torn tail is cut off, and appending after it
 *   yields a file that opens to prefix + new record.
 * - A real kill -9: a child process appends records and reports each one after append()
 *   returned; after SIGKILL (sent once it reported enough, no sleep) every reported record
 *   is in the reopened journal, and nextIno is above all of them.
 * - A corrupted record (bit flip) ends the valid prefix there.
 * - Names are byte strings (any byte but NUL and '/').
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InodeJournal } from '../../../src/fs/inode-journal.js';

const NAMES = ['bin', 'é', '\u00ff\u0001name with spaces', 'x'.repeat(255), '0123456789abcdfghijklmnpqrsvwxyz-hello-2.12'];

describe('InodeJournal', () => {
  let dir: string;
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'narfs-journal-')); });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  function writeSome(path: string, n: number): Array<{ ino: number; parent: number; name: string }> {
    const j = InodeJournal.open(path, { fresh: true });
    const recs = [];
    for (let i = 0; i < n; i++) {
      const r = { ino: 3 + i, parent: i === 0 ? 1 : 3 + Math.floor(i / 2), name: NAMES[i % NAMES.length]! + String(i) };
      j.append(r.ino, r.parent, r.name);
      recs.push(r);
    }
    j.close();
    return recs;
  }

  it('loads what was appended: both directions, nextIno above all', async () => {
    const path = join(dir, 'inodes');
    const recs = writeSome(path, 20);
    const j = InodeJournal.open(path, { fresh: false });
    assert.equal(j.size, 20);
    for (const r of recs) {
      assert.deepEqual(j.get(r.ino), { parent: r.parent, name: r.name });
      assert.equal(j.childOf(r.parent, r.name), r.ino);
    }
    assert.equal(j.nextIno, 23);
    j.close();
    const fresh = InodeJournal.open(path, { fresh: true });
    assert.equal(fresh.size, 0);
    assert.equal(fresh.nextIno, 1);
    fresh.close();
  });

  it('every prefix of the file (a kill after any byte) opens to the records wholly in it', async () => {
    const path = join(dir, 'inodes');
    const recs = writeSome(path, 6);
    const full = await readFile(path);
    // Record end offsets, from the format: 8-byte header, then 8 + 16 + name bytes each.
    const ends: number[] = [];
    let off = 8;
    for (const r of recs) { off += 24 + Buffer.byteLength(r.name, 'latin1'); ends.push(off); }
    assert.equal(off, full.length);
    const cut = join(dir, 'cut');
    for (let len = 0; len <= full.length; len++) {
      await writeFile(cut, full.subarray(0, len));
      const j = InodeJournal.open(cut, { fresh: false });
      const whole = ends.filter((e) => e <= len).length;
      assert.equal(j.size, whole, `prefix of ${len} bytes`);
      for (let i = 0; i < recs.length; i++) assert.equal(j.get(recs[i]!.ino) !== undefined, i < whole, `record ${i} in a prefix of ${len}`);
      // The torn tail is gone; what is appended now is read back after the good records.
      j.append(1000, 1, 'after');
      j.close();
      const again = InodeJournal.open(cut, { fresh: false });
      assert.equal(again.size, whole + 1, `append after a prefix of ${len}`);
      assert.deepEqual(again.get(1000), { parent: 1, name: 'after' });
      assert.equal(again.nextIno, 1001);
      again.close();
      assert.equal((await stat(cut)).size, (len < 8 ? 8 : ends.filter((e) => e <= len).at(-1) ?? 8) + 24 + 5);
    }
  });

  it('a flipped bit ends the valid prefix at that record', async () => {
    const path = join(dir, 'inodes');
    const recs = writeSome(path, 5);
    const buf = await readFile(path);
    const third = 8 + recs.slice(0, 2).reduce((a, r) => a + 24 + Buffer.byteLength(r.name, 'latin1'), 0);
    buf[third + 30] = buf[third + 30]! ^ 0x10; // inside the third record's name
    await writeFile(path, buf);
    const j = InodeJournal.open(path, { fresh: false });
    assert.equal(j.size, 2);
    j.close();
    assert.equal((await stat(path)).size, third);
  });

  it('kill -9 of a process appending: every append that returned is there', async function () {
    this.timeout(120_000);
    const path = join(dir, 'inodes');
    const journalModule = fileURLToPath(new URL('../../../src/fs/inode-journal.ts', import.meta.url));
    const script = `
      import { writeSync } from 'node:fs';
      import { InodeJournal } from ${JSON.stringify(journalModule)};
      const j = InodeJournal.open(${JSON.stringify(path)}, { fresh: true });
      // stdout is a non-blocking pipe: retry until the parent drained it.
      const say = (s) => { for (;;) { try { writeSync(1, s); return; } catch (e) { if (e.code !== 'EAGAIN') throw e; } } };
      for (let i = 2; i < 200000; i++) { j.append(i, i === 2 ? 1 : i - 1, 'n' + i + 'x'.repeat(i % 200)); say(i + '\\n'); }
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
    const j = InodeJournal.open(path, { fresh: false });
    for (const ino of reported) assert.ok(j.get(ino), `record ${ino} was reported written`);
    assert.ok(j.nextIno > Math.max(...reported));
    // The records form one chain from the root: nothing after a gap.
    for (let i = 3; i < j.nextIno; i++) assert.deepEqual(j.get(i), { parent: i - 1, name: 'n' + i + 'x'.repeat(i % 200) });
    j.close();
  });

  it('a journal whose header is not ours starts empty', async () => {
    const path = join(dir, 'inodes');
    await writeFile(path, 'something else entirely');
    const j = InodeJournal.open(path, { fresh: false });
    assert.equal(j.size, 0);
    j.append(5, 1, 'a');
    j.close();
    assert.equal(InodeJournal.open(path, { fresh: false }).get(5)?.name, 'a');
    await truncate(path, 0);
  });
});
