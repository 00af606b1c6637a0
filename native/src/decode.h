// decode.h: decodeRequest, the pure, bounds-checked reader of one kernel FUSE request.
//
// Invariant: decodeRequest never reads outside [buf, buf+len) and never trusts a length
// or count field of the request: the header's len must equal the bytes read, every fixed
// body must fit, names must be NUL-terminated inside the body, and a BATCH_FORGET count
// must fit in what is left. Pointers in Request point into `buf` and are valid as long as
// it is. Multi-byte fields are copied out with memcpy (no unaligned loads), so any buffer
// address is fine. It allocates nothing and has no side effects: it is what native/fuzz
// feeds with malformed input.
#pragma once
#include <cstddef>
#include <cstdint>

namespace narfs {

enum class DecodeStatus {
  Ok,
  TooShort,      // fewer bytes than a fuse_in_header
  LenMismatch,   // header.len differs from the bytes read
  BadBody,       // the body of a known opcode is too short or malformed
};

constexpr uint32_t kMaxName = 1024;  // longer names are refused (kernel: NAME_MAX 255)

struct Request {
  uint32_t len = 0;
  uint32_t opcode = 0;
  uint64_t unique = 0;
  uint64_t nodeid = 0;
  uint32_t uid = 0, gid = 0, pid = 0;
  // LOOKUP, GETXATTR: the name (not NUL-terminated view of namelen bytes).
  const uint8_t* name = nullptr;
  uint32_t namelen = 0;
  // OPEN(DIR): flags. READ(DIR(PLUS)): fh, offset, size. RELEASE(DIR): fh, flags.
  // GETATTR: fh (when getattr_flags has FUSE_GETATTR_FH), flags = getattr_flags.
  // GETXATTR/LISTXATTR: size. ACCESS: flags = mask. FLUSH: fh.
  uint64_t fh = 0;
  uint64_t offset = 0;
  uint32_t size = 0;
  uint32_t flags = 0;
  // FORGET: nlookup.
  uint64_t nlookup = 0;
  // BATCH_FORGET: count entries of fuse_forget_one at `forgets` (read with forgetAt).
  const uint8_t* forgets = nullptr;
  uint32_t forgetCount = 0;
  // INTERRUPT: the unique of the interrupted request.
  uint64_t interruptUnique = 0;
  // INIT
  uint32_t major = 0, minor = 0, maxReadahead = 0;
  uint64_t initFlags = 0;  // flags | (flags2 << 32) when FUSE_INIT_EXT was sent
};

DecodeStatus decodeRequest(const uint8_t* buf, size_t len, Request* out);

// The i-th entry of a decoded BATCH_FORGET (i < forgetCount).
void forgetAt(const Request& r, uint32_t i, uint64_t* nodeid, uint64_t* nlookup);

}  // namespace narfs
