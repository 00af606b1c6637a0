// dirent_pack.h: packDirents, the READDIR / READDIRPLUS reply body writer.
//
// Format (include/uapi/linux/fuse.h): a sequence of fuse_dirent (READDIR) or
// fuse_direntplus (READDIRPLUS) records, each padded to 8 bytes (FUSE_DIRENT_ALIGN); `off`
// of a record is the offset at which the next READDIR resumes. Invariant: never writes
// past `cap`; stops before the first entry that does not fit, so the caller knows exactly
// which entries reached the kernel (a READDIRPLUS entry with a nodeid is a lookup).
#pragma once
#include <cstddef>
#include <cstdint>

#include "fuse_abi.h"

namespace narfs {

struct DirentIn {
  const uint8_t* name;
  uint32_t namelen;
  uint64_t ino;     // d_ino shown to readdir(3)
  uint64_t nodeid;  // READDIRPLUS only: 0 = no entry (the kernel does not look it up)
  uint64_t off;     // resume offset after this entry
  fuse_attr attr;   // READDIRPLUS only, when nodeid != 0
};

// Packs entries [0, count) into out[0, cap) until one does not fit; returns how many were
// packed and sets *used to the bytes written.
size_t packDirents(bool plus, const DirentIn* entries, size_t count, uint64_t entryValid, uint64_t attrValid,
                   uint8_t* out, size_t cap, size_t* used);

}  // namespace narfs
