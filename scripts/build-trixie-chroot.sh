#!/usr/bin/env bash
# Builds (once) a Debian trixie chroot with nix-bin 2.26.x for the local-overlay and
# read-only-lower-store tests, and prints its directory.
#
#   scripts/build-trixie-chroot.sh            # prints e.g. /var/cache/narfs/chroot/3f2a…
#
# Cache: ${NARFS_CHROOT_DIR:-/var/cache/narfs/chroot}/<key>, key = first 16 hex digits of
# the sha256 of this script, so editing the recipe builds a new chroot and old ones can be
# deleted by hand. Mirror: $NARFS_DEBIAN_MIRROR, else the first Debian archive URI found
# in this machine's apt sources (/etc/apt/sources.list and sources.list.d, one-line and
# deb822 forms); with neither, the build fails with a message saying so. The mirror does
# not enter the key.
#
# Everything the tests need inside the chroot is made here, by the recipe, never by hand
# or by a test: /nix/store and /nix/var exist (the local-overlay test mounts a tmpfs on
# /nix/var), and `complete` checks for them, so a tree that lacks them is rebuilt.
#
# Invariant: <key> exists only when complete. It is built in a temp dir beside it under an
# exclusive flock (concurrent callers wait, then reuse the result), the mounts needed for
# apt live in a private mount namespace (scripts/chroot-run.sh), and the finished tree is
# moved into place with one rename(). A failed build leaves nothing behind but a log.
# Needs root and the debootstrap package (scripts/install-system-deps.sh installs it).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"
key=$(sha256sum "$self" | cut -c1-16)
base=${NARFS_CHROOT_DIR:-/var/cache/narfs/chroot}
final="$base/$key"

complete() { [ -f "$1/.narfs-chroot-complete" ] && [ -x "$1/usr/bin/nix" ] && [ -d "$1/nix/var" ] && [ -d "$1/nix/store" ]; }
if complete "$final"; then echo "$final"; exit 0; fi

[ "$(id -u)" = 0 ] || { echo "build-trixie-chroot: must run as root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "build-trixie-chroot: debootstrap missing; run scripts/install-system-deps.sh" >&2; exit 1; }

find_mirror() {
  if [ -n "${NARFS_DEBIAN_MIRROR:-}" ]; then echo "$NARFS_DEBIAN_MIRROR"; return; fi
  local f uri
  # deb822 .sources files: "URIs: <archive>/debian"; one-line: "deb [opts] <archive>/debian <suite> …"
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri=$( { grep -hE '^[[:space:]]*URIs:' "$f" | awk '{for (i = 2; i <= NF; i++) print $i}';
             grep -hE '^[[:space:]]*deb[[:space:]]' "$f" | sed -E 's/\[[^]]*\]//' | awk '{print $2}'; } \
           | grep -E '/debian/?$' | head -n1 || true)
    if [ -n "$uri" ]; then echo "${uri%/}"; return; fi
  done
}
mirror=$(find_mirror)
if [ -z "$mirror" ]; then
  echo "build-trixie-chroot: no Debian archive found in /etc/apt/sources.list or /etc/apt/sources.list.d;" \
    "add one there or set NARFS_DEBIAN_MIRROR=<archive URL>" >&2
  exit 1
fi

mkdir -p "$base"
exec 9>"$base/.lock"
if ! flock -w 3600 9; then echo "build-trixie-chroot: another build holds $base/.lock for an hour" >&2; exit 1; fi
if complete "$final"; then echo "$final"; exit 0; fi   # built while we waited

tmp=$(mktemp -d "$base/.build-$key.XXXXXX")
chmod 0755 "$tmp"
log="$base/build-$key.log"
cleanup() { if [ -n "${tmp:-}" ] && [ -d "$tmp" ]; then rm -rf --one-file-system "$tmp"; fi; }
trap cleanup EXIT
start=$(date +%s)
echo "build-trixie-chroot: building $final from $mirror (log: $log)" >&2

{
  debootstrap --variant=minbase trixie "$tmp" "$mirror"
  # No daemons may start inside the chroot during package installation.
  printf '#!/bin/sh\nexit 101\n' > "$tmp/usr/sbin/policy-rc.d"; chmod 0755 "$tmp/usr/sbin/policy-rc.d"
  "$here/chroot-run.sh" "$tmp" sh -c '
    set -e
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nix-bin sqlite3 ca-certificates
    apt-get clean
    rm -rf /var/lib/apt/lists/*'
  # The store layout the tests mount over (overlay-inner.sh puts a tmpfs on /nix/var).
  mkdir -p "$tmp/nix/store" "$tmp/nix/var"
  # Test configuration (nix-formats.md §6.5 + the read-only lower store).
  mkdir -p "$tmp/etc/nix"
  cat > "$tmp/etc/nix/nix.conf" <<'EOF'
# written by narfs scripts/build-trixie-chroot.sh for the local-overlay tests
extra-experimental-features = nix-command local-overlay-store read-only-local-store
build-users-group =
require-drop-supplementary-groups = false
sandbox = false
substituters =
narinfo-cache-negative-ttl = 0
fsync-metadata = false
gc-reserved-space = 0
EOF
  "$here/chroot-run.sh" "$tmp" nix --version
} > "$log" 2>&1 || { echo "build-trixie-chroot: build failed, see $log" >&2; tail -n 20 "$log" >&2; exit 1; }

version=$("$here/chroot-run.sh" "$tmp" nix --version)
case "$version" in
  *" 2.26."*) ;;
  *) echo "build-trixie-chroot: expected Nix 2.26.x in trixie, got: $version" >&2; exit 1 ;;
esac
printf '%s\nmirror=%s\nbuilt=%s\nseconds=%s\n' "$version" "$mirror" "$(date -u +%FT%TZ)" "$(( $(date +%s) - start ))" \
  > "$tmp/.narfs-chroot-complete"
mv -T "$tmp" "$final"
tmp=
echo "build-trixie-chroot: built in $(( $(date +%s) - start )) s: $version" >&2
echo "$final"
