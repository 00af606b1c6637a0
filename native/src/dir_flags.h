// dir_flags.h: the ext2/3/4 "top directory" attribute of a directory (dir_flags.cc).
#pragma once
#include <napi.h>

namespace narfs {
// Adds markTopDir(path) → 0 | errno to the exports.
void registerDirFlagExports(Napi::Env env, Napi::Object exports);
}  // namespace narfs
