// dir_flags.cc: markTopDir(path) → 0, or the errno of the failed step. Sets FS_TOPDIR_FL
// (`chattr +T`, include/uapi/linux/fs.h) on a directory. On ext2/3/4 the Orlov allocator
// (fs/ext4/ialloc.c, find_group_orlov) then treats the directory like the filesystem's root:
// its new subdirectories are spread over block groups instead of being packed into the
// parent's group, and the files created in a subdirectory go to that subdirectory's group
// (find_group_other). Filesystems without the attribute answer ENOTTY or EOPNOTSUPP; which
// directory gets it and what a failure means is the caller's business
// (src/cache/blob-store.ts). Synchronous: two ioctls on an open directory, called once per
// store open. Already set: no write.
#include "dir_flags.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <string>

namespace narfs {
namespace {

int markTopDir(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  // The kernel reads and writes an int here, whatever the ioctl's declared type says.
  int flags = 0;
  int err = 0;
  if (ioctl(fd, FS_IOC_GETFLAGS, &flags) != 0) {
    err = errno;
  } else if ((flags & FS_TOPDIR_FL) == 0) {
    flags |= FS_TOPDIR_FL;
    if (ioctl(fd, FS_IOC_SETFLAGS, &flags) != 0) err = errno;
  }
  close(fd);
  return err;
}

Napi::Value MarkTopDir(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "markTopDir(path: string)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, markTopDir(info[0].As<Napi::String>().Utf8Value()));
}

}  // namespace

void registerDirFlagExports(Napi::Env env, Napi::Object exports) {
  exports.Set("markTopDir", Napi::Function::New(env, MarkTopDir));
}

}  // namespace narfs
