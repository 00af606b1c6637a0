// fuse_abi.h: the kernel FUSE wire protocol as narfs speaks it.
//
// Base: the system's <linux/fuse.h> (protocol 7.38 on Debian bookworm). The 7.40
// passthrough additions (Linux include/uapi/linux/fuse.h, 6.9+) are declared here when
// the system header lacks them: the FUSE_PASSTHROUGH init flag (bit 37, i.e. bit 5 of
// flags2), FOPEN_PASSTHROUGH, backing_id in fuse_open_out (the former padding field),
// max_stack_depth in fuse_init_out (the first of the former unused words), and the
// FUSE_DEV_IOC_BACKING_OPEN/CLOSE ioctls with struct fuse_backing_map.
//
// FUSE over io_uring (protocol 7.42, Linux 6.14+; include/uapi/linux/fuse.h, used by
// fs/fuse/dev_uring.c) is declared here too (bookworm's header is 6.1): the
// FUSE_OVER_IO_URING init flag (bit 41), the two IORING_OP_URING_CMD commands, the
// per-entry header buffer (iov[0] of a REGISTER) and the command in the SQE128's 80-byte
// command area. Layouts checked by the static_asserts below.
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
#ifndef FUSE_OVER_IO_URING
#define FUSE_OVER_IO_URING (1ULL << 41)
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

// --- FUSE over io_uring (include/uapi/linux/fuse.h, 6.14+) ---
constexpr uint32_t kUringCmdRegister = 1;        // FUSE_IO_URING_CMD_REGISTER
constexpr uint32_t kUringCmdCommitAndFetch = 2;  // FUSE_IO_URING_CMD_COMMIT_AND_FETCH

// struct fuse_uring_ent_in_out
struct uring_ent_in_out {
  uint64_t flags;
  uint64_t commit_id;   // set by the kernel on fetch; echoed in the commit
  uint32_t payload_sz;  // bytes valid in the payload buffer (either direction)
  uint32_t padding;
  uint64_t reserved;
};
static_assert(sizeof(uring_ent_in_out) == 32, "fuse_uring_ent_in_out is 32 bytes");

// struct fuse_uring_req_header: in_out holds fuse_in_header on fetch and fuse_out_header
// on commit; op_in the request's first argument (its per-opcode struct; empty for names).
struct uring_req_header {
  uint8_t in_out[128];  // FUSE_URING_IN_OUT_HEADER_SZ
  uint8_t op_in[128];   // FUSE_URING_OP_IN_OUT_SZ
  uring_ent_in_out ring_ent_in_out;
};
static_assert(sizeof(uring_req_header) == 288, "fuse_uring_req_header is 288 bytes");

// struct fuse_uring_cmd_req (in the SQE128's command area; the rest must be zero)
struct uring_cmd_req {
  uint64_t flags;
  uint64_t commit_id;  // 0 for REGISTER
  uint16_t qid;        // queue = CPU index; every possible CPU needs one
  uint8_t padding[6];
};
static_assert(sizeof(uring_cmd_req) == 24, "fuse_uring_cmd_req is 24 bytes");

}  // namespace narfs
