/**
 * bin/narfs run as a program (as systemd's unit and users run it): its sh lines give a
 * `mount` daemon glibc's `glibc.malloc.hugetlb=1`, placed before the caller's own tunables
 * (glibc applies them in order, so the caller's win), and leave every other command's
 * environment alone. Real sh and the real launcher; `node` on PATH is a stand-in that
 * prints what it was started with.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const LAUNCHER = resolve('bin/narfs');

describe('bin/narfs launcher environment', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'narfs-launcher-'));
    writeFileSync(join(dir, 'node'), '#!/bin/sh\nprintf "tunables=%s\\nargs=%s\\n" "${GLIBC_TUNABLES-<unset>}" "$*"\n');
    chmodSync(join(dir, 'node'), 0o755);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const launch = (args: string[], tunables?: string) => {
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${dir}:${process.env.PATH ?? ''}` };
    delete env.GLIBC_TUNABLES;
    if (tunables !== undefined) env.GLIBC_TUNABLES = tunables;
    const r = spawnSync(LAUNCHER, args, { env, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout;
  };

  it('starts a mount daemon with huge pages for the allocator', () => {
    assert.equal(launch(['mount', '/mnt/x', '--datalake', 'file:///d']),
      `tunables=glibc.malloc.hugetlb=1\nargs=${LAUNCHER} mount /mnt/x --datalake file:///d\n`);
  });

  it("keeps the caller's tunables after its own, so the caller's win", () => {
    assert.equal(launch(['mount', '/m'], 'glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2'),
      `tunables=glibc.malloc.hugetlb=1:glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2\nargs=${LAUNCHER} mount /m\n`);
  });

  it('leaves the environment of other commands alone', () => {
    assert.equal(launch(['status', '--cache-dir', '/c']), `tunables=<unset>\nargs=${LAUNCHER} status --cache-dir /c\n`);
    assert.equal(launch(['gc'], 'glibc.malloc.arena_max=2'), `tunables=glibc.malloc.arena_max=2\nargs=${LAUNCHER} gc\n`);
  });
});
