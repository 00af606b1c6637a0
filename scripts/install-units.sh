#!/usr/bin/env bash
# install-units.sh: installs narfs's systemd units (systemd/) and an example config.
#
#   bash scripts/install-units.sh [--prefix ROOT] [--narfs PATH] [--mountpoint DIR]
#                                 [--with-overlay] [--no-reload]
#
#   --prefix ROOT      install under ROOT (default /): ROOT/etc/systemd/system, ROOT/etc/narfs,
#                      ROOT/etc/tmpfiles.d — e.g. a container or image tree
#   --narfs PATH       the narfs executable as seen when the unit runs
#                      (default: this checkout's bin/narfs)
#   --mountpoint DIR   where narfs.service mounts the store (default /var/lib/narfs/lower/nix/store);
#                      also the read-only export of narfs-virtiofsd@.service and the overlay's lowerdir
#   --with-overlay     also install the example /nix/store overlay (nix-store.mount, its
#                      tmpfiles.d entry, and the nix-daemon.service drop-in that waits for it)
#   --no-reload        do not run `systemctl daemon-reload` (it runs only when ROOT is / and
#                      systemd is the running init)
#
# Installs narfs.service and narfs-virtiofsd@.service with @NARFS@ and @MOUNTPOINT@ replaced,
# and /etc/narfs/narfs.conf from narfs.conf.example unless a narfs.conf exists (never
# overwritten). Enable with `systemctl enable --now narfs` after editing narfs.conf.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/
narfs="$here/bin/narfs"
mountpoint=/var/lib/narfs/lower/nix/store
overlay=0
reload=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --narfs) narfs="$2"; shift 2 ;;
    --mountpoint) mountpoint="$2"; shift 2 ;;
    --with-overlay) overlay=1; shift ;;
    --no-reload) reload=0; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-units.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$narfs" in /*) ;; *) echo "install-units.sh: --narfs must be an absolute path" >&2; exit 2 ;; esac
case "$mountpoint" in /*) ;; *) echo "install-units.sh: --mountpoint must be an absolute path" >&2; exit 2 ;; esac
case "$narfs$mountpoint" in *[[:space:]\|\&\\]*) echo "install-units.sh: paths must not contain spaces, |, & or \\" >&2; exit 2 ;; esac

units="$prefix/etc/systemd/system"
install -d -m 0755 "$units" "$prefix/etc/narfs"
put() { # put SRC DEST MODE: copy with the placeholders replaced
  sed -e "s|@NARFS@|$narfs|g" -e "s|@MOUNTPOINT@|$mountpoint|g" "$1" > "$2.tmp.$$"
  chmod "$3" "$2.tmp.$$"
  mv -f "$2.tmp.$$" "$2"
  echo "installed $2"
}
put "$here/systemd/narfs.service" "$units/narfs.service" 0644
put "$here/systemd/narfs-virtiofsd@.service" "$units/narfs-virtiofsd@.service" 0644
put "$here/systemd/narfs-virtiofsd-db@.service" "$units/narfs-virtiofsd-db@.service" 0644
if [ -e "$prefix/etc/narfs/narfs.conf" ]; then
  echo "kept $prefix/etc/narfs/narfs.conf"
else
  put "$here/systemd/narfs.conf.example" "$prefix/etc/narfs/narfs.conf" 0600
fi
if [ "$overlay" = 1 ]; then
  install -d -m 0755 "$units/nix-daemon.service.d" "$prefix/etc/tmpfiles.d"
  put "$here/systemd/examples/nix-store.mount" "$units/nix-store.mount" 0644
  put "$here/systemd/examples/nix-daemon.service.d/narfs.conf" "$units/nix-daemon.service.d/narfs.conf" 0644
  put "$here/systemd/examples/narfs-overlay.tmpfiles" "$prefix/etc/tmpfiles.d/narfs-overlay.conf" 0644
fi
if [ "$reload" = 1 ] && [ "$(cd "$prefix" && pwd)" = / ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  echo "systemctl daemon-reload done"
fi
