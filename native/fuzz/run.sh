#!/usr/bin/env bash
# Builds native/fuzz/fuzz_decode with AddressSanitizer + UndefinedBehaviorSanitizer (any
# finding aborts) and runs it on N inputs (default 100000): `bash native/fuzz/run.sh [N] [SEED]`.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${NARFS_FUZZ_OUT:-build/fuzz}"
mkdir -p "$out"
g++ -std=c++17 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer \
  -Wall -Wextra -Werror -Inative/src \
  native/fuzz/fuzz_decode.cc native/src/decode.cc native/src/dirent_pack.cc -o "$out/fuzz_decode"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  "$out/fuzz_decode" "${1:-100000}" "${2:-1}"
