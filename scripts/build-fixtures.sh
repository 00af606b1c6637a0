#!/usr/bin/env bash
# Builds the fixture datalakes with real Nix and caches them outside the clone.
#
#   bash scripts/build-fixtures.sh        # prints the fixture dir as its last stdout line
#
# The fixtures live in ${NARFS_FIXTURES_DIR:-/var/cache/narfs/fixtures}/<key>/, where
# <key> = sha256 over this script, every file under scripts/fixtures/ and `nix --version`.
# A finished dir holds manifest.json (see test/support/fixtures.ts for its type); it is
# reused as long as every store path it lists is still valid in the local /nix/store,
# otherwise it is rebuilt. Builds happen in a temp dir under an flock and are renamed
# into place, so concurrent callers wait for one build and never see half a dir.
#
# Progress goes to stderr. Environment:
#   NARFS_FIXTURES_DIR   cache root (default /var/cache/narfs/fixtures)
#   NARFS_FIXTURES_JOBS  parallel `nix copy` jobs (default: number of CPUs)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fixtures_src="$here/fixtures"
root="${NARFS_FIXTURES_DIR:-/var/cache/narfs/fixtures}"
jobs="${NARFS_FIXTURES_JOBS:-$(nproc 2>/dev/null || echo 2)}"

# Real Nix as root on a host without the nixbld group and without a sandbox; never
# substitute (no network). Ours go last so they win over anything inherited.
export NIX_CONFIG="${NIX_CONFIG:+$NIX_CONFIG
}build-users-group =
sandbox = false
experimental-features = nix-command
substituters =
keep-derivations = true
warn-dirty = false"

log() { printf 'build-fixtures: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v nix-build >/dev/null || die "nix-build not found (run scripts/install-system-deps.sh)"
command -v node >/dev/null || die "node not found"

nix_version=$(nix --version)

# Content key: NUL-framed (name, size, bytes) of every input, then the Nix version.
compute_key() {
  local f
  {
    for f in "$here/build-fixtures.sh" $(cd "$here" && LC_ALL=C find fixtures -type f | LC_ALL=C sort); do
      [ "${f#/}" = "$f" ] && f="$here/$f"
      printf '%s\0%s\0' "${f#"$here"/}" "$(stat -c %s "$f")"
      cat "$f"
    done
    printf 'nix-version\0%s\0' "$nix_version"
  } | sha256sum | cut -d' ' -f1
}
key=$(compute_key)
dir="$root/$key"

# A finished dir is fresh while every store path it lists is valid locally.
is_fresh() {
  [ -f "$dir/manifest.json" ] && [ -s "$dir/store-paths.txt" ] || return 1
  local paths
  mapfile -t paths < "$dir/store-paths.txt"
  nix-store --check-validity "${paths[@]}" >/dev/null 2>&1
}

if is_fresh; then
  printf '%s\n' "$dir"
  exit 0
fi

mkdir -p "$root"
exec 9>"$root/$key.lock"
log "taking the lock $root/$key.lock"
flock 9
if is_fresh; then # another caller built it while we waited
  printf '%s\n' "$dir"
  exit 0
fi

# Leftovers of builds that died (a build takes minutes, not hours).
find "$root" -mindepth 1 -maxdepth 1 \( -name '.tmp-*' -o -name '.old-*' \) -mmin +240 -exec rm -rf {} + 2>/dev/null || true

started=$(date +%s)
tmp=$(mktemp -d "$root/.tmp-$key-XXXXXX")
cleanup() { if [ -n "${tmp:-}" ]; then rm -rf "$tmp"; fi; }
trap cleanup EXIT
mkdir -p "$tmp/datalakes" "$tmp/keys" "$tmp/build" "$tmp/logs"
log "building fixtures $key (nix: $nix_version) in $tmp"

# 1. Build. `top`'s output closure is every fixture output; its derivation closure is
# every .drv plus the builder scripts (sources) that a DerivationOutputs filler needs.
nix-build "$fixtures_src" -A top --no-out-link >"$tmp/build/top.out" 2>"$tmp/logs/nix-build.log" \
  || { cat "$tmp/logs/nix-build.log" >&2; die "nix-build failed"; }
top=$(tail -n1 "$tmp/build/top.out")
top_drv=$(nix-instantiate "$fixtures_src" -A top 2>/dev/null | tail -n1)
[ -n "$top" ] && [ -n "$top_drv" ] || die "could not determine the top output and derivation"
nix-store -qR "$top" > "$tmp/build/outputs.txt"
nix-store -qR "$top_drv" > "$tmp/build/drv-closure.txt"
mapfile -t drvs < <(grep '\.drv$' "$tmp/build/drv-closure.txt")
LC_ALL=C sort -u "$tmp/build/outputs.txt" "$tmp/build/drv-closure.txt" > "$tmp/store-paths.txt"
mapfile -t all_paths < "$tmp/store-paths.txt"
log "built $top (${#all_paths[@]} store paths with derivations and sources)"

# Role of every output: attribute name, or <name>-<output> for outputs other than out.
nix-instantiate --eval --strict --json -E "
  builtins.mapAttrs
    (n: d: builtins.listToAttrs (map (o: { name = o; value = d.\${o}.outPath; }) (d.outputs or [ \"out\" ])))
    (import $fixtures_src)" > "$tmp/build/roles.json" 2>"$tmp/logs/eval.log" \
  || { cat "$tmp/logs/eval.log" >&2; die "evaluating the roles failed"; }
# `nix path-info X.drv` would describe the outputs: derivations need --derivation.
mapfile -t non_drvs < <(grep -v '\.drv$' "$tmp/store-paths.txt")
nix path-info --json "${non_drvs[@]}" > "$tmp/build/path-info.json"
nix path-info --json --derivation "${drvs[@]}" > "$tmp/build/path-info-drv.json"

# 2. Keys. Nix writes them without a trailing newline.
nix-store --generate-binary-cache-key narfs-fixture-1 "$tmp/keys/narfs-fixture-1.sec" "$tmp/keys/narfs-fixture-1.pub"
nix-store --generate-binary-cache-key narfs-fixture-other-1 "$tmp/keys/narfs-fixture-other-1.sec" "$tmp/keys/narfs-fixture-other-1.pub"
sec_main="$tmp/keys/narfs-fixture-1.sec"
sec_other="$tmp/keys/narfs-fixture-other-1.sec"

# 3. Datalakes, each written by `nix copy` of the outputs, then of the derivations
# (with their sources), then the build logs:
#   name compression listing(0|1) signing-key-file('-' = unsigned) compression-level
# Slow ones first, so the parallel jobs finish together: Nix 2.8 compresses brotli at
# quality 11 whatever compression-level says (~0.7 MB/s here) and xz at level 6
# (~1.3 MB/s). The signature-policy datalakes use xz level 0: same format, 10x faster.
datalake_specs=(
  "br br 1 $sec_main -"
  "xz xz 1 $sec_main -"
  "other-key xz 1 $sec_other 0"
  "unsigned xz 1 - 0"
  "bzip2 bzip2 1 $sec_main -"
  "bzip2-nols bzip2 0 $sec_main -"
  "gzip gzip 1 $sec_main -"
  "gzip-nols gzip 0 $sec_main -"
  "zstd zstd 1 $sec_main -"
  "zstd-nols zstd 0 $sec_main -"
  "none none 1 $sec_main -"
  "none-nols none 0 $sec_main -"
)
# br-nols and xz-nols are copies of br and xz without the .ls files: compressing the
# 40 MiB file again would double the build time, and write-nar-listing changes nothing
# but the .ls files (checked below on zstd and none, whose compression is
# deterministic; also true of xz and brotli, not of gzip, whose header has a time).
derived_specs=(
  "br-nols br"
  "xz-nols xz"
)

copy_datalake() { # name compression listing keyfile level
  local name=$1 compression=$2 listing=$3 keyfile=$4 level=$5 url t0
  url="file://$tmp/datalakes/$name?compression=$compression&write-nar-listing=$listing"
  [ "$level" = - ] || url="$url&compression-level=$level"
  [ "$keyfile" = - ] || url="$url&secret-key=$keyfile"
  t0=$(date +%s)
  {
    nix copy --to "$url" "$top" &&
    nix copy --to "$url" --derivation "$top_drv" &&
    nix store copy-log --to "$url" --derivation "${drvs[@]}"
  } >"$tmp/logs/copy-$name.log" 2>&1 || { cat "$tmp/logs/copy-$name.log" >&2; return 1; }
  log "datalake $name ($compression, listing=$listing) in $(( $(date +%s) - t0 )) s"
}

running=0
failed=0
for spec in "${datalake_specs[@]}"; do
  # shellcheck disable=SC2086
  copy_datalake $spec &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || failed=1
    running=$((running - 1))
  fi
done
while [ "$running" -gt 0 ]; do
  wait -n || failed=1
  running=$((running - 1))
done
[ "$failed" = 0 ] || die "nix copy failed"

for pair in zstd none; do
  diff -r --exclude='*.ls' "$tmp/datalakes/$pair" "$tmp/datalakes/$pair-nols" >&2 ||
    die "write-nar-listing changed more than the .ls files ($pair vs $pair-nols)"
done
for spec in "${derived_specs[@]}"; do
  read -r name from <<<"$spec"
  cp -a "$tmp/datalakes/$from" "$tmp/datalakes/$name"
  find "$tmp/datalakes/$name" -maxdepth 1 -name '*.ls' -delete
done

# Every datalake must hold every path (and its .ls when listing is on).
all_specs=("${datalake_specs[@]}")
for spec in "${derived_specs[@]}"; do
  read -r name from <<<"$spec"
  for s in "${datalake_specs[@]}"; do
    read -r n c _ k l <<<"$s"
    [ "$n" = "$from" ] && all_specs+=("$name $c 0 $k $l $from")
  done
done
for spec in "${all_specs[@]}"; do
  read -r name _ listing _ <<<"$spec"
  for p in "${all_paths[@]}"; do
    h=$(basename "$p"); h=${h%%-*}
    [ -f "$tmp/datalakes/$name/$h.narinfo" ] || die "$name lacks $p"
    [ "$listing" = 0 ] || [ -f "$tmp/datalakes/$name/$h.ls" ] || die "$name lacks the listing of $p"
  done
done

# 4. Manifest (paths in it are the final ones, under $dir).
printf '%s\n' "${all_specs[@]}" > "$tmp/build/datalakes.txt"
node "$fixtures_src/write-manifest.mjs" \
  --tmp "$tmp" --final "$dir" --key "$key" --nix-version "$nix_version" \
  --top "$top" --top-drv "$top_drv" >&2 || die "writing the manifest failed"

# 5. Into place, atomically for readers of a fresh dir. A stale dir (its store paths
# were garbage collected) is moved aside first and deleted after.
if [ -e "$dir" ]; then
  old="$root/.old-$key-$$"
  mv "$dir" "$old"
fi
mv "$tmp" "$dir"
tmp=
[ -z "${old:-}" ] || rm -rf "$old"

# GC roots (indirect, in the final dir): keep the outputs and the derivations alive.
mkdir -p "$dir/gcroots"
nix-store --add-root "$dir/gcroots/top" --realise "$top" >/dev/null
nix-instantiate --add-root "$dir/gcroots/top-drv" "$fixtures_src" -A top >/dev/null 2>&1

log "done in $(( $(date +%s) - started )) s: $dir"
printf '%s\n' "$dir"
exit 0
