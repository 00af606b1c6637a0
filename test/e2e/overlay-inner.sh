#!/bin/bash
# Runs inside the trixie chroot (scripts/chroot-run.sh), in a private mount namespace:
# puts OverlayFS on /nix/store with the narfs mount as its lower layer, then asks Nix 2.26
# about the lower paths through a local-overlay store and prints what it says, one fact
# per line, for test/e2e/local-overlay.e2e.test.ts to compare with the narinfos.
#   env: W (work dir), TOP (a lower closure root), LARGE (a lower path with a README),
#        LOWER_DIR (the lower layer: a store directory), LOWER_STORE (the lower store URL:
#        `<root>?read-only=true` for a database, `unix://<socket>` for a daemon socket),
#        LATE (optional: a path pushed to the datalake after the mount started)
# scripts/capture-worker-protocol.ts runs it too, against a recording proxy.
set -euo pipefail
enc() { local s=$1; s=${s//%/%25}; s=${s//\?/%3F}; s=${s//=/%3D}; s=${s//&/%26}; printf '%s' "$s"; }
mount -t tmpfs tmpfs /nix/var                       # fresh upper state, nothing kept in the chroot
mkdir -p /nix/store "$W/upper" "$W/work"
mount -t overlay overlay -o "lowerdir=$LOWER_DIR,upperdir=$W/upper,workdir=$W/work" /nix/store
S="local-overlay://?lower-store=$(enc "$LOWER_STORE")&upper-layer=$W/upper&check-mount=false"
export NIX_REMOTE="$S"
echo "NIXVERSION $(nix --version)"
closure=$(nix path-info --store "$S" -r "$TOP")
for p in $closure; do
  echo "CLOSURE $p"
  nix-store --store "$S" --verify-path "$p" && echo "VERIFIED $p"
  echo "REFS $p $(nix-store --store "$S" -q --references "$p" | sort | tr '\n' ' ')"
  echo "REFERRERS $p $(nix-store --store "$S" -q --referrers "$p" | sort | tr '\n' ' ')"
  echo "DERIVER $p $(nix-store --store "$S" -q --deriver "$p")"
  h=$(basename "$p" | cut -c1-32)
  echo "HASHPART $h $(nix store path-from-hash-part --store "$S" "$h")"
done
nix-store --store "$S" --verify --check-contents && echo "VERIFY-ALL ok"
if [ -n "${LATE:-}" ]; then
  if nix path-info --store "$S" "$LATE" >/dev/null 2>&1; then echo "LATE $LATE"; else echo "LATE invalid"; fi
fi
cat > "$W/build.nix" <<NIX
derivation {
  name = "narfs-overlay-build";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "read line < \${builtins.storePath "$LARGE"}/share/narfs/README; echo \"\$line\" > \$out" ];
}
NIX
out=$(nix-build --store "$S" --no-out-link --option substituters '' "$W/build.nix")
echo "BUILT $out $(cat "$out")"
for e in "$W"/upper/*; do echo "UPPER $(basename "$e")"; done
