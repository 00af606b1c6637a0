// malloc_trim.cc: mallocTrim() → whether any memory went back to the kernel. glibc's
// malloc_trim(0) (malloc/malloc.c mtrim) walks every arena and gives back the whole free
// pages inside it (madvise MADV_DONTNEED), not only the free top of the main heap that
// glibc trims by itself on free(). When to call it is the caller's business
// (src/daemon/quiet-memory-release.ts). Synchronous, process-wide, allocates nothing.
// Not exported off glibc (the caller then runs without it).
#include "malloc_trim.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace narfs {
namespace {

#if defined(__GLIBC__)
Napi::Value MallocTrim(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), malloc_trim(0) == 1);
}
#endif

}  // namespace

void registerMallocTrimExport(Napi::Env env, Napi::Object exports) {
#if defined(__GLIBC__)
  exports.Set("mallocTrim", Napi::Function::New(env, MallocTrim));
#else
  (void)env;
  (void)exports;
#endif
}

}  // namespace narfs
