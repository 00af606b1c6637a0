// hash_file.h: SHA-256 of a whole file on libuv's thread pool (hash_file.cc).
#pragma once
#include <napi.h>

namespace narfs {
// Adds hashFile(path) → Promise<{ digest: Buffer, size: number }> to the exports.
void registerHashExports(Napi::Env env, Napi::Object exports);
}  // namespace narfs
