#!/usr/bin/env bash
# The README's first command: sets everything up (system packages, node modules, build,
# a demo datalake built by real Nix) and mounts the demo datalake in the foreground.
# Ctrl-C unmounts. Override the place with NARFS_DEMO_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
if ! npm ls --depth=0 >/dev/null 2>&1; then npm ci --no-audit --no-fund; fi
npm run --silent build
fixtures=$(bash scripts/build-fixtures.sh | tail -n 1)
demo=${NARFS_DEMO_DIR:-/tmp/narfs-demo}
mnt="$demo/nix/store"
mkdir -p "$mnt"
key=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")).publicKey)' "$fixtures/manifest.json")
top=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")).top)' "$fixtures/manifest.json")
cat >&2 <<MSG
narfs demo: mounting the demo datalake $fixtures/datalakes/zstd on $mnt
  in another shell, try:
    ls $mnt                          # empty: nothing looked up yet
    ls $mnt/${top#/nix/store/}       # appears on first lookup
    nix --extra-experimental-features nix-command hash path $mnt/${top#/nix/store/}
  Ctrl-C unmounts.
MSG
exec bin/narfs mount "$mnt" --datalake "file://$fixtures/datalakes/zstd" \
  --trusted-public-keys "$key" --cache-dir "$demo/cache"
