// backing_journal.h: the record file of backing ids (restart without unmount with FUSE
// passthrough). Backing ids belong to the FUSE connection (fs/fuse/backing.c: an idr in
// struct fuse_conn, freed only when the connection ends), which outlives the process under
// systemd's fd store; the kernel refuses an open of an inode that has a passthrough file
// open unless it is a passthrough open with the SAME backing (fs/fuse/iomode.c
// fuse_inode_uncached_io_start: EBUSY; fuse_file_io_open: a cached open of such an inode
// fails). So every id given to a node is recorded before the open reply that uses it, and
// the next process of the mount loads the live ones (src/fuse/backing-journal.ts reads the
// file, checks it and cuts a torn tail; this side only appends).
//
// Format (little endian), shared with src/fuse/backing-journal.ts: the 8-byte header
// `NARFSBJ1`, then records of 24 bytes:
//   u32 payloadLength (16), u32 crc32(payload) (zlib's CRC-32),
//   payload = u8 op, u8[3] zero, u32 backingId, u64 nodeid
// op 1 = registered for nodeid, 2 = retired (the node's content was dropped while files
// of it may be open: never hand it out again), 3 = closed (FUSE_DEV_IOC_BACKING_CLOSE
// follows the record). One write(2) per record on an O_APPEND descriptor; a failed or
// short write cuts the file back to `size` and reports the errno.
#pragma once
#include <cstddef>
#include <cstdint>

namespace narfs {

enum BackingOp : uint8_t { kBackingOpened = 1, kBackingRetired = 2, kBackingClosed = 3 };
constexpr size_t kBackingRecord = 24;

uint32_t crc32(const uint8_t* data, size_t len);
void encodeBackingRecord(uint8_t out[kBackingRecord], BackingOp op, uint64_t nodeid, uint32_t backingId);
// Appends one record to `fd` (O_APPEND) whose valid length is *size; 0 or an errno.
int appendBackingRecord(int fd, uint64_t* size, BackingOp op, uint64_t nodeid, uint32_t backingId);

// The JS side (mount() options, backingJournalAppend) is declared in adopt.h.

}  // namespace narfs
