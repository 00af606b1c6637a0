#!/bin/bash
# /narfs/run of the local-overlay VM test (test/e2e/virtiofs-vm.e2e.test.ts): runs as PID 1
# of a QEMU guest whose root is the trixie chroot (Nix 2.26) over virtiofs with a tmpfs on
# top (scripts/build-vm-guest.sh, root mode). The host exports the narfs mount as virtiofs
# tag `nixstore` and the lower database directory (<lower>/nix/var/nix/db) as `nixdb`.
#
# Here they become a lower store at /lower, exactly as on a machine (README, "The layered
# store"): /lower/nix/store and /lower/nix/var/nix/db, both read-only; OverlayFS on
# /nix/store with that store as lower layer and a tmpfs as upper; Nix's local-overlay
# store with `lower-store=/lower?read-only=true`, and check-mount left on (the guest's
# /proc/self/mounts is the real one). Then it asks Nix about the lower paths and prints
# one fact per line to ttyS1 for the test to compare with the narinfos; `DONE rc=<status>`
# last, then reboots (QEMU exits). The guest has no network: nothing can be downloaded.
#   /narfs/env: TOP (a registered closure root), LARGE (a path of it with
#               share/narfs/README), UNREG (a path in the datalake, not registered until
#               the guest prints `REGISTER UNREG`), KEY (the datalake's public key)
set -uo pipefail
out=/dev/ttyS1
stty -F "$out" raw -echo 2>/dev/null || true
exec >"$out" 2>&1
finish() {
  local rc=$?
  echo "DONE rc=$rc"
  sync
  /narfs/busybox reboot -f
}
trap finish EXIT
set -e
# ttyS1 is a terminal: no colours, no progress bar, in what the test parses.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb NO_COLOR=1
. /narfs/env
step() { echo "STEP $1 $(cut -d' ' -f1 /proc/uptime)"; }

# A build needs a pseudoterminal for its log (the initramfs moved only devtmpfs here).
mkdir -p /dev/pts && mount -t devpts -o ptmxmode=0666 devpts /dev/pts
mkdir -p /lower/nix/store /lower/nix/var/nix/db /nix/rw /nix/store
mount -t virtiofs -o ro nixstore /lower/nix/store
mount -t virtiofs -o ro nixdb /lower/nix/var/nix/db
mount -t tmpfs -o mode=0755 tmpfs /nix/rw
mkdir /nix/rw/upper /nix/rw/work
mount -t overlay overlay -o lowerdir=/lower/nix/store,upperdir=/nix/rw/upper,workdir=/nix/rw/work /nix/store
S='local-overlay://?lower-store=/lower%3Fread-only%3Dtrue&upper-layer=/nix/rw/upper'
step mounted

echo "NIXVERSION $(nix --version)"
info=$(nix path-info --store "$S" --json -r "$TOP")
echo "PATHINFO $info"
step path-info
# Contents (NAR hash of every file as read through overlay, virtiofs and narfs) and signatures.
nix store verify --store "$S" --option trusted-public-keys "$KEY" -r "$TOP"
echo "STOREVERIFY ok"
step store-verify
nix-store --store "$S" --verify --check-contents
echo "VERIFYALL ok"
step verify-all
realised=$(nix-store --store "$S" --realise "$TOP")
echo "REALISED $realised"
step realise
if nix path-info --store "$S" "$UNREG" >/dev/null 2>&1; then echo "UNREG valid"; else echo "UNREG invalid"; fi
[ -e "$UNREG" ] && echo "UNREG-VISIBLE yes"
step unreg
# check-mount is on: a store whose upper layer is not the one mounted on /nix/store is refused.
mkdir -p /nix/rw/elsewhere
if nix path-info --store 'local-overlay://?lower-store=/lower%3Fread-only%3Dtrue&upper-layer=/nix/rw/elsewhere' "$TOP" >/dev/null 2>/nix/rw/checkmount.err; then
  echo "CHECKMOUNT accepted"
else
  echo "CHECKMOUNT refused $(grep -o 'mounted incorrectly' /nix/rw/checkmount.err | head -n1)"
fi
rm -rf /nix/rw/elsewhere /nix/rw/checkmount.err
step check-mount
cat > /root/build.nix <<NIX
derivation {
  name = "narfs-vm-build";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "read line < \${builtins.storePath "$LARGE"}/share/narfs/README; echo \"\$line\" > \$out" ];
}
NIX
built=$(nix-build --store "$S" --no-out-link /root/build.nix)
echo "BUILT $built $(cat "$built")"
step build
for e in /nix/rw/upper/*; do echo "UPPER $(basename "$e")"; done
# A registration made while the guest runs: the host registers UNREG when it reads this
# line; a new database generation replaces db.sqlite by rename, and the export (cache=auto)
# must show it. Bounded by guest uptime, generous for TCG on a loaded host.
echo "REGISTER $UNREG"
late=invalid
end=$(( $(cut -d. -f1 /proc/uptime) + 300 ))
while [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ]; do
  if nix path-info --store "$S" "$UNREG" >/dev/null 2>&1; then late=valid; break; fi
  sleep 0.5
done
echo "LATE $late"
step late-registration
