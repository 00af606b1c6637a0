// session.cc: see session.h. Mounting follows what libfuse's lib/mount.c and go-fuse's
// fuse/mount_linux.go do: as root, mount(2) with "fd=N,rootmode=…,user_id=…,group_id=…";
// otherwise fusermount3 with _FUSE_COMMFD, receiving the device fd over SCM_RIGHTS.
#include "session.h"

#include <errno.h>
#include <malloc.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "adopt.h"
#include "dirent_pack.h"

extern char** environ;

namespace narfs {

namespace {

constexpr size_t kInBuf = Session::kMaxWrite + 64 * 1024;
constexpr uint32_t kOurMinor = 40;

uint64_t ttlSeconds(double t) { return t <= 0 ? 0 : (t > 1e12 ? 1000000000000ULL : static_cast<uint64_t>(t)); }
uint32_t ttlNsec(double t) {
  if (t <= 0 || t > 1e12) return 0;
  double frac = t - std::floor(t);
  return static_cast<uint32_t>(frac * 1e9);
}

std::string errnoText(const char* what, int e) { return std::string(what) + ": " + std::strerror(e); }

}  // namespace

FileRef::~FileRef() {
  if (fd >= 0) close(fd);
}

namespace {
// Fibonacci hashing: nodeids are mostly consecutive numbers.
inline size_t hashId(uint64_t id) {
  uint64_t h = id * 0x9E3779B97F4A7C15ULL;
  return static_cast<size_t>(h ^ (h >> 29));
}
constexpr size_t kMinSlots = 1024;
}  // namespace

size_t NodeTable::slotOf(uint64_t id) const {
  size_t i = hashId(id) & mask_;
  while (slots_[i].nodeid != 0 && slots_[i].nodeid != id) i = (i + 1) & mask_;
  return i;
}

const HotNode* NodeTable::hot(uint64_t id) const {
  if (slots_.empty() || id == 0) return nullptr;
  const HotNode& h = slots_[slotOf(id)];
  return h.nodeid == id ? &h : nullptr;
}

HotNode& NodeTable::hotOrMake(uint64_t id) {
  if (slots_.empty()) rehash(kMinSlots);
  size_t i = slotOf(id);
  if (slots_[i].nodeid == id) return slots_[i];
  if ((live_ + 1) * 5 > slots_.size() * 4) {
    rehash(slots_.size() * 2);
    i = slotOf(id);
  }
  slots_[i] = HotNode{id, 0, 0, 0};
  live_++;
  return slots_[i];
}

NodeTable::iterator NodeTable::find(uint64_t id) {
  auto it = cold_.find(id);
  if (it != cold_.end() || hot(id) == nullptr) return it;
  return cold_.emplace(id, Node()).first;
}

std::pair<NodeTable::iterator, bool> NodeTable::emplace(uint64_t id, Node n) {
  hotOrMake(id);
  return cold_.emplace(id, std::move(n));
}

Node* NodeTable::peek(uint64_t id) {
  auto it = cold_.find(id);
  return it == cold_.end() ? nullptr : &it->second;
}

bool NodeTable::erase(uint64_t id) {
  if (slots_.empty() || id == 0) return false;
  size_t i = slotOf(id);
  if (slots_[i].nodeid != id) return false;
  // Backward-shift deletion (Knuth 6.4 Algorithm R): no tombstones.
  size_t j = i;
  for (;;) {
    slots_[i].nodeid = 0;
    size_t home;
    do {
      j = (j + 1) & mask_;
      if (slots_[j].nodeid == 0) goto done;
      home = hashId(slots_[j].nodeid) & mask_;
    } while (i <= j ? (i < home && home <= j) : (i < home || home <= j));
    slots_[i] = slots_[j];
    i = j;
  }
done:
  live_--;
  cold_.erase(id);
  links_.erase(id);
  dirEnds_.erase(id);
  return true;
}

void NodeTable::rehash(size_t cap) {
  std::vector<HotNode> old;
  old.swap(slots_);
  slots_.assign(cap, HotNode{0, 0, 0, 0});
  slots_.shrink_to_fit();
  mask_ = cap - 1;
  for (const HotNode& h : old) {
    if (h.nodeid != 0) slots_[slotOf(h.nodeid)] = h;
  }
}

void NodeTable::shrink() {
  size_t cap = kMinSlots;
  while (live_ * 5 > cap * 2) cap *= 2;  // at most 2/5 full after a shrink
  if (cap < slots_.size()) rehash(cap);
  cold_.rehash(0);
  links_.rehash(0);
  dirEnds_.rehash(0);
}

size_t NodeTable::bytes() const {
  // Side entries: an unordered_map node (next pointer, key, value) and a bucket pointer.
  size_t b = slots_.capacity() * sizeof(HotNode);
  b += cold_.size() * (sizeof(Node) + 24) + cold_.bucket_count() * sizeof(void*);
  b += links_.size() * (sizeof(std::string) + 24) + links_.bucket_count() * sizeof(void*);
  b += dirEnds_.size() * 32 + dirEnds_.bucket_count() * sizeof(void*);
  return b;
}

Session::Session(SessionOptions opts, Post post) : opts_(std::move(opts)), post_(std::move(post)) {}

Session::~Session() {
  for (int f : fds_) close(f);
  if (journalFd_ >= 0) close(journalFd_);
}

int Session::fd(int ch) const {
  std::lock_guard<std::mutex> g(fdsMu_);
  if (ch < 0 || static_cast<size_t>(ch) >= fds_.size()) return -1;
  return fds_[ch];
}

void Session::mountSyscall() {
  int f = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (f < 0) throw std::runtime_error(errnoText("open /dev/fuse", errno));
  std::string data = "fd=" + std::to_string(f) + ",rootmode=40000,user_id=" + std::to_string(getuid()) +
                     ",group_id=" + std::to_string(getgid()) + ",default_permissions";
  if (opts_.allowOther) data += ",allow_other";
  std::string type = "fuse." + opts_.fsname;
  if (mount(opts_.fsname.c_str(), opts_.mountpoint.c_str(), type.c_str(), MS_NOSUID | MS_NODEV | MS_RDONLY,
            data.c_str()) != 0) {
    int e = errno;
    close(f);
    throw std::runtime_error(errnoText(("mount " + opts_.mountpoint).c_str(), e));
  }
  fds_.push_back(f);
}

void Session::mountFusermount() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw std::runtime_error(errnoText("socketpair", errno));
  std::string o = "fsname=" + opts_.fsname + ",subtype=" + opts_.fsname + ",ro,nosuid,nodev,default_permissions";
  if (opts_.allowOther) o += ",allow_other";
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; e++) {
    if (std::strncmp(*e, "_FUSE_COMMFD=", 13) != 0) env.emplace_back(*e);
  }
  env.emplace_back("_FUSE_COMMFD=3");
  std::vector<char*> envp;
  for (auto& s : env) envp.push_back(s.data());
  envp.push_back(nullptr);
  // fusermount3 (3.14) takes no "--": `fusermount3 -o OPTS MOUNTPOINT`.
  std::string prog = "fusermount3", dashO = "-o", mnt = opts_.mountpoint;
  char* argv[] = {prog.data(), dashO.data(), o.data(), mnt.data(), nullptr};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, sv[1], 3);  // dup2 clears FD_CLOEXEC on fd 3
  pid_t pid;
  int rc = posix_spawnp(&pid, "fusermount3", &fa, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&fa);
  close(sv[1]);
  if (rc != 0) {
    close(sv[0]);
    throw std::runtime_error(errnoText("spawning fusermount3", rc));
  }
  char byte;
  struct iovec iov = {&byte, 1};
  alignas(struct cmsghdr) char ctrl[CMSG_SPACE(sizeof(int))];
  struct msghdr msg;
  std::memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctrl;
  msg.msg_controllen = sizeof ctrl;
  ssize_t n;
  do {
    n = recvmsg(sv[0], &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  int got = -1;
  if (n > 0) {
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof(int))) {
        std::memcpy(&got, CMSG_DATA(c), sizeof(int));
      }
    }
  }
  close(sv[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (got < 0) throw std::runtime_error("fusermount3 did not pass a FUSE device descriptor (exit status " +
                                        std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) + ")");
  fds_.push_back(got);
}

void Session::start() {
  openBackingJournal();  // session_passthrough.cc
  if (!opts_.adoptFds.empty()) return adopt();  // restart: adopt.cc
  if (opts_.useFusermount) mountFusermount();
  else mountSyscall();
  if (opts_.uring) uring_ = std::make_unique<UringTransport>(fds_[0], opts_.uringDepth, kMaxWrite);
  liveReaders_ = 1;
  auto self = shared_from_this();
  std::thread([self] { self->reader(0); }).detach();
}

int Session::send(int ch, uint64_t unique, int err, const void* a, size_t alen, const void* b, size_t blen) {
  const bool ring = UringTransport::owns(ch);  // a request fetched from an io_uring entry
  int f = ring ? -1 : fd(ch);
  if (f < 0 && !ring) return EBADF;
  fuse_out_header h;
  h.error = err == 0 ? 0 : -err;
  h.unique = uniqueFromJs(unique);
  struct iovec iov[3];
  int n = 0;
  iov[n++] = {&h, sizeof h};
  size_t total = sizeof h;
  if (err == 0 && alen > 0) {
    iov[n++] = {const_cast<void*>(a), alen};
    total += alen;
  }
  if (err == 0 && blen > 0) {
    iov[n++] = {const_cast<void*>(b), blen};
    total += blen;
  }
  h.len = static_cast<uint32_t>(total);
  if (ring) return uring_ ? uring_->reply(ch, h.unique, iov, n) : EBADF;
  ssize_t w;
  do {
    w = writev(f, iov, n);
  } while (w < 0 && errno == EINTR);
  // ENOENT: the request was interrupted and is gone; nothing to do.
  return w < 0 ? errno : 0;
}

fuse_attr Session::makeAttr(uint64_t nodeid, uint32_t mode, uint64_t size, uint32_t nlink) const {
  fuse_attr a;
  std::memset(&a, 0, sizeof a);
  a.ino = nodeid;
  a.size = size;
  a.blocks = (size + 511) / 512;
  a.atime = a.mtime = a.ctime = 1;  // Nix's canonical mtime
  a.mode = mode;
  a.nlink = nlink;
  a.blksize = 4096;
  return a;
}

void Session::record(uint64_t nodeid, const fuse_attr& attr) {
  std::unique_lock<std::shared_mutex> g(mu_);
  HotNode& n = nodes_.hotOrMake(nodeid);
  n.size = attr.size;
  n.mode = attr.mode;
  n.nlink = attr.nlink;
}

int Session::replyErr(int ch, uint64_t unique, int err) { return send(ch, unique, err <= 0 ? EIO : err, nullptr, 0); }

int Session::replyEntry(int ch, uint64_t unique, uint64_t nodeid, uint32_t mode, uint64_t size, uint32_t nlink,
                        double entryTtl) {
  fuse_entry_out e;
  std::memset(&e, 0, sizeof e);
  e.nodeid = nodeid;
  e.entry_valid = ttlSeconds(entryTtl);
  e.entry_valid_nsec = ttlNsec(entryTtl);
  if (nodeid != 0) {
    e.attr_valid = ttlSeconds(opts_.attrTtl);
    e.attr_valid_nsec = ttlNsec(opts_.attrTtl);
    e.attr = makeAttr(nodeid, mode, size, nlink);
    record(nodeid, e.attr);
  }
  return send(ch, unique, 0, &e, sizeof e);
}

int Session::replyAttr(int ch, uint64_t unique, uint64_t nodeid, uint32_t mode, uint64_t size, uint32_t nlink) {
  fuse_attr_out o;
  std::memset(&o, 0, sizeof o);
  o.attr_valid = ttlSeconds(opts_.attrTtl);
  o.attr_valid_nsec = ttlNsec(opts_.attrTtl);
  o.attr = makeAttr(nodeid, mode, size, nlink);
  record(nodeid, o.attr);
  return send(ch, unique, 0, &o, sizeof o);
}

int Session::replyOpen(int ch, uint64_t unique, uint64_t nodeid, uint64_t fh, uint32_t openFlags) {
  return sendOpen(ch, unique, nodeid, fh, openFlags, false);
}

int Session::replyData(int ch, uint64_t unique, const uint8_t* data, size_t len) {
  return send(ch, unique, 0, data, len);
}

int Session::replyReadlink(int ch, uint64_t unique, uint64_t nodeid, const uint8_t* target, size_t len) {
  {
    std::unique_lock<std::shared_mutex> g(mu_);
    if (nodes_.hot(nodeid) != nullptr) nodes_.links()[nodeid].assign(reinterpret_cast<const char*>(target), len);
  }
  return send(ch, unique, 0, target, len);
}

int Session::replyStatfs(int ch, uint64_t unique, uint64_t blocks, uint64_t files, uint32_t bsize,
                         uint32_t namemax) {
  fuse_statfs_out o;
  std::memset(&o, 0, sizeof o);
  o.st.blocks = blocks;
  o.st.files = files;
  o.st.bsize = bsize;
  o.st.frsize = bsize;
  o.st.namelen = namemax;
  return send(ch, unique, 0, &o, sizeof o);
}

size_t Session::replyDir(int ch, uint64_t unique, bool plus, uint32_t size, const std::vector<DirentIn>& entries,
                         const std::vector<Bytes>* targets, uint64_t dirNodeid, uint64_t eofOffset, int* err) {
  uint32_t cap = size > kMaxWrite ? kMaxWrite : size;
  std::vector<uint8_t> out(cap);
  size_t used = 0;
  size_t n = packDirents(plus, entries.data(), entries.size(), ttlSeconds(opts_.entryTtl), ttlSeconds(opts_.attrTtl),
                         out.data(), cap, &used);
  if (plus || eofOffset != 0) {
    std::unique_lock<std::shared_mutex> g(mu_);
    for (size_t i = 0; plus && i < n; i++) {
      if (entries[i].nodeid == 0) continue;
      const uint64_t id = entries[i].nodeid;
      HotNode& node = nodes_.hotOrMake(id);
      node.size = entries[i].attr.size;
      node.mode = entries[i].attr.mode;
      node.nlink = entries[i].attr.nlink;
      if (targets != nullptr && i < targets->size() && (*targets)[i].data != nullptr) {
        // emplace: a target already recorded stays.
        nodes_.links().emplace(id, std::string(reinterpret_cast<const char*>((*targets)[i].data), (*targets)[i].len));
      }
    }
    if (eofOffset != 0 && nodes_.hot(dirNodeid) != nullptr) nodes_.dirEnds()[dirNodeid] = eofOffset;
  }
  *err = send(ch, unique, 0, out.data(), used);
  return n;
}

bool Session::setContent(uint64_t nodeid, const std::string& path, uint64_t offset, uint64_t size,
                         uint64_t fileTotal) {
  if (offset > fileTotal || size > fileTotal - offset) return false;
  std::shared_ptr<FileRef> ref;
  {
    std::unique_lock<std::shared_mutex> g(mu_);
    auto it = files_.find(path);
    if (it != files_.end()) ref = it->second.lock();
    if (!ref && atCapLocked()) return false;  // JS serves it (the descriptor cap)
  }
  if (!ref) {
    int f = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (f < 0) return false;
    struct stat st;
    if (fstat(f, &st) != 0 || !backingCovers(st, offset, size, fileTotal)) {
      close(f);
      return false;
    }
    ref = std::make_shared<FileRef>(f, path, fileTotal);
  }
  if (ref->size != fileTotal) return false;
  std::unique_lock<std::shared_mutex> g(mu_);
  // Another thread (openLocation, a second setContent) may have opened the same blob while
  // the lock was down: share its descriptor, so files_ counts every one C holds (the cap).
  if (auto held = files_[path].lock()) {
    ref = held;
  } else {
    if (atCapLocked()) return false;
    files_[path] = ref;
  }
  auto it = nodes_.find(nodeid);
  if (it == nodes_.end()) return false;
  if (it->second.file != ref) retireBacking(nodeid, it->second);
  it->second.file = ref;
  it->second.fileOffset = offset;
  it->second.fileSize = size;
  return true;
}

bool Session::contentInUse(const std::string& path) {
  std::shared_lock<std::shared_mutex> g(mu_);
  return inUseLocked(path);
}

bool Session::inUseLocked(const std::string& path) const {
  // A node's file keeps its FileRef alive and files_ names the one ref per path (setContent
  // and openLocation share a held one), so no held ref means no node has this file.
  if (!holdsLocked(path)) return false;
  for (const auto& [id, n] : nodes_.cold()) {
    if (n.file && n.file->path == path && (n.ptHandles > 0 || n.cachedHandles > 0)) return true;
    // An earlier process's id (restart): files of it may be open; dropping the content
    // would retire the id and fail new opens until the kernel forgets the node.
    if (n.file && n.file->path == path && adoptedIds_.count(id) != 0) return true;
  }
  return false;
}

void Session::dropContent(const std::string& path) {
  std::unique_lock<std::shared_mutex> g(mu_);
  dropContentLocked(path);
}

void Session::dropContentLocked(const std::string& path) {
  for (auto l = locations_.begin(); l != locations_.end();) {
    if (l->second.path == path) l = locations_.erase(l);
    else ++l;
  }
  if (!holdsLocked(path)) {  // no node has it (see inUseLocked)
    files_.erase(path);
    return;
  }
  for (auto& [id, n] : nodes_.cold()) {
    if (n.file && n.file->path == path) {
      n.file.reset();
      retireBacking(id, n);
      // The bytes behind an earlier process's id of this node are not handed out again.
      auto a = adoptedIds_.find(id);
      if (a != adoptedIds_.end() && !a->second.second) {
        a->second.second = true;
        journalBacking(kBackingRetired, id, a->second.first);
      }
    }
  }
  files_.erase(path);
}

void Session::forgetNode(uint64_t nodeid, bool evicted) {
  bool trim = false;
  {
    std::unique_lock<std::shared_mutex> g(mu_);
    if (evicted && nodeid < opts_.ioUnknownBelow) {
      // The kernel evicted an inode of an earlier process: none of its files is open, so
      // that process's id can go and the node's io mode is this process's from now on.
      auto a = adoptedIds_.find(nodeid);
      if (a != adoptedIds_.end()) {
        closeId(nodeid, a->second.first);
        adoptedIds_.erase(a);
      }
      settled_.insert(nodeid);
    }
    locations_.erase(nodeid);
    if (nodes_.hot(nodeid) == nullptr) return;
    nodesPeak_ = std::max(nodesPeak_, nodes_.size());
    Node* cold = nodes_.peek(nodeid);
    std::string path;
    if (cold != nullptr) {
      // The kernel forgot the inode, so no file of it is open: its backing id can go.
      closeBacking(nodeid, *cold);
      if (cold->file) path = cold->file->path;
    }
    nodes_.erase(nodeid);
    if (!path.empty()) {
      auto f = files_.find(path);
      if (f != files_.end() && f->second.expired()) files_.erase(f);
    }
    // The kernel forgot most of a large table (drop_caches, memory pressure): shrink the
    // bucket array and give the freed nodes back to the system (glibc keeps freed small
    // chunks in its arenas otherwise, so RSS would stay at the peak). Rare: at most once
    // per fall to a quarter of the peak.
    if (nodesPeak_ >= kTrimFromNodes && nodes_.size() * 4 <= nodesPeak_) {
      nodes_.shrink();
      nodesPeak_ = nodes_.size();
      trim = true;
    }
  }
  if (trim) malloc_trim(0);
}

Stats Session::stats() {
  Stats s;
  s.toJs = toJs_.load();
  for (int i = 0; i < 64; i++) s.toJsByOpcode[i] = toJsOps_[i].load();
  for (int i = 0; i < 64; i++) s.inCByOpcode[i] = inCOps_[i].load();
  s.inC = inC_.load();
  s.readsInC = readsInC_.load();
  s.bytesInC = bytesInC_.load();
  s.passthroughEnabled = ptEnabled_.load();
  s.passthroughOpens = ptOpens_.load();
  s.backingLive = backingLive_.load();
  s.passthroughFallbacks = ptFallbacks_.load();
  s.passthroughConflicts = ptConflicts_.load();
  s.locationOpens = locationOpens_.load();
  s.locationFallbacks = locationFallbacks_.load();
  std::shared_lock<std::shared_mutex> g(mu_);
  s.nodes = nodes_.size();
  for (const auto& [p, w] : files_) s.heldFiles += w.expired() ? 0 : 1;
  s.contentReclaimed = contentReclaimed_;
  s.backingAdopted = adoptedIds_.size();
  s.backingJournalFailed = journalFailed_;
  s.uringActive = uring_ != nullptr && uringError_ == 0 && (initFlags_ & FUSE_OVER_IO_URING) != 0;
  s.uringQueues = uring_ ? static_cast<uint32_t>(uring_->queues()) : 0;
  s.uringRequests = uring_ ? uring_->served() : 0;
  s.uringError = uringError_;
  return s;
}

bool Session::init(int ch, uint8_t* buf, size_t bufsize) {
  for (;;) {
    ssize_t n = read(fd(ch), buf, bufsize);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == ENOENT) continue;
      return false;
    }
    Request r;
    if (decodeRequest(buf, static_cast<size_t>(n), &r) != DecodeStatus::Ok || r.opcode != FUSE_INIT) {
      if (r.unique != 0) replyErr(ch, r.unique, EIO);
      continue;
    }
    init_out o;
    std::memset(&o, 0, sizeof o);
    o.major = FUSE_KERNEL_VERSION;
    o.minor = kOurMinor;
    if (r.major < 7) {
      replyErr(ch, r.unique, EPROTO);
      return false;
    }
    if (r.major > 7) {  // the kernel will ask again with 7
      send(ch, r.unique, 0, &o, 8);
      continue;
    }
    minor_ = r.minor < kOurMinor ? r.minor : kOurMinor;
    o.minor = minor_;
    const uint64_t offered = r.initFlags;
    // READDIRPLUS for every page, not only the first (no READDIRPLUS_AUTO, fs/fuse/readdir.c
    // fuse_use_readdirplus): entries of later pages of a large directory would otherwise
    // each cost a LOOKUP round trip to JS when stat'ed.
    uint64_t want = FUSE_ASYNC_READ | FUSE_DO_READDIRPLUS | FUSE_PARALLEL_DIROPS |
                    FUSE_CACHE_SYMLINKS | FUSE_MAX_PAGES | FUSE_ABORT_ERROR | FUSE_INIT_EXT;
    want |= wantPassthrough(offered);
    if (opts_.uring) want |= FUSE_OVER_IO_URING;
    uint64_t flags = want & offered;
    if (flags & FUSE_PASSTHROUGH) {
      o.max_stack_depth = 1;
      ptEnabled_ = true;
    }
    o.flags = static_cast<uint32_t>(flags);
    o.flags2 = static_cast<uint32_t>(flags >> 32);
    o.max_readahead = r.maxReadahead;
    o.max_background = 64;
    o.congestion_threshold = 48;
    o.max_write = kMaxWrite;
    o.time_gran = 1;
    o.max_pages = kMaxWrite / 4096;
    initFlags_ = flags | (offered & FUSE_PASSTHROUGH ? (1ULL << 63) : 0);  // bit 63: passthrough offered
    size_t outSize = minor_ < 5 ? 8 : (minor_ < 23 ? 24 : sizeof o);
    if (send(ch, r.unique, 0, &o, outSize) != 0) return false;
    return true;
  }
}

void Session::reader(int ch) {
  std::vector<uint8_t> in(kInBuf);
  std::vector<uint8_t> out(sizeof(fuse_out_header) + kMaxWrite);
  int stopErr = 0;
  if (ch == 0 && !adopted_) {
    if (!init(0, in.data(), in.size())) {
      stopErr = errno == ENODEV || errno == ECONNABORTED ? 0 : errno;
      if (liveReaders_.fetch_sub(1) == 1) {
        auto* ev = new JsEvent();
        ev->kind = kEventClosed;
        ev->a = static_cast<uint64_t>(stopErr);
        if (!post_(ev)) delete ev;
      }
      return;
    }
    // io_uring: one /dev/fuse reader is left, for FORGET and INTERRUPT (never sent through
    // the ring) and for requests before every queue is registered.
    int extra = opts_.threads > 1 && !uring_ ? opts_.threads - 1 : 0;
    auto self = shared_from_this();
    for (int i = 0; i < extra; i++) {
      int nf = open("/dev/fuse", O_RDWR | O_CLOEXEC);
      if (nf < 0) break;
      uint32_t src = static_cast<uint32_t>(fd(0));
      if (ioctl(nf, kIocClone, &src) != 0) {
        close(nf);
        break;
      }
      int idx;
      {
        std::lock_guard<std::mutex> g(fdsMu_);
        fds_.push_back(nf);
        idx = static_cast<int>(fds_.size()) - 1;
      }
      liveReaders_++;
      std::thread([self, idx] { self->reader(idx); }).detach();
    }
    if (uring_) {
      // The kernel holds new requests until every CPU queue has an entry (or a REGISTER
      // failed, which sends it back to /dev/fuse): register them all before Ready.
      if ((initFlags_ & FUSE_OVER_IO_URING) == 0) uringError_ = EOPNOTSUPP;
      else uringError_ = uring_->start(self, 10000);
    }
    // Ready once the clones exist: JS stores every descriptor (adopt.h) on this event.
    auto* ready = new JsEvent();
    ready->kind = kEventReady;
    ready->a = minor_;
    ready->b = initFlags_;
    if (!post_(ready)) delete ready;
  }
  const int f = fd(ch);
  for (;;) {
    ssize_t n = read(f, in.data(), in.size());
    if (n < 0) {
      int e = errno;
      if (e == EINTR || e == EAGAIN || e == ENOENT) continue;
      stopErr = (e == ENODEV || e == ECONNABORTED) ? 0 : e;
      break;
    }
    if (ch < 16) busySince_[ch] = monotonicMs();  // watchdog.cc
    handle(ch, in.data(), static_cast<size_t>(n), out);
    if (ch < 16) busySince_[ch] = 0;
  }
  if (uring_) uring_->connectionGone();
  readerStopped(stopErr);
}

void Session::readerStopped(int stopErr) {
  if (liveReaders_.fetch_sub(1) == 1) {
    auto* ev = new JsEvent();
    ev->kind = kEventClosed;
    ev->a = static_cast<uint64_t>(stopErr);
    if (!post_(ev)) delete ev;
  }
}

void Session::handle(int ch, const uint8_t* buf, size_t len, std::vector<uint8_t>& out) {
  Request r;
  DecodeStatus st = decodeRequest(buf, len, &r);
  if (st != DecodeStatus::Ok) {
    if (st == DecodeStatus::BadBody && r.unique != 0) replyErr(ch, r.unique, EINVAL);
    return;
  }
  if (fastPath(ch, r, out)) {
    inC_++;
    inCOps_[r.opcode < 64 ? r.opcode : 0]++;
    return;
  }
  toJs(ch, r);
}

bool Session::fastPath(int ch, const Request& r, std::vector<uint8_t>& out) {
  switch (r.opcode) {
    case FUSE_GETATTR: {
      std::shared_lock<std::shared_mutex> g(mu_);
      const HotNode* h = nodes_.hot(r.nodeid);
      if (h == nullptr || h->mode == 0) return false;
      fuse_attr_out o;
      std::memset(&o, 0, sizeof o);
      o.attr_valid = ttlSeconds(opts_.attrTtl);
      o.attr_valid_nsec = ttlNsec(opts_.attrTtl);
      o.attr = makeAttr(r.nodeid, h->mode, h->size, h->nlink);
      g.unlock();
      send(ch, r.unique, 0, &o, sizeof o);
      return true;
    }
    case FUSE_READLINK: {
      std::shared_lock<std::shared_mutex> g(mu_);
      auto it = nodes_.links().find(r.nodeid);
      if (it == nodes_.links().end()) return false;
      std::string t = it->second;
      g.unlock();
      send(ch, r.unique, 0, t.data(), t.size());
      return true;
    }
    case FUSE_OPEN: {
      if ((r.flags & O_ACCMODE) != O_RDONLY || (r.flags & (O_CREAT | O_TRUNC)) != 0) {
        send(ch, r.unique, EROFS, nullptr, 0);
        return true;
      }
      {
        std::shared_lock<std::shared_mutex> g(mu_);
        if (nodes_.hot(r.nodeid) == nullptr) return false;
        const Node* n = nodes_.peek(r.nodeid);
        if (n == nullptr || !n->file) {
          g.unlock();
          // A location JS gave with the entry: opened here (session_passthrough.cc).
          if (!openLocation(r.nodeid)) return false;
        }
      }
      // Content dropped in between: the open is still C's (handle 0); its reads then go
      // to JS, which serves handle 0 by node.
      sendOpen(ch, r.unique, r.nodeid, 0, FOPEN_KEEP_CACHE, true);
      return true;
    }
    case FUSE_READ: {
      std::shared_ptr<FileRef> file;
      uint64_t off = 0, size = 0;
      {
        std::shared_lock<std::shared_mutex> g(mu_);
        const Node* n = nodes_.peek(r.nodeid);
        if (n == nullptr || !n->file) return false;
        file = n->file;
        off = n->fileOffset;
        size = n->fileSize;
      }
      uint64_t want = 0;
      if (r.offset < size) {
        want = size - r.offset;
        if (want > r.size) want = r.size;
        if (want > kMaxWrite) want = kMaxWrite;
      }
      // io_uring: straight into the entry's payload buffer (the reply is not copied again).
      uint8_t* dst = UringTransport::owns(ch) && uring_ ? uring_->payload(ch) : out.data();
      uint64_t done = 0;
      while (done < want) {
        ssize_t n = pread(file->fd, dst + done, want - done, static_cast<off_t>(off + r.offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        done += static_cast<uint64_t>(n);
      }
      if (done < want) {
        // The cache file is shorter than what was verified: stop serving it from here.
        std::unique_lock<std::shared_mutex> g(mu_);
        Node* n = nodes_.peek(r.nodeid);
        if (n != nullptr) n->file.reset();
        return false;
      }
      readsInC_++;
      bytesInC_ += done;
      send(ch, r.unique, 0, dst, done);
      return true;
    }
    case FUSE_OPENDIR: {
      open_out o;
      std::memset(&o, 0, sizeof o);
      // The store root grows and shrinks (lookups, registrations, a slice's refresh): the
      // kernel must list it afresh on each open. Store paths' directories never change.
      o.open_flags = r.nodeid == FUSE_ROOT_ID ? 0 : FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR;
      send(ch, r.unique, 0, &o, sizeof o);
      return true;
    }
    case FUSE_FLUSH:
      // Opens carry FOPEN_NOFLUSH; a FLUSH still comes for a file opened under an earlier
      // daemon (restart). ENOSYS makes the kernel stop sending FLUSH on this connection
      // (fs/fuse/file.c fuse_flush sets fc->no_flush) and close() still returns 0.
      send(ch, r.unique, ENOSYS, nullptr, 0);
      return true;
    case FUSE_RELEASEDIR:
    case FUSE_FSYNC:
    case FUSE_FSYNCDIR:
      send(ch, r.unique, 0, nullptr, 0);
      return true;
    case FUSE_RELEASE: {
      {
        std::unique_lock<std::shared_mutex> g(mu_);
        countRelease(r.nodeid, r.fh);
      }
      send(ch, r.unique, 0, nullptr, 0);
      // A JS handle is also released in JS (no second reply).
      return r.fh == 0 || r.fh == kPassthroughFh;
    }
    case FUSE_GETXATTR:
      send(ch, r.unique, ENODATA, nullptr, 0);
      return true;
    case FUSE_LISTXATTR: {
      if (r.size == 0) {
        fuse_getxattr_out o;
        std::memset(&o, 0, sizeof o);
        send(ch, r.unique, 0, &o, sizeof o);
      } else {
        send(ch, r.unique, 0, nullptr, 0);
      }
      return true;
    }
    case FUSE_ACCESS: {
      if (r.flags & W_OK) {
        send(ch, r.unique, EROFS, nullptr, 0);
        return true;
      }
      std::shared_lock<std::shared_mutex> g(mu_);
      const HotNode* h = nodes_.hot(r.nodeid);
      if (h == nullptr || h->mode == 0) return false;
      bool ok = !(r.flags & X_OK) || (h->mode & 0111) != 0;
      g.unlock();
      send(ch, r.unique, ok ? 0 : EACCES, nullptr, 0);
      return true;
    }
    case FUSE_SETATTR:
    case FUSE_SYMLINK:
    case FUSE_MKNOD:
    case FUSE_MKDIR:
    case FUSE_UNLINK:
    case FUSE_RMDIR:
    case FUSE_RENAME:
    case FUSE_RENAME2:
    case FUSE_LINK:
    case FUSE_WRITE:
    case FUSE_SETXATTR:
    case FUSE_REMOVEXATTR:
    case FUSE_CREATE:
    case FUSE_FALLOCATE:
    case FUSE_COPY_FILE_RANGE:
      send(ch, r.unique, EROFS, nullptr, 0);
      return true;
    case FUSE_DESTROY:
      send(ch, r.unique, 0, nullptr, 0);
      return true;
    case FUSE_READDIR:
    case FUSE_READDIRPLUS: {
      // The read after a directory's last entry (every listing ends with one).
      std::shared_lock<std::shared_mutex> g(mu_);
      auto it = nodes_.dirEnds().find(r.nodeid);
      if (it == nodes_.dirEnds().end() || it->second == 0 || r.offset < it->second) return false;
      g.unlock();
      send(ch, r.unique, 0, nullptr, 0);
      return true;
    }
    case FUSE_LOOKUP:
    case FUSE_FORGET:
    case FUSE_BATCH_FORGET:
    case FUSE_STATFS:
    case FUSE_INTERRUPT:
      return false;
    default:
      // GETLK/SETLK (the kernel then locks locally), LSEEK, IOCTL, POLL, BMAP, INIT again, …
      send(ch, r.unique, ENOSYS, nullptr, 0);
      return true;
  }
}

void Session::toJs(int ch, const Request& r) {
  auto* ev = new JsEvent();
  ev->kind = static_cast<int32_t>(r.opcode);
  ev->ch = ch;
  ev->unique = uniqueToJs(r.unique);  // adopt.h: a resent request's bit 63
  ev->nodeid = r.nodeid;
  ev->uid = r.uid;
  ev->gid = r.gid;
  ev->pid = r.pid;
  ev->flags = r.flags;
  switch (r.opcode) {
    case FUSE_LOOKUP:
      ev->name.assign(reinterpret_cast<const char*>(r.name), r.namelen);
      break;
    case FUSE_FORGET:
      ev->a = r.nlookup;
      break;
    case FUSE_BATCH_FORGET:
      ev->forgets.reserve(static_cast<size_t>(r.forgetCount) * 2);
      for (uint32_t i = 0; i < r.forgetCount; i++) {
        uint64_t id, n;
        forgetAt(r, i, &id, &n);
        ev->forgets.push_back(id);
        ev->forgets.push_back(n);
      }
      break;
    case FUSE_INTERRUPT:
      ev->a = uniqueToJs(r.interruptUnique);
      break;
    default:
      ev->a = r.fh;
      ev->b = r.offset;
      ev->c = r.size;
      break;
  }
  toJs_++;
  toJsOps_[r.opcode < 64 ? r.opcode : 0]++;
  if (!post_(ev)) {
    bool needsReply = r.opcode != FUSE_FORGET && r.opcode != FUSE_BATCH_FORGET && r.opcode != FUSE_INTERRUPT &&
                      r.opcode != FUSE_RELEASE;
    if (needsReply) replyErr(ch, r.unique, EIO);
    delete ev;
  }
}

}  // namespace narfs
