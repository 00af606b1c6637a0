// session_passthrough.cc: FUSE passthrough for files whose verified bytes are a whole local
// file (Linux 6.9+: fs/fuse/passthrough.c, backing.c, iomode.c; uapi include/linux/fuse.h
// 7.40). The kernel then reads (and mmaps) the backing file itself: no READ reaches narfs.
//
// Rules this follows, from the kernel sources named above:
// - INIT: FUSE_PASSTHROUGH in flags2 with max_stack_depth 1 (the backing file's filesystem
//   must not be stacked: s_stack_depth < max_stack_depth, else ELOOP); asked only when
//   offered and the process has CAP_SYS_ADMIN in the initial user namespace, because
//   FUSE_DEV_IOC_BACKING_OPEN checks capable(CAP_SYS_ADMIN) (EPERM otherwise). Unprivileged
//   mounts keep pread from C.
// - FUSE_DEV_IOC_BACKING_OPEN {fd, flags 0, padding 0} returns a backing id > 0; the kernel
//   holds its own reference to the file. An open reply with FOPEN_PASSTHROUGH + backing_id
//   makes that open a passthrough file; other open flags but DIRECT_IO, NOFLUSH and
//   PARALLEL_DIRECT_WRITES make it fail (iomode.c FOPEN_PASSTHROUGH_MASK), so no KEEP_CACHE. FUSE_DEV_IOC_BACKING_CLOSE drops the id; open files
//   keep their reference, so closing never breaks a reader.
// - Per inode (iomode.c fuse_file_io_open): while a passthrough file is open, every new
//   open must be passthrough with the same backing, or it fails with EIO; while a cached-io
//   file is open, a passthrough open fails (ETXTBSY, seen as EIO). So the node counts its
//   open handles by mode (the mode is chosen and counted under mu_, before the reply, and
//   taken back when the reply does not reach the kernel), an id is registered once per
//   node and reused, and it is closed when the node is forgotten or its content dropped
//   with no passthrough handle left. Content dropped while passthrough handles are open
//   cannot be served by another mode: new opens get EIO until those handles close (the
//   dropped bytes are never handed out again).
// - A failed BACKING_OPEN (EPERM in a user namespace, ELOOP on a stacked cache, EMFILE)
//   falls back to pread and is counted; EPERM turns passthrough off for the session.
// - Restart (backing_journal.h): ids and io modes outlive the process with the connection.
//   Each id is recorded before the reply that uses it (and its close before the ioctl); a
//   resumed session answers a node of an earlier process, until the kernel FORGETs it, in
//   passthrough with that process's id (EIO if retired), or cached if it had none (its
//   files may be cached-io ones); its handle counts are unknown, so the id is kept (and its
//   content not evicted) until that FORGET.
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "session.h"

namespace narfs {

bool Session::hasCapSysAdmin() {
  struct __user_cap_header_struct h;
  std::memset(&h, 0, sizeof h);
  h.version = _LINUX_CAPABILITY_VERSION_3;
  struct __user_cap_data_struct d[2];
  std::memset(d, 0, sizeof d);
  if (syscall(SYS_capget, &h, d) != 0) return false;
  if ((d[CAP_SYS_ADMIN / 32].effective & (1u << (CAP_SYS_ADMIN % 32))) == 0) return false;
  // Capabilities inside a user namespace do not satisfy capable(): require the initial
  // namespace's identity map ("0 0 4294967295").
  FILE* f = std::fopen("/proc/self/uid_map", "r");
  if (f == nullptr) return false;
  unsigned long inside = 1, outside = 1, count = 0;
  int got = std::fscanf(f, "%lu %lu %lu", &inside, &outside, &count);
  std::fclose(f);
  return got == 3 && inside == 0 && outside == 0 && count == 4294967295UL;
}

uint64_t Session::wantPassthrough(uint64_t offered) const {
  if (!opts_.passthrough || (offered & FUSE_PASSTHROUGH) == 0 || !hasCapSysAdmin()) return 0;
  return FUSE_PASSTHROUGH;
}

bool Session::journalBacking(BackingOp op, uint64_t nodeid, int32_t id) {
  if (opts_.backingJournal.empty()) return true;  // no restart state: nothing is kept
  if (journalFailed_ || journalFd_ < 0) return false;
  if (appendBackingRecord(journalFd_, &journalSize_, op, nodeid, static_cast<uint32_t>(id)) == 0) return true;
  journalFailed_ = true;
  return false;
}

void Session::openBackingJournal() {
  for (const auto& a : opts_.adoptedBacking) {
    adoptedIds_[a.nodeid] = {a.backingId, a.retired};
    backingLive_++;
  }
  if (opts_.backingJournal.empty()) return;
  journalSize_ = opts_.backingJournalSize;
  journalFd_ = open(opts_.backingJournal.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (journalFd_ < 0) journalFailed_ = true;  // no new ids: the next process could not know them
}

bool Session::registerBacking(uint64_t nodeid, Node& n) {
  if (!opts_.backingJournal.empty() && (journalFailed_ || journalFd_ < 0)) {
    ptFallbacks_++;
    return false;
  }
  backing_map m;
  std::memset(&m, 0, sizeof m);
  m.fd = n.file->fd;
  int id = ioctl(fd(0), kIocBackingOpen, &m);
  if (id <= 0) {
    int e = errno;
    ptFallbacks_++;
    if (e == EPERM) ptEnabled_ = false;
    return false;
  }
  // Recorded before any reply carries it: a later process of this connection must answer
  // the node's opens with this id while files of it stay open.
  if (!journalBacking(kBackingOpened, nodeid, id)) {
    uint32_t u = static_cast<uint32_t>(id);
    ioctl(fd(0), kIocBackingClose, &u);
    ptFallbacks_++;
    return false;
  }
  n.backingId = id;
  n.backingRetired = false;
  backingLive_++;
  return true;
}

void Session::closeId(uint64_t nodeid, int32_t id) {
  // The record comes first: a process killed in between leaves an id nobody uses (freed
  // with the connection), never a recorded id the kernel no longer knows. Not recorded
  // (the file failed): the id stays with the kernel, as the file says.
  if (journalBacking(kBackingClosed, nodeid, id)) {
    uint32_t u = static_cast<uint32_t>(id);
    ioctl(fd(0), kIocBackingClose, &u);  // ENOENT only if the kernel already freed it
  }
  backingLive_--;
}

void Session::closeBacking(uint64_t nodeid, Node& n) {
  if (n.backingId <= 0) return;
  closeId(nodeid, n.backingId);
  n.backingId = 0;
  n.backingRetired = false;
}

void Session::retireBacking(uint64_t nodeid, Node& n) {
  if (n.backingId <= 0) return;
  if (n.ptHandles == 0) {
    closeBacking(nodeid, n);
  } else if (!n.backingRetired) {
    n.backingRetired = true;
    journalBacking(kBackingRetired, nodeid, n.backingId);
  }
}

OpenMode Session::decideOpen(uint64_t nodeid, Node& n, int32_t* backingId) {
  if (ioUnknown(nodeid)) {
    // A node of an earlier process of this connection (restart) the kernel has not
    // forgotten since: files of it may be open in a mode only that process knew. With its
    // live id, some may be passthrough files: only a passthrough open with that same id is
    // accepted (whether or not the content is pushed again: the kernel reads its own
    // backing file). Without one, none is passthrough, but cached ones may be open, which
    // refuse passthrough opens (ETXTBSY): cached until the kernel forgets the node.
    auto a = adoptedIds_.find(nodeid);
    if (a == adoptedIds_.end()) return OpenMode::Cached;
    if (a->second.second) return OpenMode::Conflict;
    *backingId = a->second.first;
    return OpenMode::Passthrough;
  }
  const bool whole = n.file && n.fileOffset == 0 && n.fileSize == n.file->size;
  if (n.ptHandles > 0) {
    if (n.backingId > 0 && !n.backingRetired && whole) {
      *backingId = n.backingId;
      return OpenMode::Passthrough;
    }
    return OpenMode::Conflict;
  }
  if (!ptEnabled_ || !whole || n.cachedHandles > 0) return OpenMode::Cached;
  if (n.backingId == 0 && !registerBacking(nodeid, n)) return OpenMode::Cached;
  *backingId = n.backingId;
  return OpenMode::Passthrough;
}

void Session::countRelease(uint64_t nodeid, uint64_t fh) {
  releasesSinceReclaim_++;
  bool pt = false;
  uint64_t id = nodeid;
  if (fh == kPassthroughFh) {
    pt = true;
  } else if (fh != 0) {
    auto j = jsHandles_.find(fh);
    if (j == jsHandles_.end()) return;
    id = j->second.first;
    pt = j->second.second;
    jsHandles_.erase(j);
  }
  auto it = nodes_.find(id);
  if (it == nodes_.end()) return;
  Node& n = it->second;
  if (pt) {
    if (n.ptHandles > 0 && --n.ptHandles == 0 && n.backingRetired) closeBacking(id, n);
  } else if (n.cachedHandles > 0) {
    n.cachedHandles--;
  }
}

int Session::sendOpen(int ch, uint64_t unique, uint64_t nodeid, uint64_t fh, uint32_t openFlags, bool cHandle) {
  open_out o;
  std::memset(&o, 0, sizeof o);
  o.fh = fh;
  // Read-only: a close has nothing to flush, so the kernel need not send FLUSH for it
  // (fs/fuse/file.c fuse_flush returns early on FOPEN_NOFLUSH). One request fewer per file.
  o.open_flags = openFlags | FOPEN_NOFLUSH;
  bool counted = false;
  {
    std::unique_lock<std::shared_mutex> g(mu_);
    auto it = nodes_.find(nodeid);
    // A node the kernel got from an earlier process (restart) may not be described here
    // yet: its io mode is still this table's to choose.
    if (it == nodes_.end() && ioUnknown(nodeid)) it = nodes_.emplace(nodeid, Node()).first;
    if (it != nodes_.end()) {
      Node& n = it->second;
      int32_t backingId = 0;
      OpenMode mode = decideOpen(nodeid, n, &backingId);
      if (mode == OpenMode::Conflict) {
        ptConflicts_++;
        g.unlock();
        send(ch, unique, EIO, nullptr, 0);
        return EIO;
      }
      if (mode == OpenMode::Passthrough) {
        n.ptHandles++;
        ptOpens_++;
        // Only FOPEN_PASSTHROUGH | DIRECT_IO | PARALLEL_DIRECT_WRITES | NOFLUSH may come
        // with it (iomode.c FOPEN_PASSTHROUGH_MASK, else EINVAL): no KEEP_CACHE.
        o.open_flags = (o.open_flags & (FOPEN_DIRECT_IO | FOPEN_NOFLUSH)) | FOPEN_PASSTHROUGH;
        o.backing_id = backingId;
        if (cHandle) o.fh = kPassthroughFh;
      } else {
        n.cachedHandles++;
      }
      if (!cHandle) jsHandles_[fh] = {nodeid, mode == OpenMode::Passthrough};
      counted = true;
    }
  }
  const uint64_t sentFh = o.fh;
  int err = send(ch, unique, 0, &o, sizeof o);
  if (err != 0 && counted) {
    // The kernel did not take this open (interrupted): no RELEASE will come for it.
    std::unique_lock<std::shared_mutex> g(mu_);
    countRelease(nodeid, sentFh);
  }
  return err;
}

}  // namespace narfs

// --- Opens answered in C from a location JS gave with the entry --------------------------
//
// After drop_caches the kernel forgets every inode, so each later run LOOKUPs and OPENs its
// files again; JS gives, with a LOOKUP's entry of a regular file whose blob is complete and
// verified in this process, where its bytes lie (setLocation: a path and sizes, no
// descriptor). The OPEN is then answered here: the file is opened, its size checked against
// what JS verified, and it becomes the node's content exactly as if JS had pushed it
// (setContent), so the eviction guard (evictContent/contentInUse) sees the open handles,
// RELEASE counts them down, and FORGET lets go of the descriptor. Every failure (the
// descriptor cap maxFiles, open, fstat, a size that differs, the location dropped while
// opening) sends the OPEN to JS as before. A blob not verified in this process never has a
// location (src/store/lazy-store.ts contentFile), and one the cache drops loses it under
// the same lock the guard answers under, so nothing evicted is opened here afterwards.
// The descriptor cap (atCapLocked) turns the content it lets go of back into a location of
// the same bytes, so a node C held once is reopened here too.

namespace narfs {

bool Session::holdsLocked(const std::string& path) const {
  auto f = files_.find(path);
  return f != files_.end() && !f->second.expired();
}

bool Session::atCapLocked() {
  if (opts_.maxFiles == 0 || files_.size() < opts_.maxFiles) return false;
  auto prune = [this]() {
    for (auto f = files_.begin(); f != files_.end();) {
      if (f->second.expired()) f = files_.erase(f);
      else ++f;
    }
  };
  prune();
  if (files_.size() < opts_.maxFiles) return false;
  // At the cap: let go of the content of nodes no kernel file has open (their descriptors
  // close with the last reference), about an eighth of the cap at a time so the scan is
  // paid rarely. Each keeps its place as a location, so its next OPEN reopens the file
  // here (openLocation) instead of going to JS: a working set larger than the cap (a
  // re-read of 17k headers under a 20k descriptor limit) would otherwise send thousands of
  // opens to JS on every pass. An eviction drops the location with the content
  // (dropContentLocked). A node an earlier process's backing id may still be in use by
  // (restart) keeps its content. Not rescanned while nothing was released since a scan
  // that freed too little.
  if (releasesSinceReclaim_ == 0 && !reclaimFreed_) return true;
  const size_t want = opts_.maxFiles / 8 + 1;
  size_t dropped = 0;
  for (auto& [id, n] : nodes_.cold()) {
    if (dropped >= want) break;
    if (!n.file || n.ptHandles > 0 || n.cachedHandles > 0 || adoptedIds_.count(id) != 0) continue;
    Location& l = locations_[id];
    l.path = n.file->path;
    l.offset = n.fileOffset;
    l.size = n.fileSize;
    l.total = n.file->size;
    l.seq = ++locationSeq_;
    n.file.reset();
    retireBacking(id, n);
    dropped++;
  }
  const size_t before = files_.size();
  prune();
  reclaimFreed_ = before - files_.size() >= want / 2;
  releasesSinceReclaim_ = 0;
  contentReclaimed_ += dropped;
  return files_.size() >= opts_.maxFiles;
}

void Session::setLocation(uint64_t nodeid, const std::string& path, uint64_t offset, uint64_t size,
                          uint64_t fileTotal) {
  if (offset > fileTotal || size > fileTotal - offset) return;
  std::unique_lock<std::shared_mutex> g(mu_);
  Location& l = locations_[nodeid];
  l.path = path;
  l.offset = offset;
  l.size = size;
  l.total = fileTotal;
  l.seq = ++locationSeq_;
}

bool Session::evictContent(const std::string& path) {
  std::unique_lock<std::shared_mutex> g(mu_);
  if (inUseLocked(path)) return false;
  dropContentLocked(path);
  return true;
}

bool Session::openLocation(uint64_t nodeid) {
  Location loc;
  std::shared_ptr<FileRef> ref;
  {
    std::unique_lock<std::shared_mutex> g(mu_);
    auto l = locations_.find(nodeid);
    if (l == locations_.end()) return false;
    loc = l->second;
    auto f = files_.find(loc.path);
    if (f != files_.end()) ref = f->second.lock();
    if (!ref && atCapLocked()) {
      locationFallbacks_++;
      return false;
    }
  }
  auto fail = [&]() {
    std::unique_lock<std::shared_mutex> g(mu_);
    auto l = locations_.find(nodeid);
    if (l != locations_.end() && l->second.seq == loc.seq) locations_.erase(l);
    locationFallbacks_++;
    return false;
  };
  if (!ref) {
    int f = open(loc.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (f < 0) return fail();
    struct stat st;
    if (fstat(f, &st) != 0 || !backingCovers(st, loc.offset, loc.size, loc.total)) {
      close(f);
      return fail();
    }
    ref = std::make_shared<FileRef>(f, loc.path, loc.total);
  }
  if (ref->size != loc.total) return fail();
  std::unique_lock<std::shared_mutex> g(mu_);
  auto l = locations_.find(nodeid);
  // Dropped (evicted, damaged) or replaced while the file was being opened: not this one.
  if (l == locations_.end() || l->second.seq != loc.seq) return false;
  auto it = nodes_.find(nodeid);
  if (it == nodes_.end()) return false;
  locations_.erase(l);
  Node& n = it->second;
  if (n.file) return true;  // JS pushed it meanwhile
  if (holdsLocked(loc.path)) {
    ref = files_[loc.path].lock();  // another open of this blob won the race: share it
  } else {
    if (atCapLocked()) {
      locationFallbacks_++;
      return false;
    }
    files_[loc.path] = ref;
  }
  retireBacking(nodeid, n);
  n.file = ref;
  n.fileOffset = loc.offset;
  n.fileSize = loc.size;
  locationOpens_++;
  return true;
}

}  // namespace narfs
