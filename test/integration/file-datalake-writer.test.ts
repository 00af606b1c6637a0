/**
 * FileDatalakeWriter on a real directory: puts are atomic (temp file + rename, nothing left
 * behind on failure), a source shorter or longer than announced keeps the old object, and
 * no relPath can write outside the root.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';

import { FileDatalakeWriter } from '../../src/datalake/file-datalake-writer.js';
import { openDatalakeWriter } from '../../src/datalake/open-datalake-writer.js';
import { failure } from '../support/failure.js';

describe('FileDatalakeWriter', () => {
  let dir: string;
  let w: FileDatalakeWriter;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'narfs-writer-'));
    w = new FileDatalakeWriter(`file://${dir}`);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('writes bytes, files and streams, creating nar/, with mode 0644', async () => {
    await w.putBytes('a.narinfo', Buffer.from('one\n'));
    assert.equal(readFileSync(path.join(dir, 'a.narinfo'), 'utf8'), 'one\n');
    await w.putBytes('a.narinfo', Buffer.from('two\n'));
    assert.equal(readFileSync(path.join(dir, 'a.narinfo'), 'utf8'), 'two\n');
    const local = path.join(dir, 'local.bin');
    writeFileSync(local, Buffer.alloc(3 << 20, 7));
    await w.putFile('nar/x.nar.zst', local);
    assert.ok(readFileSync(path.join(dir, 'nar/x.nar.zst')).equals(Buffer.alloc(3 << 20, 7)));
    await w.putStream('nar/y', Readable.from([Buffer.from('ab'), Buffer.from('c')]), 3);
    assert.equal(readFileSync(path.join(dir, 'nar/y'), 'utf8'), 'abc');
    assert.equal(statSync(path.join(dir, 'nar/y')).mode & 0o777, 0o644 & ~process.umask());
    assert.deepEqual(await w.listNarInfoHashes(), []);
  });

  it('keeps the old object and leaves no temp file when the source is short, long or fails', async () => {
    await w.putBytes('nar/y', Buffer.from('old'));
    const short = await failure(w.putStream('nar/y', Readable.from([Buffer.from('ab')]), 3), 'ERR_DATALAKE_TRUNCATED');
    assert.match(short.message, /fewer/);
    await failure(w.putStream('nar/y', Readable.from([Buffer.from('abcd')]), 3), 'ERR_DATALAKE_TRUNCATED');
    const broken = new Readable({ read() { this.destroy(new Error('disk on fire')); } });
    await failure(w.putStream('nar/y', broken, 3), 'ERR_DATALAKE_UNAVAILABLE');
    assert.equal(readFileSync(path.join(dir, 'nar/y'), 'utf8'), 'old');
    assert.deepEqual(readdirSync(path.join(dir, 'nar')), ['y']);
  });

  it('refuses paths outside the root and schemes it cannot write', async () => {
    for (const bad of ['../x', '/etc/x', 'nar/../../x', 'a/./b', '']) {
      await failure(w.putBytes(bad, Buffer.from('x')), 'ERR_INVALID_ARGUMENT');
    }
    assert.throws(() => openDatalakeWriter('https://example.invalid/cache'), (e: unknown) => (e as { code?: string }).code === 'ERR_DATALAKE_URL');
    assert.ok(openDatalakeWriter(`file://${dir}`) instanceof FileDatalakeWriter);
  });
});
