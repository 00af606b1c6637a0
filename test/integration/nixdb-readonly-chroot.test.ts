/**
 * Nix 2.26.3 (Debian trixie chroot from scripts/build-trixie-chroot.sh) reads a lower store
 * written by narfs as `local?root=…&read-only=true`, i.e. SQLite `immutable=1`: no locks,
 * no WAL, no SchemaMigrations creation. Skipped when the chroot has not been built,
 * except on CI (CI=true), where a missing chroot is a failure.
 */
import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createLowerStore, lowerStoreLayout, registerValidPaths } from '../../src/nixdb/index.js';
import { fakeChain, lines, realClosure, snapshotDir, type PathInfoJson } from './nixdb-fixtures.js';

const repo = new URL('../../', import.meta.url).pathname;
const buildScript = join(repo, 'scripts/build-trixie-chroot.sh');
const runScript = join(repo, 'scripts/chroot-run.sh');

/** The chroot dir the build script would print (same key rule), if it is complete. */
function builtChroot(): string | undefined {
  const key = createHash('sha256').update(readFileSync(buildScript)).digest('hex').slice(0, 16);
  const dir = join(process.env.NARFS_CHROOT_DIR ?? '/var/cache/narfs/chroot', key);
  return existsSync(join(dir, '.narfs-chroot-complete')) ? dir : undefined;
}

describe('nixdb: Nix 2.26 reads the lower store read-only (immutable) in the trixie chroot', function () {
  this.timeout(300_000);
  let chroot: string | undefined;
  let work: string;

  before(function () {
    chroot = builtChroot();
    if (!chroot) {
      const msg = `trixie chroot not built (run scripts/build-trixie-chroot.sh)`;
      if (process.env.CI === 'true') throw new Error(`${msg}; required on CI`);
      console.log(`      skipped: ${msg}`);
      this.skip();
    }
    work = mkdtempSync('/tmp/narfs-chroot-it-');
  });

  after(function () {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  function inChroot(args: string[]): { status: number | null; stdout: string; stderr: string } {
    const r = spawnSync(runScript, ['-w', work, chroot!, ...args], { encoding: 'utf8' });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  }

  it('nix path-info -r --json with read-only=true shows exactly the registered rows', async function () {
    const closure = realClosure();
    const lower = join(work, 'lower');
    await createLowerStore(lower);
    const extra = fakeChain('chroot', 3, closure.out);
    await registerValidPaths(lower, [...closure.infos, ...extra]);
    const l = lowerStoreLayout(lower);
    const before = snapshotDir(l.dbDir);

    const version = inChroot(['nix', '--version']);
    assert.match(version.stdout, /^nix \(Nix\) 2\.26\./);
    const store = `local?root=${lower}&read-only=true`;
    const r = inChroot(['nix', 'path-info', '--store', store, '--extra-experimental-features', 'read-only-local-store nix-command', '--json', '-r', extra[2]!.path]);
    assert.equal(r.status, 0, r.stderr);
    const got = JSON.parse(r.stdout) as Record<string, Omit<PathInfoJson, 'path'>>;
    const expected = new Set([...closure.truth.filter((j) => !j.path.endsWith('.drv') && j.path !== closure.dev).map((j) => j.path), ...extra.map((e) => e.path)]);
    assert.deepEqual(Object.keys(got).sort(), [...expected].sort());
    for (const j of closure.truth) {
      const g = got[j.path];
      if (!g) continue;
      assert.equal(g.narHash, j.narHash, j.path);
      assert.equal(g.narSize, j.narSize, j.path);
      assert.deepEqual([...g.references].sort(), [...j.references].sort(), j.path);
      assert.equal(g.deriver ?? undefined, j.deriver, j.path);
      assert.deepEqual([...(g.signatures ?? [])].sort(), [...(j.signatures ?? [])].sort(), j.path);
      assert.equal(g.ca ?? undefined, j.ca, j.path);
    }
    const refs = inChroot(['nix-store', '--store', store, '--extra-experimental-features', 'read-only-local-store', '-q', '--referrers', closure.src]);
    assert.equal(refs.status, 0, refs.stderr);
    assert.deepEqual(lines(refs.stdout).sort(), closure.truth.filter((j) => j.references.includes(closure.src)).map((j) => j.path).sort());
    // DerivationOutputs rows, read by queryValidDerivers (join on DerivationOutputs.path)
    const derivers = inChroot(['nix-store', '--store', store, '--extra-experimental-features', 'read-only-local-store', '-q', '--valid-derivers', closure.out]);
    assert.equal(derivers.status, 0, derivers.stderr);
    assert.deepEqual(lines(derivers.stdout), [closure.drv]);
    // --outputs: 2.26.3 reads the .drv file itself (needs the FUSE to serve it)
    const outs = inChroot(['nix-store', '--store', store, '--extra-experimental-features', 'read-only-local-store', '-q', '--outputs', closure.drv]);
    if (outs.status === 0) assert.deepEqual(lines(outs.stdout).sort(), [closure.dev, closure.out].sort());
    else console.log(`      (nix-store -q --outputs needs the .drv file: ${outs.stderr.trim().split('\n').at(-1)})`);
    // an immutable reader wrote nothing to the database: no WAL, no journal, same bytes.
    // (2.26 does create the `reserved` filler, empty here with gc-reserved-space = 0;
    // it ignores errors doing so, so a read-only dir is fine.)
    const dbFiles = (s: Record<string, string>) => Object.fromEntries(Object.entries(s).filter(([n]) => n !== 'reserved'));
    assert.deepEqual(dbFiles(snapshotDir(l.dbDir)), dbFiles(before));
  });

  it('sees a generation registered after it started (new opens get the new file)', async function () {
    const lower = join(work, 'lower');
    const more = fakeChain('chroot-late', 2);
    await registerValidPaths(lower, more);
    const store = `local?root=${lower}&read-only=true`;
    const r = inChroot(['nix', 'path-info', '--store', store, '--extra-experimental-features', 'read-only-local-store nix-command', more[1]!.path]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), more[1]!.path);
  });

  it('Nix 2.26 queries in a loop during registrations never fail and never see half a batch', async function () {
    const lower = join(work, 'loop-lower');
    await createLowerStore(lower);
    const BATCH = 40;
    const BATCHES = 8;
    const stop = join(work, 'loop-stop');
    const store = `local?root=${lower}&read-only=true`;
    // Each read prints the number of valid paths Nix sees (or FAILED).
    const reader = spawn(runScript, ['-w', work, chroot!, '/bin/bash', '-c',
      `while [ ! -e "$1" ]; do if n=$(nix path-info --store "$2" --extra-experimental-features 'read-only-local-store nix-command' --all); then printf '%s\\n' "$n" | grep -c .; else echo FAILED; fi; done`,
      'reader', stop, store], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: string[] = [];
    const err: string[] = [];
    const exited = new Promise<void>((resolve) => reader.on('exit', () => resolve()));
    // Paced by the reader's own output, not by sleeps: first a read of the empty store,
    // then after each registration a read that sees it (reads keep running meanwhile).
    let lineWaiter: (() => void) | undefined;
    const counts = () => out.join('').split('\n').filter(Boolean);
    const untilRead = async (what: string, ok: (c: string) => boolean): Promise<void> => {
      while (!counts().some(ok)) {
        if (reader.exitCode !== null || reader.signalCode !== null) {
          assert.fail(`the Nix reader loop ended before ${what}: ${err.join('').slice(-2000)}`);
        }
        await Promise.race([new Promise<void>((r) => (lineWaiter = r)), exited]);
      }
    };
    reader.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out.push(d);
      lineWaiter?.();
    });
    reader.stderr!.setEncoding('utf8').on('data', (d: string) => err.push(d));
    try {
      await untilRead('a read of the empty store', (c) => c === '0' || c === 'FAILED');
      for (let i = 0; i < BATCHES; i++) {
        await registerValidPaths(lower, fakeChain(`loop-${i}`, BATCH));
        const n = String((i + 1) * BATCH);
        await untilRead(`a read that sees batch ${i}`, (c) => c === n || c === 'FAILED');
      }
    } finally {
      writeFileSync(stop, '');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 30_000))]);
      if (reader.exitCode === null) reader.kill('SIGKILL');
    }
    const seen = counts();
    assert.ok(!seen.includes('FAILED'), `a Nix query failed: ${err.join('').slice(-2000)}`);
    for (const c of seen) assert.equal(Number(c) % BATCH, 0, `a read saw ${c} paths: part of a batch`);
    // every generation, the empty one included, was seen by some read
    assert.equal(new Set(seen).size, BATCHES + 1, `reads saw ${[...new Set(seen)].join(', ')} paths`);
    assert.equal(Number(seen.at(-1)), BATCH * BATCHES);
    console.log(`      (${seen.length} Nix 2.26 reads saw ${new Set(seen).size} distinct generations)`);
  });
});
