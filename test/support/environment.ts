/**
 * What a test needs from the machine (Nix, FUSE, the trixie chroot). Locally a missing
 * tool skips the test with a message; with CI=true it is a failure, never a skip.
 */
export function skipOrFail(ctx: Mocha.Context, what: string): never {
  if (process.env.CI === 'true') throw new Error(`${what} is missing; with CI=true that is a failure, not a skip`);
  ctx.skip();
}
