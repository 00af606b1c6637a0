// dirent_pack.cc: see dirent_pack.h.
#include "dirent_pack.h"

#include <cstring>

namespace narfs {

namespace {
constexpr size_t align8(size_t x) { return (x + 7) & ~static_cast<size_t>(7); }
}  // namespace

size_t packDirents(bool plus, const DirentIn* entries, size_t count, uint64_t entryValid, uint64_t attrValid,
                   uint8_t* out, size_t cap, size_t* used) {
  size_t pos = 0;
  size_t i = 0;
  for (; i < count; i++) {
    const DirentIn& e = entries[i];
    const size_t head = plus ? sizeof(fuse_entry_out) + sizeof(fuse_dirent) : sizeof(fuse_dirent);
    const size_t rec = align8(head + e.namelen);
    if (e.namelen == 0 || rec > cap - pos) break;
    uint8_t* p = out + pos;
    std::memset(p, 0, rec);
    if (plus) {
      fuse_entry_out eo;
      std::memset(&eo, 0, sizeof eo);
      if (e.nodeid != 0) {
        eo.nodeid = e.nodeid;
        eo.entry_valid = entryValid;
        eo.attr_valid = attrValid;
        eo.attr = e.attr;
      }
      std::memcpy(p, &eo, sizeof eo);
      p += sizeof eo;
    }
    fuse_dirent d;
    std::memset(&d, 0, sizeof d);
    d.ino = e.ino;
    d.off = e.off;
    d.namelen = e.namelen;
    d.type = (e.attr.mode & 0170000) >> 12;
    std::memcpy(p, &d, sizeof d);
    std::memcpy(p + sizeof d, e.name, e.namelen);
    pos += rec;
  }
  *used = pos;
  return i;
}

}  // namespace narfs
