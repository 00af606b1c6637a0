#!/bin/bash
# Runs inside the trixie chroot for scripts/capture-worker-protocol.ts: fills the daemon's
# store <W>/root from the fixture datalake, then runs Nix 2.26 clients against the recording
# proxy unix://<W>/proxy.sock, one labelled session after another (<W>/label names the
# connections that follow), ending with the local-overlay e2e over that socket.
#   env: W, TOP, TOPDRV, LAKE (file:// datalake), KEY (its public key), LARGE
set -euo pipefail
export NIX_CONFIG="build-users-group =
sandbox = false
substituters =
trusted-public-keys = $KEY"
echo "NIXVERSION $(nix --version)"
nix copy --from "$LAKE" --to "local?root=$W/root" "$TOP" "$TOPDRV"
D="unix://$W/proxy.sock"
label() { echo "$1" > "$W/label"; }
self_ref=$(nix path-info --store "local?root=$W/root" -r "$TOP" | grep -- '-narfs-fixture-self-ref$')
missing=/nix/store/00000000000000000000000000000000-narfs-missing

label path-info;        nix path-info --store "$D" --json "$TOP" "$self_ref" > /dev/null
label path-info-missing; nix path-info --store "$D" "$missing" > /dev/null 2>&1 || true
label path-info-closure; nix path-info --store "$D" -r "$TOP" > /dev/null
label check-validity;   nix-store --store "$D" --check-validity --print-invalid "$TOP" "$missing" > /dev/null
label hash-part;        nix store path-from-hash-part --store "$D" "$(basename "$TOP" | cut -c1-32)" > /dev/null
label hash-part-missing; nix store path-from-hash-part --store "$D" 00000000000000000000000000000000 > /dev/null 2>&1 || true
label referrers;        nix-store --store "$D" -q --referrers "$self_ref" > /dev/null
label valid-derivers;   nix-store --store "$D" -q --valid-derivers "$TOP" > /dev/null
label references;       nix-store --store "$D" -q --references "$TOP" > /dev/null
label deriver;          nix-store --store "$D" -q --deriver "$TOP" > /dev/null
label overlay
LOWER_DIR="$W/root/nix/store" LOWER_STORE="$D" bash "$W/overlay-inner.sh"
