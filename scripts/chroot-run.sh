#!/usr/bin/env bash
# Runs a command inside a chroot with /proc, /dev and /sys (and optional work dirs) mounted.
#
#   scripts/chroot-run.sh [-w <host dir>]... <chroot dir> <cmd> [args…]
#
# Each -w dir is bind-mounted at the same absolute path inside the chroot, so paths given
# to the command mean the same thing on both sides. Exit status is the command's.
#
# Invariant: nothing stays mounted after this script ends, however it ends. The mounts are
# made in a private mount namespace (`unshare --mount`), so the host's mount table never
# sees them and even a SIGKILL cannot leak them (the namespace dies with its last process);
# inside the namespace a trap on EXIT unmounts them in reverse order as well.
# Needs root (CAP_SYS_ADMIN).
set -euo pipefail

usage() { echo "usage: $0 [-w <host dir>]... <chroot dir> <cmd> [args…]" >&2; exit 2; }

if [ "${NARFS_CHROOT_RUN_INNER:-}" != 1 ]; then
  # Re-exec in a new mount namespace with private propagation (no leaks to the host).
  export NARFS_CHROOT_RUN_INNER=1
  exec unshare --mount --propagation private -- "$0" "$@"
fi
unset NARFS_CHROOT_RUN_INNER

work_dirs=()
while [ $# -gt 0 ]; do
  case "$1" in
    -w) [ $# -ge 2 ] || usage; work_dirs+=("$(readlink -f "$2")"); shift 2 ;;
    --) shift; break ;;
    -*) usage ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || usage
root=$(readlink -f "$1"); shift
[ -d "$root/usr/bin" ] || { echo "chroot-run: $root does not look like a chroot" >&2; exit 2; }

mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount -l "${mounted[i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

mount_at() { # <target> <mount args…>
  local target=$1; shift
  mkdir -p "$target"
  mount "$@" "$target"
  mounted+=("$target")
}

mount_at "$root/proc" -t proc proc
mount_at "$root/dev" --rbind /dev
mount_at "$root/sys" --rbind /sys
for w in "${work_dirs[@]}"; do
  [ -d "$w" ] || { echo "chroot-run: work dir $w does not exist" >&2; exit 2; }
  mount_at "$root$w" --bind "$w"
done
# Name resolution for apt inside the chroot (harmless afterwards).
if [ -f /etc/resolv.conf ] && [ ! -s "$root/etc/resolv.conf" ]; then
  cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
fi

set +e
env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  LANG=C.UTF-8 ${TERM:+TERM=$TERM} chroot "$root" "$@"
rc=$?
set -e
exit "$rc"
