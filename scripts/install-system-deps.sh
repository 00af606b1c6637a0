#!/usr/bin/env bash
# Installs the Debian packages narfs needs to build, run and be tested (idempotent).
# Runs as root (or through sudo). Only installs what is missing, so reruns are quick.
set -euo pipefail
pkgs=(
  fuse3 libfuse2          # fusermount3 (unprivileged native mounts), and the libfuse 2.9 of the fuse-native fallback
  g++ make                # node-gyp builds the native engine (native/) and the other addons from source
  nix-bin                 # real Nix (2.8 on bookworm): fixtures, nix hash path, db checks
  xz-utils zstd bzip2 brotli gzip   # xz and bzip2 decode NARs at run time; all are benchmark references
  sqlite3                 # inspecting lower databases
  debootstrap             # the trixie chroot with Nix 2.26 (local-overlay tests)
  python3-swift s3cmd     # the real S3 engine of the s3:// tests (Swift's s3api, scripts/s3_engine.py) and its client
  squashfs-tools squashfuse hyperfine   # benchmark peers
  xfsprogs                # bench scenario 7: reflink copies of the lower database on a loop-mounted XFS
  diffutils procps psmisc ca-certificates
  openssl                 # test CAs and server certificates (https datalake tests)
  squid                   # the site cache of the fleet test (run by the test, never as a service)
  systemd systemd-container   # systemd-analyze verify of systemd/ units; systemd-nspawn boots the units test's container
  qemu-system-x86         # the virtiofs VM test: QEMU (TCG) and, in qemu-system-common, bookworm's /usr/lib/qemu/virtiofsd
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "install-system-deps: installing ${missing[*]}" >&2
  # Packages with a service (squid) must not start one: the tests run their own. A
  # policy-rc.d that denies starts is put in place for the install unless one exists.
  policy=/usr/sbin/policy-rc.d made_policy=
  if [ ! -e "$policy" ]; then
    made_policy=1
    trap '$SUDO rm -f "$policy"' EXIT   # also when the install fails
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # Never take anything away from the machine (its Node.js is not a Debian package and a
  # conflicting package would remove it): simulate, and refuse if apt would remove.
  removals=$(env DEBIAN_FRONTEND=noninteractive apt-get -s install --no-install-recommends "${missing[@]}" | awk '/^Remv /{print $2}' | tr '\n' ' ')
  if [ -n "$removals" ]; then
    echo "install-system-deps: installing ${missing[*]} would remove ${removals}; refusing" >&2
    exit 1
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$made_policy" ] || { $SUDO rm -f "$policy"; trap - EXIT; }
  if [[ " ${missing[*]} " == *" squid "* ]] && command -v systemctl >/dev/null; then
    $SUDO systemctl disable squid >/dev/null 2>&1 || true   # not at boot either
  fi
fi
[ -e /dev/fuse ] || { echo "install-system-deps: /dev/fuse is missing" >&2; exit 1; }
