#!/usr/bin/env bash
# Builds the benchmark datalake with real Nix and caches it outside the clone.
#
#   bash scripts/build-bench-datalake.sh     # prints the bench dir as its last stdout line
#
# The closure is declared in scripts/bench/packages.txt: Debian packages, one store path
# per role, each holding exactly the files `dpkg -L` lists for its packages. Missing
# packages are installed first (apt-get, as root; installed ones are never upgraded).
# The dir is ${NARFS_BENCH_DIR:-/var/cache/narfs/bench}/<key>/, where <key> = sha256 over
# this script, every file under scripts/bench/, `nix --version`, and the declared
# packages with their installed versions (dpkg-query). It holds:
#   datalakes/{xz,zstd,none}/  binary caches of the closure of `top` plus `many`, with
#                              .ls listings, signed by narfs-bench-1 (keys/)
#   closure.squashfs           the closure as a squashfs image (zstd), for squashfuse
#   workload.json              scenario 1's operations, recorded with strace on the host
#   manifest.json              everything bench/run.ts needs (its Manifest type), with
#                              the packages and versions of each role
#   gcroots/                   keeps the store paths alive
# A dir is reused while its gcroots exist and every store path it lists is valid in the
# local /nix/store. Builds run in .tmp-<key>-* under flock <key>.lock and are renamed
# into place. Exit status: 0 with the dir as the last stdout line, otherwise non-zero
# (every exit path, including the EXIT trap, keeps the status; on any exit before the
# rename the background copies are stopped and the .tmp dir removed).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src="$here/bench"
root="${NARFS_BENCH_DIR:-/var/cache/narfs/bench}"

export NIX_CONFIG="${NIX_CONFIG:+$NIX_CONFIG
}build-users-group =
sandbox = false
experimental-features = nix-command
substituters =
warn-dirty = false"

log() { printf 'build-bench-datalake: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
for c in nix-build nix strace mksquashfs node cpp dpkg-query; do
  command -v "$c" >/dev/null || die "$c not found (run scripts/install-system-deps.sh)"
done

# The declared packages: role -> names (packages.txt), the missing ones installed.
declare -A role_pkgs=()
roles_order=()
while read -r role names; do
  case $role in '' | '#'*) continue ;; esac
  role_pkgs[$role]=$names; roles_order+=("$role")
done < "$src/packages.txt"
installed() { local s; s=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1; [ "$s" = 'install ok installed' ]; }
missing=()
for role in "${roles_order[@]}"; do
  for p in ${role_pkgs[$role]}; do installed "$p" || missing+=("$p"); done
done
if ((${#missing[@]})); then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  log "installing the benchmark's packages: ${missing[*]}"
  apt_log=$(mktemp)
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 update -qq >"$apt_log" 2>&1 \
    || { tail -30 "$apt_log" >&2; rm -f "$apt_log"; die "apt-get update failed"; }
  # The benchmark's packages must never take anything away from the machine (an earlier
  # list removed the machine's Node.js): simulate first, and refuse if apt would remove.
  removals=$(env DEBIAN_FRONTEND=noninteractive apt-get -s install --no-install-recommends "${missing[@]}" 2>>"$apt_log" | awk '/^Remv /{print $2}' | tr '\n' ' ')
  [ -z "$removals" ] || { rm -f "$apt_log"; die "installing ${missing[*]} would remove: ${removals}; fix scripts/bench/packages.txt"; }
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends \
      "${missing[@]}" >>"$apt_log" 2>&1 \
    || { tail -30 "$apt_log" >&2; rm -f "$apt_log"; die "apt-get could not install ${missing[*]}"; }
  rm -f "$apt_log"
  for p in "${missing[@]}"; do installed "$p" || die "$p is still not installed after apt-get install"; done
fi
# "<role> <name> <version>" lines, and the same as JSON {"<role>": "<name>=<version> ..."}
# for default.nix. Names and versions are [A-Za-z0-9.+~:-], so no JSON escaping is needed.
packages_lines=
packages_json=
for role in "${roles_order[@]}"; do
  specs=
  for p in ${role_pkgs[$role]}; do
    v=$(dpkg-query -W -f='${Version}' "$p") || die "dpkg-query cannot read the version of $p"
    [[ $p$v =~ ^[A-Za-z0-9.+~:-]+$ ]] || die "unexpected package name or version: $p $v"
    packages_lines+="$role $p $v"$'\n'
    specs+="${specs:+ }$p=$v"
  done
  packages_json+="${packages_json:+,}\"$role\":\"$specs\""
done
packages_json="{$packages_json}"

nix_version=$(nix --version)
key=$({
  for f in "$here/build-bench-datalake.sh" $(LC_ALL=C find "$src" -type f | LC_ALL=C sort); do
    printf '%s\0%s\0' "${f#"$here"/}" "$(stat -c %s "$f")"; cat "$f"
  done
  printf 'nix\0%s\0packages\0%s\0' "$nix_version" "$packages_lines"
} | sha256sum | cut -c1-24)
dir="$root/$key"

is_fresh() {
  [ -f "$dir/manifest.json" ] && [ -s "$dir/store-paths.txt" ] || return 1
  [ -e "$dir/gcroots/top" ] && [ -e "$dir/gcroots/many" ] || return 1
  local paths; mapfile -t paths < "$dir/store-paths.txt"
  nix-store --check-validity "${paths[@]}" >/dev/null 2>&1
}
if is_fresh; then printf '%s\n' "$dir"; exit 0; fi

mkdir -p "$root"
exec 9>"$root/$key.lock"
log "taking the lock $root/$key.lock"
flock 9
if is_fresh; then printf '%s\n' "$dir"; exit 0; fi
find "$root" -mindepth 1 -maxdepth 1 \( -name '.tmp-*' -o -name '.old-*' \) -mmin +240 -exec rm -rf {} + 2>/dev/null || true

started=$(date +%s)
# The EXIT trap must not change the exit status: it ends with `exit "$rc"`, and every
# test in it is an if, so an empty $tmp (after the rename) is not a failure. It stops the
# background copies (bg) before removing the dir they write into. INT/TERM/HUP exit
# through it too.
bg=()
tmp=
cleanup() {
  local rc=$?
  if ((${#bg[@]})); then
    kill -TERM "${bg[@]}" 2>/dev/null || true
    wait "${bg[@]}" 2>/dev/null || true
  fi
  if [ -n "$tmp" ]; then rm -rf "$tmp" || true; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
# Runs a long step as a background job and waits for it: bash runs a trap only after the
# foreground command ends, but interrupts `wait`, so a signal reaches cleanup at once,
# which stops the step like the copies.
step() {
  local p rc=0 q keep=()
  "$@" &
  p=$!
  bg+=("$p")
  wait "$p" || rc=$?
  for q in "${bg[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
  bg=("${keep[@]}")
  return "$rc"
}
tmp=$(mktemp -d "$root/.tmp-$key-XXXXXX")
mkdir -p "$tmp/datalakes" "$tmp/keys" "$tmp/build" "$tmp/logs" "$tmp/strace"
printf '%s' "$packages_lines" > "$tmp/packages.txt"
log "building the bench closure $key (nix: $nix_version) in $tmp"

# 1. Build every attribute.
attrs=(python perl headers doc libs large many top)
step nix-build "$src" --argstr packages "$packages_json" $(printf -- '-A %s ' "${attrs[@]}") --no-out-link \
  >"$tmp/build/outs.txt" 2>"$tmp/logs/nix-build.log" || { tail -50 "$tmp/logs/nix-build.log" >&2; die "nix-build failed"; }
mapfile -t outs < "$tmp/build/outs.txt"
[ "${#outs[@]}" = "${#attrs[@]}" ] || die "expected ${#attrs[@]} outputs, got ${#outs[@]}"
{
  printf '{'
  for i in "${!attrs[@]}"; do printf '%s"%s":"%s"' "$([ "$i" = 0 ] || echo ,)" "${attrs[$i]}" "${outs[$i]}"; done
  printf '}\n'
} > "$tmp/build/roles.json"
top=${outs[7]}; many=${outs[6]}
nix-store -qR "$top" > "$tmp/build/closure.txt"
{ cat "$tmp/build/closure.txt"; echo "$many"; } | LC_ALL=C sort -u > "$tmp/store-paths.txt"
log "built $top: $(wc -l < "$tmp/build/closure.txt") paths, $(du -sbc $(cat "$tmp/build/closure.txt") | tail -1 | cut -f1) bytes"

# 2. Key, then the datalakes in parallel (xz first: slowest; parallel-compression makes
# it use every core, the stream stays plain xz).
nix-store --generate-binary-cache-key narfs-bench-1 "$tmp/keys/narfs-bench-1.sec" "$tmp/keys/narfs-bench-1.pub"
# Each copy runs in a background subshell; SIGTERM (from cleanup) stops its nix copy
# with SIGKILL: while compressing, nix copy takes up to a minute to act on SIGTERM, and
# the half-written cache is deleted with the .tmp dir anyway.
copy_datalake() {
  local c=$1 t0 child=; t0=$(date +%s)
  trap 'if [ -n "$child" ]; then kill -KILL "$child" 2>/dev/null; { wait "$child"; } 2>/dev/null; fi; exit 143' TERM
  nix copy --to "file://$tmp/datalakes/$c?compression=$c&write-nar-listing=1&parallel-compression=true&secret-key=$tmp/keys/narfs-bench-1.sec" \
    "$top" "$many" >"$tmp/logs/copy-$c.log" 2>&1 &
  child=$!
  wait "$child" || { cat "$tmp/logs/copy-$c.log" >&2; return 1; }
  log "datalake $c in $(( $(date +%s) - t0 )) s, $(du -sb "$tmp/datalakes/$c" | cut -f1) bytes"
}
copy_datalake xz & bg+=($!)
copy_datalake zstd & bg+=($!)
copy_datalake none & bg+=($!)

# 3. The squashfs image (each store path a top-level dir, as in /nix/store) and the
# workload, while the copies run.
t0=$(date +%s)
mapfile -t closure < "$tmp/build/closure.txt"
step mksquashfs "${closure[@]}" "$tmp/closure.squashfs" -comp zstd -all-root -no-xattrs -quiet -no-progress \
  >"$tmp/logs/mksquashfs.log" 2>&1 || { cat "$tmp/logs/mksquashfs.log" >&2; die "mksquashfs failed"; }
log "squashfs image in $(( $(date +%s) - t0 )) s, $(stat -c %s "$tmp/closure.squashfs") bytes"
bash "$src/workload-programs.sh" "$tmp/strace" || die "recording the workload failed"
node "$src/record-workload.mjs" "$tmp/build/roles.json" "$tmp"/strace/*.strace > "$tmp/workload.json" \
  || die "mapping the workload onto the closure failed"

copy_rc=0
for p in "${bg[@]}"; do wait "$p" || copy_rc=1; done
bg=()
[ "$copy_rc" = 0 ] || die "nix copy failed"
for c in xz zstd none; do
  for p in "$top" "$many" "${closure[@]}"; do
    h=$(basename "$p"); h=${h%%-*}
    [ -f "$tmp/datalakes/$c/$h.narinfo" ] && [ -f "$tmp/datalakes/$c/$h.ls" ] || die "$c lacks $p or its listing"
  done
done

# 4. Manifest (paths are the final ones, under $dir).
node - "$tmp" "$dir" "$key" "$nix_version" <<'JS' || die "writing the manifest failed"
const fs = require('fs'), path = require('path');
const [tmp, dir, key, nixVersion] = process.argv.slice(2);
const roles = JSON.parse(fs.readFileSync(`${tmp}/build/roles.json`, 'utf8'));
const packages = fs.readFileSync(`${tmp}/packages.txt`, 'utf8').trim().split('\n').map((l) => { const [role, name, version] = l.split(' '); return { role, name, version }; });
const closure = fs.readFileSync(`${tmp}/build/closure.txt`, 'utf8').trim().split('\n');
const ops = JSON.parse(fs.readFileSync(`${tmp}/workload.json`, 'utf8'));
let files = 0, dirs = 0, symlinks = 0, bytes = 0; const sizes = [];
const walk = (p) => {
  const st = fs.lstatSync(p);
  if (st.isSymbolicLink()) symlinks++;
  else if (st.isDirectory()) { dirs++; for (const n of fs.readdirSync(p)) walk(path.join(p, n)); }
  else { files++; bytes += st.size; sizes.push([st.size, p]); }
};
for (const p of closure) walk(p);
let readBytes = 0;
for (const o of ops) if (o.op === 'read') { try { readBytes += fs.statSync('/nix/store/' + o.path).size; } catch {} }
// Scenario 5: 16 files of 1-8 MB, from different store paths where possible.
const readers = sizes.filter(([s, p]) => s >= 1e6 && s <= 8e6 && !p.includes('-narfs-bench-large'))
  .sort((a, b) => b[0] - a[0]).map(([, p]) => p);
const pick = []; const seen = new Map();
for (const p of readers) { const sp = p.split('/').slice(0, 4).join('/'); if ((seen.get(sp) ?? 0) < 4) { pick.push(p); seen.set(sp, (seen.get(sp) ?? 0) + 1); } if (pick.length === 16) break; }
for (const p of readers) { if (pick.length >= 16) break; if (!pick.includes(p)) pick.push(p); }
const largeFile = sizes.filter(([, p]) => p.startsWith(roles.large + '/')).sort((a, b) => b[0] - a[0])[0][1];
const pub = fs.readFileSync(`${tmp}/keys/narfs-bench-1.pub`, 'utf8').trim();
const datalakes = {};
for (const c of ['xz', 'zstd', 'none']) {
  let nar = 0; for (const f of fs.readdirSync(`${dir.replace(dir, tmp)}/datalakes/${c}/nar`)) nar += fs.statSync(`${tmp}/datalakes/${c}/nar/${f}`).size;
  datalakes[c] = { dir: `${dir}/datalakes/${c}`, compression: c, narBytes: nar };
}
const manifest = {
  key, dir, nixVersion, publicKey: pub, packages, roles, top: roles.top, many: roles.many, closure,
  closureStats: { files, dirs, symlinks, bytes },
  datalakes, squashfs: `${dir}/closure.squashfs`,
  workload: { file: `${dir}/workload.json`, ops: ops.length, reads: ops.filter((o) => o.op === 'read').length, readBytes },
  largeFile, readers: pick,
  builtAt: new Date().toISOString(),
};
fs.writeFileSync(`${tmp}/manifest.json`, JSON.stringify(manifest, null, 2) + '\n');
console.error(JSON.stringify({ closureStats: manifest.closureStats, workload: manifest.workload, largeFile, datalakes }));
JS

if [ -e "$dir" ]; then old="$root/.old-$key-$$"; mv "$dir" "$old"; fi
mv "$tmp" "$dir"; tmp=
[ -z "${old:-}" ] || rm -rf "$old"
mkdir -p "$dir/gcroots"
nix-store --add-root "$dir/gcroots/top" --realise "$top" >/dev/null
nix-store --add-root "$dir/gcroots/many" --realise "$many" >/dev/null
log "done in $(( $(date +%s) - started )) s: $dir"
printf '%s\n' "$dir"
