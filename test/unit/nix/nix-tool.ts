/**
 * Test helper: runs the real Nix (Debian's nix-bin) to produce golden data at test time.
 * Nothing here touches /nix/store: only commands that work without a store are used
 * (`nix-store --dump`, `nix-hash`, `nix hash …`, `nix-store --print-fixed-path`,
 * `nix-store --generate-binary-cache-key`).
 */

import { skipOrFail } from '../../support/environment.js';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const NIX_ENV: NodeJS.ProcessEnv = {
  ...process.env,
  NIX_CONFIG: 'experimental-features = nix-command\nbuild-users-group =\nsandbox = false\nsubstituters =',
};

let available: boolean | undefined;

/** True when nix-store can be run here. */
export function haveNix(): boolean {
  if (available === undefined) {
    const r = spawnSync('nix-store', ['--version'], { env: NIX_ENV, stdio: 'ignore' });
    available = r.status === 0;
  }
  return available;
}

/** Skips the current suite/test when Nix is not installed. */
export function requireNix(ctx: Mocha.Context): void {
  if (!haveNix()) skipOrFail(ctx, 'nix');
}

export function nix(cmd: string, args: string[], input?: Buffer | string): Buffer {
  return execFileSync(cmd, args, {
    env: NIX_ENV,
    stdio: ['pipe', 'pipe', 'pipe'],
    maxBuffer: 1 << 30,
    ...(input === undefined ? {} : { input }),
  });
}

export function nixText(cmd: string, args: string[], input?: Buffer | string): string {
  return nix(cmd, args, input).toString('utf8').trim();
}

export function withTempDir<T>(fn: (dir: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), 'narfs-nix-test-'));
  try {
    return fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
