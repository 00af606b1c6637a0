// malloc_trim.h: giving the C allocator's free pages back to the kernel (malloc_trim.cc).
#pragma once
#include <napi.h>

namespace narfs {
// Adds mallocTrim() → boolean to the exports (glibc only).
void registerMallocTrimExport(Napi::Env env, Napi::Object exports);
}  // namespace narfs
