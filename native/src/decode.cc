// decode.cc: see decode.h. Request layouts follow include/uapi/linux/fuse.h.
#include "decode.h"

#include <cstring>

#include "fuse_abi.h"

namespace narfs {

namespace {

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// A NUL-terminated name that fills the rest of the body (the kernel sends name + '\0').
bool readName(const uint8_t* p, size_t n, Request* r) {
  if (n == 0) return false;
  const void* nul = std::memchr(p, 0, n);
  if (nul == nullptr) return false;
  size_t namelen = static_cast<const uint8_t*>(nul) - p;
  if (namelen == 0 || namelen > kMaxName) return false;
  r->name = p;
  r->namelen = static_cast<uint32_t>(namelen);
  return true;
}

}  // namespace

DecodeStatus decodeRequest(const uint8_t* buf, size_t len, Request* r) {
  *r = Request();
  if (buf == nullptr || len < sizeof(fuse_in_header)) return DecodeStatus::TooShort;
  fuse_in_header h = load<fuse_in_header>(buf);
  if (h.len != len) return DecodeStatus::LenMismatch;
  r->len = h.len;
  r->opcode = h.opcode;
  r->unique = h.unique;
  r->nodeid = h.nodeid;
  r->uid = h.uid;
  r->gid = h.gid;
  r->pid = h.pid;
  const uint8_t* b = buf + sizeof(fuse_in_header);
  const size_t n = len - sizeof(fuse_in_header);
  switch (h.opcode) {
    case FUSE_LOOKUP:
      return readName(b, n, r) ? DecodeStatus::Ok : DecodeStatus::BadBody;
    case FUSE_FORGET: {
      if (n < sizeof(fuse_forget_in)) return DecodeStatus::BadBody;
      r->nlookup = load<fuse_forget_in>(b).nlookup;
      return DecodeStatus::Ok;
    }
    case FUSE_BATCH_FORGET: {
      if (n < sizeof(fuse_batch_forget_in)) return DecodeStatus::BadBody;
      uint32_t count = load<fuse_batch_forget_in>(b).count;
      size_t rest = n - sizeof(fuse_batch_forget_in);
      if (count > rest / sizeof(fuse_forget_one)) return DecodeStatus::BadBody;
      r->forgets = b + sizeof(fuse_batch_forget_in);
      r->forgetCount = count;
      return DecodeStatus::Ok;
    }
    case FUSE_GETATTR: {
      // Before 7.9 the body was empty; accept that as "no file handle".
      if (n == 0) return DecodeStatus::Ok;
      if (n < sizeof(fuse_getattr_in)) return DecodeStatus::BadBody;
      fuse_getattr_in g = load<fuse_getattr_in>(b);
      r->flags = g.getattr_flags;
      r->fh = g.fh;
      return DecodeStatus::Ok;
    }
    case FUSE_OPEN:
    case FUSE_OPENDIR: {
      if (n < sizeof(fuse_open_in)) return DecodeStatus::BadBody;
      r->flags = load<fuse_open_in>(b).flags;
      return DecodeStatus::Ok;
    }
    case FUSE_READ:
    case FUSE_READDIR:
    case FUSE_READDIRPLUS: {
      // 24 bytes before 7.9 (no lock_owner/flags).
      if (n < 24) return DecodeStatus::BadBody;
      r->fh = load<uint64_t>(b);
      r->offset = load<uint64_t>(b + 8);
      r->size = load<uint32_t>(b + 16);
      r->flags = n >= sizeof(fuse_read_in) ? load<uint32_t>(b + 32) : 0;
      return DecodeStatus::Ok;
    }
    case FUSE_RELEASE:
    case FUSE_RELEASEDIR: {
      if (n < 16) return DecodeStatus::BadBody;
      r->fh = load<uint64_t>(b);
      r->flags = load<uint32_t>(b + 8);
      return DecodeStatus::Ok;
    }
    case FUSE_FLUSH: {
      if (n < 8) return DecodeStatus::BadBody;
      r->fh = load<uint64_t>(b);
      return DecodeStatus::Ok;
    }
    case FUSE_GETXATTR: {
      if (n < sizeof(fuse_getxattr_in)) return DecodeStatus::BadBody;
      r->size = load<fuse_getxattr_in>(b).size;
      return readName(b + sizeof(fuse_getxattr_in), n - sizeof(fuse_getxattr_in), r) ? DecodeStatus::Ok
                                                                                        : DecodeStatus::BadBody;
    }
    case FUSE_LISTXATTR: {
      if (n < sizeof(fuse_getxattr_in)) return DecodeStatus::BadBody;
      r->size = load<fuse_getxattr_in>(b).size;
      return DecodeStatus::Ok;
    }
    case FUSE_ACCESS: {
      if (n < sizeof(fuse_access_in)) return DecodeStatus::BadBody;
      r->flags = load<fuse_access_in>(b).mask;
      return DecodeStatus::Ok;
    }
    case FUSE_INTERRUPT: {
      if (n < sizeof(fuse_interrupt_in)) return DecodeStatus::BadBody;
      r->interruptUnique = load<fuse_interrupt_in>(b).unique;
      return DecodeStatus::Ok;
    }
    case FUSE_INIT: {
      if (n < 16) return DecodeStatus::BadBody;
      r->major = load<uint32_t>(b);
      r->minor = load<uint32_t>(b + 4);
      r->maxReadahead = load<uint32_t>(b + 8);
      uint32_t flags = load<uint32_t>(b + 12);
      uint64_t all = flags;
      if ((flags & FUSE_INIT_EXT) != 0 && n >= 20) all |= static_cast<uint64_t>(load<uint32_t>(b + 16)) << 32;
      r->initFlags = all;
      return DecodeStatus::Ok;
    }
    default:
      // Other opcodes carry bodies narfs never reads (it answers them with an errno).
      return DecodeStatus::Ok;
  }
}

void forgetAt(const Request& r, uint32_t i, uint64_t* nodeid, uint64_t* nlookup) {
  fuse_forget_one f = load<fuse_forget_one>(r.forgets + static_cast<size_t>(i) * sizeof(fuse_forget_one));
  *nodeid = f.nodeid;
  *nlookup = f.nlookup;
}

}  // namespace narfs
