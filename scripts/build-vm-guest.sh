#!/usr/bin/env bash
# Builds (once) a tiny VM guest for the virtiofs tests and prints its directory, which holds
#   vmlinux            Debian's amd64 kernel (linux-image-amd64's current package), as the
#                      uncompressed ELF QEMU boots through the PVH entry (docs: fuse-engine.md §7)
#   initramfs.cpio.gz  static busybox, the virtio/fuse/virtiofs/overlay modules of that
#                      kernel, and /init (below); padded with zeros to a multiple of 4 bytes,
#                      so a caller may append a second (uncompressed newc) archive to it
#                      (the kernel unpacks concatenated archives: init/initramfs.c)
#
# The guest's /init insmods virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev
# virtio_pci fuse virtiofs overlay (Debian builds them as modules), then runs one of two modes,
# writing its results to the second serial port (ttyS1):
#
# - Tar mode (default): mounts the virtiofs tag `nixstore` read-only on /nix/store, and for
#   each store path name in the kernel argument narfs.paths=NAME,NAME,... writes
#     BEGIN NAME\n <base64 of `tar c -C /nix/store NAME`> END NAME rc=<tar's exit code>\n
#   then `DONE`, and reboots (QEMU runs with -no-reboot, so it exits). The host turns each
#   tar back into a tree and compares its NAR hash with the narinfo's NarHash.
# - Root mode (kernel argument narfs.root=TAG): mounts the virtiofs tag TAG read-only (a
#   whole distribution tree, e.g. the trixie chroot of scripts/build-trixie-chroot.sh) as
#   the lower layer of an OverlayFS whose upper layer is a tmpfs, copies /narfs (which the
#   caller supplies in an appended archive: /narfs/run, executable, and its data) and
#   busybox (as /narfs/busybox, for `reboot -f`) into it, moves /proc, /sys and /dev there
#   and switch_roots to it, executing /narfs/run as PID 1. /narfs/run ends the VM itself.
#   Any failure before that writes `GUEST FAILED: <why>` and DONE to ttyS1 and reboots.
#
# Cache: ${NARFS_VM_DIR:-/var/cache/narfs/vm}/<key>, key = first 16 hex digits of the
# sha256 of this script and of the two package versions; built in a temp dir under an
# exclusive flock and renamed into place. Packages are fetched with `apt-get download`
# from this machine's apt sources (nothing is installed). Needs xz-utils and gzip; the
# cpio archive is written by the guest's busybox itself (`cpio -o -H newc`).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"
base=${NARFS_VM_DIR:-/var/cache/narfs/vm}
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$kpkg" ] || { echo "build-vm-guest: apt knows no linux-image-amd64 (run apt-get update)" >&2; exit 1; }
kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/{print $2}')
bver=$(apt-cache policy busybox-static | awk '/Candidate:/{print $2}')
key=$( { cat "$self"; echo "$kpkg $kver busybox-static $bver"; } | sha256sum | cut -c1-16)
final="$base/$key"
complete() { [ -f "$1/.complete" ] && [ -s "$1/vmlinux" ] && [ -s "$1/initramfs.cpio.gz" ]; }
if complete "$final"; then echo "$final"; exit 0; fi
mkdir -p "$base"
exec 9>"$base/.lock"
flock -w 1800 9 || { echo "build-vm-guest: $base/.lock held for 30 min" >&2; exit 1; }
if complete "$final"; then echo "$final"; exit 0; fi
tmp=$(mktemp -d "$base/.build-$key.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
echo "build-vm-guest: building $final ($kpkg $kver)" >&2
apt-get download "$kpkg" busybox-static >/dev/null 2>dl.log || { cat dl.log >&2; exit 1; }
mkdir k b root
dpkg-deb -x "$kpkg"_*.deb k
dpkg-deb -x busybox-static_*.deb b
kdir=$(ls -d k/lib/modules/*)
# vmlinux: the xz payload of the bzImage (first xz stream magic FD 37 7A 58 5A 00).
vmlinuz=$(ls k/boot/vmlinuz-*)
off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | head -n1 | cut -d: -f1 || true)
[ -n "$off" ] || { echo "build-vm-guest: no xz payload in $vmlinuz" >&2; exit 1; }
tail -c +"$((off + 1))" "$vmlinuz" | xz -dc > vmlinux 2>/dev/null || true
head -c 4 vmlinux | grep -q 'ELF' || { echo "build-vm-guest: could not extract vmlinux" >&2; exit 1; }
mkdir -p root/bin root/sbin root/proc root/sys root/dev root/nix/store root/modules
cp b/bin/busybox root/bin/busybox
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci fuse virtiofs overlay; do
  f=$(find "$kdir" -name "$m.ko" -o -name "$m.ko.xz" | head -n1)
  [ -n "$f" ] || { echo "build-vm-guest: module $m not in $kpkg" >&2; exit 1; }
  case "$f" in *.xz) xz -dc "$f" > "root/modules/$m.ko" ;; *) cp "$f" "root/modules/$m.ko" ;; esac
done
cat > root/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci fuse virtiofs overlay; do
  insmod /modules/$m.ko || echo "init: insmod $m failed"
done
out=/dev/ttyS1
stty -F $out raw -echo 2>/dev/null
fail() { echo "GUEST FAILED: $*" > $out; echo DONE > $out; sync; reboot -f; }
root=$(sed -n 's/.*narfs\.root=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$root" ]; then
  [ -x /narfs/run ] || fail "root mode needs /narfs/run from an appended archive"
  mkdir -p /ro /rw /newroot
  mount -t virtiofs -o ro "$root" /ro || fail "mount -t virtiofs $root"
  mount -t tmpfs -o mode=0755 tmpfs /rw || fail "tmpfs"
  mkdir /rw/upper /rw/work
  mount -t overlay overlay -o lowerdir=/ro,upperdir=/rw/upper,workdir=/rw/work /newroot || fail "overlay root"
  mkdir -p /newroot/narfs && cp -a /narfs/. /newroot/narfs/ && cp /bin/busybox /newroot/narfs/busybox || fail "copy /narfs"
  for d in proc sys dev; do mkdir -p /newroot/$d; mount --move /$d /newroot/$d || fail "move /$d"; done
  exec switch_root /newroot /narfs/run
fi
if mount -t virtiofs -o ro nixstore /nix/store; then
  paths=$(sed -n 's/.*narfs\.paths=\([^ ]*\).*/\1/p' /proc/cmdline | tr , ' ')
  for p in $paths; do
    echo "BEGIN $p" > $out
    tar c -C /nix/store "$p" > /tmp.tar; rc=$?
    base64 /tmp.tar > $out
    rm -f /tmp.tar
    echo "END $p rc=$rc" > $out
  done
else
  echo "MOUNT FAILED" > $out
fi
echo DONE > $out
sync
reboot -f
INIT
chmod 0755 root/init
# busybox's own cpio writes the newc archive (no host cpio needed).
(cd root && find . | ../root/bin/busybox cpio -o -H newc 2>/dev/null | gzip -9) > initramfs.cpio.gz
# Zero padding to a 4-byte boundary: an archive appended by the caller must start aligned.
pad=$(( (4 - $(stat -c %s initramfs.cpio.gz) % 4) % 4 ))
head -c "$pad" /dev/zero >> initramfs.cpio.gz
mkdir "$tmp/out"
mv vmlinux initramfs.cpio.gz "$tmp/out/"
touch "$tmp/out/.complete"
mv "$tmp/out" "$final"
echo "$final"
