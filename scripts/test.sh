#!/usr/bin/env bash
# The test command (README's second command; .ci/run calls it). Sets up what the tests
# need — system packages, node modules, the build, fixture datalakes and the trixie
# chroot (both cached outside the clone, keyed by content) — then runs every test tier.
# With CI=true a missing FUSE, Nix or chroot fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
if ! npm ls --depth=0 >/dev/null 2>&1; then npm ci --no-audit --no-fund; fi
npm run --silent build
echo "test: fixture datalakes: $(bash scripts/build-fixtures.sh | tail -n 1)" >&2
if [ -f scripts/build-trixie-chroot.sh ]; then
  echo "test: trixie chroot: $(bash scripts/build-trixie-chroot.sh | tail -n 1)" >&2
fi
if [ "$#" -eq 0 ]; then set -- "test/**/*.test.ts"; fi
exec npx mocha "$@"
