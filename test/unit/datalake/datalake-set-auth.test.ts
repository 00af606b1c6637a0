/**
 * Refused credentials at start, against real servers on 127.0.0.1: with another datalake up
 * the mount's set opens, keeps the refusing one down, and uses it as soon as a probe finds
 * a fixed token file (no restart); alone, the refusal stops the start with
 * ERR_DATALAKE_AUTH rather than starting offline behind a wrong token.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatalakeSet } from '../../../src/datalake/datalake-set.js';
import { HttpDatalake } from '../../../src/datalake/http-datalake.js';
import { isNarfsError } from '../../../src/errors.js';
import { loadFixtures } from '../../support/fixtures.js';
import { HttpDatalakeServer } from '../../support/http-datalake-server.js';

describe('DatalakeSet: refused credentials at start', function () {
  this.timeout(120_000);
  let dir: string;
  const servers: HttpDatalakeServer[] = [];
  const sets: DatalakeSet[] = [];
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'narfs-set-auth-'));
  });
  afterEach(async () => {
    for (const s of sets.splice(0)) await s.close();
    for (const s of servers.splice(0)) await s.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function start(): Promise<{ open: HttpDatalakeServer; locked: HttpDatalakeServer; tokenFile: string }> {
    const fixtures = await loadFixtures();
    const open = await HttpDatalakeServer.start({ root: fixtures.datalakes['xz'].dir });
    const locked = await HttpDatalakeServer.start({ root: fixtures.datalakes['zstd'].dir });
    servers.push(open, locked);
    locked.requireBearer('right-token');
    const tokenFile = join(dir, 'token');
    await writeFile(tokenFile, 'wrong-token\n', { mode: 0o600 });
    return { open, locked, tokenFile };
  }

  it('with another datalake up: opens, keeps it down, and uses it once the token file is fixed', async () => {
    const { open, locked, tokenFile } = await start();
    const lines: Array<{ msg: string; code?: string }> = [];
    let upAgain: (() => void) | undefined;
    const back = new Promise<void>((resolve) => { upAgain = resolve; });
    const push = (msg: string, fields: Record<string, unknown> = {}) => {
      lines.push({ msg, code: (fields.err as { code?: string } | undefined)?.code });
      if (msg.startsWith('datalake is up again')) upAgain?.();
    };
    const lockedLake = new HttpDatalake(locked.url, { bearerTokenFiles: [{ file: tokenFile }], attempts: 1 });
    const set = new DatalakeSet([lockedLake, new HttpDatalake(open.url)], { logger: { info: push, warn: push } });
    sets.push(set);
    await set.open();
    assert.deepEqual(set.status().map((s) => [s.displayUrl, s.up]), [[locked.url, false], [open.url, true]]);
    assert.ok(lines.some((l) => l.code === 'ERR_DATALAKE_AUTH' && /refused the credentials/.test(l.msg)), JSON.stringify(lines));
    await writeFile(tokenFile, 'right-token\n', { mode: 0o600 });
    await back; // a background probe re-read the token file
    assert.deepEqual(set.status().map((s) => s.up), [true, true]);
  });

  it('alone: the start fails with ERR_DATALAKE_AUTH, not offline', async () => {
    const { locked, tokenFile } = await start();
    const set = new DatalakeSet([new HttpDatalake(locked.url, { bearerTokenFiles: [{ file: tokenFile }], attempts: 1 })]);
    sets.push(set);
    await assert.rejects(set.open({ allowAllDown: true }), (e: unknown) => isNarfsError(e, 'ERR_DATALAKE_AUTH'));
  });
});
