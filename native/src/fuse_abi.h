// fuse_abi.h: the kernel FUSE wire protocol as narfs speaks it.
//
// Base: the system's <linux/fuse.h> (protocol 7.38 on Debian bookworm). The 7.40
// passthrough additions (Linux include/uapi/linux/fuse.h, 6.9+) are declared here when
// the system header lacks them: the FUSE_PASSTHROUGH init flag (bit 37, i.e. bit 5 of
// flags2), FOPEN_PASSTHROUGH, backing_id in fuse_open_out (the former padding field),
// max_stack_depth in fuse_init_out (the first of the former unused words), and the
// FUSE_DEV_IOC_BACKING_OPEN/CLOSE ioctls with struct fuse_backing_map.
#pragma once
#include <linux/fuse.h>
#include <sys/ioctl.h>
#include <cstdint>

#ifndef FUSE_PASSTHROUGH
#define FUSE_PASSTHROUGH (1ULL << 37)
#endif
#ifndef FOPEN_PASSTHROUGH
#define FOPEN_PASSTHROUGH (1 << 7)
#endif
#ifndef FUSE_INIT_EXT
#define FUSE_INIT_EXT (1 << 30)
#endif

namespace narfs {

struct backing_map {
  int32_t fd;
  uint32_t flags;
  uint64_t padding;
};

constexpr unsigned long kIocBackingOpen = _IOW(FUSE_DEV_IOC_MAGIC, 1, struct backing_map);
constexpr unsigned long kIocBackingClose = _IOW(FUSE_DEV_IOC_MAGIC, 2, uint32_t);
constexpr unsigned long kIocClone = _IOR(FUSE_DEV_IOC_MAGIC, 0, uint32_t);

// fuse_init_out as of 7.40 (64 bytes, same size as 7.38's).
struct init_out {
  uint32_t major;
  uint32_t minor;
  uint32_t max_readahead;
  uint32_t flags;
  uint16_t max_background;
  uint16_t congestion_threshold;
  uint32_t max_write;
  uint32_t time_gran;
  uint16_t max_pages;
  uint16_t map_alignment;
  uint32_t flags2;
  uint32_t max_stack_depth;
  uint32_t unused[6];
};
static_assert(sizeof(init_out) == 64, "fuse_init_out is 64 bytes");

// fuse_open_out as of 7.40.
struct open_out {
  uint64_t fh;
  uint32_t open_flags;
  int32_t backing_id;
};
static_assert(sizeof(open_out) == sizeof(fuse_open_out), "fuse_open_out size");

}  // namespace narfs
