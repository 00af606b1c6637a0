// session.h: Session, one FUSE connection served by native reader threads.
//
// Threads: reader 0 answers INIT, then clones the device fd (FUSE_DEV_IOC_CLONE) for the
// other readers. Each reader decodes its request (decodeRequest), answers at once what
// the node table already knows (attributes, symlink targets, opens and reads of files
// whose verified bytes lie in a cache file, directory opens, xattr probes, write attempts
// = EROFS) and hands everything else to JS through a thread-safe function; it never waits
// for JS. JS replies later, from the main thread, through the reply* methods, on the
// channel (cloned fd) the request came from: the kernel matches a reply to its request
// only on that fd.
//
// Node table invariant: an entry exists only for nodeids that JS handed to the kernel
// (entry, attr, readdirplus and readlink replies record what they sent) and disappears
// when JS says the kernel forgot the node (forgetNode). Content entries hold their own
// descriptor of the cache file (opened here by path, size checked against what JS says
// was verified), so a descriptor JS closes can never be read by mistake; a short pread
// drops the content and sends the read to JS, which finds the damage and refetches.
// A location JS gives with an entry (setLocation) is only a path: C opens it at OPEN
// (session_passthrough.cc openLocation), with the same size check, and holds at most
// opts.maxFiles cache files open in all.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <sys/stat.h>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "backing_journal.h"
#include "decode.h"
#include "fuse_abi.h"
#include "uring_transport.h"

namespace narfs {

// A request (or event) for JS. kind = opcode, or one of the Event values.
struct JsEvent {
  int32_t kind = 0;
  int32_t ch = 0;
  uint64_t unique = 0;
  uint64_t nodeid = 0;
  uint64_t a = 0;  // fh | nlookup | interrupted unique | minor
  uint64_t b = 0;  // offset | init flags
  uint64_t c = 0;  // size
  uint32_t flags = 0;
  uint32_t uid = 0, gid = 0, pid = 0;
  std::string name;
  std::vector<uint64_t> forgets;  // nodeid, nlookup pairs
};

enum Event : int32_t {
  kEventReady = -1,   // INIT answered: a = minor, b = negotiated flags
  kEventClosed = -2,  // the last reader stopped: a = errno that stopped it (0: unmounted)
};

struct SessionOptions {
  std::string mountpoint;
  std::string fsname = "narfs";
  bool allowOther = false;
  bool useFusermount = false;
  int threads = 4;
  double entryTtl = 86400;
  double attrTtl = 86400;
  // Ask for FUSE_PASSTHROUGH when the kernel offers it and the process has CAP_SYS_ADMIN.
  bool passthrough = true;
  // Restart without unmount (adopt.h): resume these /dev/fuse descriptors instead of
  // mounting; the INIT they negotiated.
  std::vector<int> adoptFds;
  uint32_t adoptMinor = 0;
  uint64_t adoptFlags = 0;
  // Passthrough across restarts (backing_journal.h; empty path: not kept). Every backing
  // id registered, retired or closed is appended to this file (valid length
  // backingJournalSize) before the reply that uses it; a resumed session gets the live
  // ids of the earlier processes (adoptedBacking), and treats nodeids below
  // ioUnknownBelow as holding kernel files of unknown io modes until the kernel forgets
  // them (forgetNode with evicted).
  struct AdoptedBacking {
    uint64_t nodeid;
    int32_t backingId;
    bool retired;
  };
  std::string backingJournal;
  uint64_t backingJournalSize = 0;
  std::vector<AdoptedBacking> adoptedBacking;
  uint64_t ioUnknownBelow = 0;
  // Transport (uring_transport.h): false = /dev/fuse reads and writes (the default); true =
  // FUSE over io_uring, asked for in INIT, with uringDepth entries per CPU queue. Whether
  // it took effect is in Stats (uringActive, uringError): the caller decides what a
  // refused io_uring means.
  bool uring = false;
  int uringDepth = 16;
  // Cache files C may hold open at once (FileRefs; 0: no cap). Past it, setContent and
  // C's own opens of a location (setLocation) refuse: JS serves those files.
  uint64_t maxFiles = 0;
};

// Whether a backing file just opened (its fstat `st`) can serve bytes [offset, offset +
// size) of a location whose file JS declared `total` bytes long: a regular file that holds
// the whole range and is no longer than `total`. So a blob (offset 0, size = total) must be
// exactly `total` bytes (a torn or replaced blob is refused, and JS serves the file), while
// a NAR staging file may still be shorter than its NAR: JS names a file of a NAR that is
// still streaming only once the verify worker wrote all of that file's bytes and their
// SHA-256 matched the signed index (materialiser.ts, readStreamed), and a staging file is
// written once, in order, so the bytes of the range never change afterwards.
inline bool backingCovers(const struct stat& st, uint64_t offset, uint64_t size, uint64_t total) {
  if (!S_ISREG(st.st_mode) || st.st_size < 0) return false;
  const uint64_t have = static_cast<uint64_t>(st.st_size);
  return have <= total && offset <= have && size <= have - offset;
}

struct FileRef {
  int fd;
  std::string path;
  uint64_t size;  // the total JS declared for the file (backingCovers held when it was opened)
  FileRef(int f, std::string p, uint64_t sz) : fd(f), path(std::move(p)), size(sz) {}
  ~FileRef();
};

// The cold part of a node: content and passthrough state, kept only for nodes that were
// opened or given content (NodeTable::find makes it on first use); most nodes of a walk
// never have one.
struct Node {
  std::shared_ptr<FileRef> file;
  uint64_t fileOffset = 0;
  uint64_t fileSize = 0;
  // Passthrough state (session_passthrough.cc). backingId: the id the kernel gave `file`
  // (0: none); retired: `file` was dropped or replaced while passthrough handles were open,
  // so the id is closed once the last of them is released. The handle counts are the
  // kernel's open files of this node by io mode: an inode with a passthrough file open
  // accepts only passthrough opens with the same backing, and one with a cached-io file
  // open refuses passthrough opens (fs/fuse/iomode.c fuse_file_io_open).
  int32_t backingId = 0;
  bool backingRetired = false;
  uint32_t ptHandles = 0;
  uint32_t cachedHandles = 0;
};

// The hot part of a node, one per nodeid JS handed to the kernel: the attributes JS sent, as
// makeAttr's arguments (every attribute of a node is makeAttr(nodeid, mode, size, nlink)).
// mode 0: no attributes known (a node of an earlier process made by an open). 24 bytes, in
// a flat table: a 100,000-file walk holds 100,000 of them.
struct HotNode {
  uint64_t nodeid;  // 0: empty slot
  uint64_t size;
  uint32_t mode;
  uint32_t nlink;
};

// The node table: hot nodes in one open-addressed array (linear probing on nodeid, at most
// 4/5 full, removal shifts the run back: no tombstones), and side tables only for the nodes
// that have something more: symlink targets (READLINK in C), the end offset of directories
// read to their end, and the cold part (Node). Invariant: a side entry exists only while
// the hot entry of its nodeid does (erase drops them all). Not thread-safe: Session::mu_
// guards it (shared for the const lookups, unique for everything else).
//
// find/end/emplace keep the interface of the unordered_map<nodeid, Node> this replaced
// (session_passthrough.cc uses it under mu_ unique): find(id) answers the cold part of a
// node that exists, making it when it has none; emplace(id, Node) makes both parts.
class NodeTable {
 public:
  using Cold = std::unordered_map<uint64_t, Node>;
  using iterator = Cold::iterator;
  iterator find(uint64_t id);
  iterator end() { return cold_.end(); }
  std::pair<iterator, bool> emplace(uint64_t id, Node n);
  // The cold part when it exists (never makes one; fine under a shared lock).
  Node* peek(uint64_t id);
  const HotNode* hot(uint64_t id) const;
  // The hot entry of `id`, made (without attributes) when absent.
  HotNode& hotOrMake(uint64_t id);
  bool erase(uint64_t id);
  size_t size() const { return live_; }
  Cold& cold() { return cold_; }
  const Cold& cold() const { return cold_; }
  std::unordered_map<uint64_t, std::string>& links() { return links_; }
  std::unordered_map<uint64_t, uint64_t>& dirEnds() { return dirEnds_; }
  // Reallocates everything to fit what is live now (after most nodes were forgotten).
  void shrink();
  // Bytes of the hot array and side entries (approximate; for stats and tests).
  size_t bytes() const;

 private:
  size_t slotOf(uint64_t id) const;  // the slot of id, or the empty slot where it would go
  void rehash(size_t cap);
  std::vector<HotNode> slots_;
  size_t mask_ = 0;
  size_t live_ = 0;
  Cold cold_;
  std::unordered_map<uint64_t, std::string> links_;
  std::unordered_map<uint64_t, uint64_t> dirEnds_;
};

// How an OPEN is answered (decideOpen).
enum class OpenMode { Cached, Passthrough, Conflict };

struct Stats {
  uint64_t toJs = 0;
  uint64_t toJsByOpcode[64] = {};  // requests handed to JS per opcode (others in slot 0)
  uint64_t inC = 0;
  uint64_t inCByOpcode[64] = {};  // requests answered in C per opcode (others in slot 0)
  uint64_t nodes = 0;
  uint64_t readsInC = 0;
  uint64_t bytesInC = 0;
  bool passthroughEnabled = false;  // negotiated at INIT
  uint64_t passthroughOpens = 0;    // opens answered with FOPEN_PASSTHROUGH
  uint64_t backingLive = 0;         // backing ids registered and not yet closed
  uint64_t passthroughFallbacks = 0;  // BACKING_OPEN failures (served by pread instead)
  uint64_t passthroughConflicts = 0;  // opens refused (EIO): content dropped while passthrough files were open
  uint64_t backingAdopted = 0;        // live backing ids of earlier processes (restart), not yet closed
  bool backingJournalFailed = false;  // the record file could not be written: no new ids since
  bool uringActive = false;  // requests arrive through io_uring queues
  uint32_t uringQueues = 0;
  uint64_t uringRequests = 0;  // requests fetched from ring entries
  int uringError = 0;          // why io_uring was not set up (EOPNOTSUPP: not offered in INIT)
  uint64_t locationOpens = 0;      // opens answered in C by opening a location JS gave with the entry
  uint64_t locationFallbacks = 0;  // such opens sent to JS instead (descriptor cap, open/fstat failed)
  uint64_t heldFiles = 0;          // cache files C holds open (bounded by maxFiles)
  uint64_t contentReclaimed = 0;   // idle nodes' content let go at the cap (kept as locations: reopened at their next OPEN)
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  using Post = std::function<bool(JsEvent*)>;
  static constexpr uint32_t kMaxWrite = 1 << 20;

  Session(SessionOptions opts, Post post);
  ~Session();

  // Mounts (mount(2) or fusermount3) and starts reader 0; throws std::runtime_error.
  void start();

  // Replies; each returns the errno of the write (0 on success).
  int replyErr(int ch, uint64_t unique, int err);
  int replyEntry(int ch, uint64_t unique, uint64_t nodeid, uint32_t mode, uint64_t size, uint32_t nlink,
                 double entryTtl);
  int replyAttr(int ch, uint64_t unique, uint64_t nodeid, uint32_t mode, uint64_t size, uint32_t nlink);
  // An open JS answers: C chooses the io mode (passthrough when the node's content allows).
  int replyOpen(int ch, uint64_t unique, uint64_t nodeid, uint64_t fh, uint32_t openFlags);
  int replyData(int ch, uint64_t unique, const uint8_t* data, size_t len);
  int replyReadlink(int ch, uint64_t unique, uint64_t nodeid, const uint8_t* target, size_t len);
  int replyStatfs(int ch, uint64_t unique, uint64_t blocks, uint64_t files, uint32_t bsize, uint32_t namemax);
  // Packs up to `size` bytes of entries; returns how many reached the kernel. `targets`
  // (optional, one per entry; data null = none) are the symlink targets of READDIRPLUS
  // entries, recorded for READLINK like their attributes. `eofOffset` (0: unknown) is the
  // offset after the directory's last entry: `dirNodeid` never changes, so later reads
  // from there are answered (empty) in C.
  struct Bytes {
    const uint8_t* data = nullptr;
    size_t len = 0;
  };
  size_t replyDir(int ch, uint64_t unique, bool plus, uint32_t size, const std::vector<struct DirentIn>& entries,
                  const std::vector<Bytes>* targets, uint64_t dirNodeid, uint64_t eofOffset, int* err);

  bool setContent(uint64_t nodeid, const std::string& path, uint64_t offset, uint64_t size, uint64_t fileTotal);
  // Whether a file of the kernel is open on a node whose content is `path` (the cache
  // must not evict it: src/store/lazy-store.ts guardDropped).
  bool contentInUse(const std::string& path);
  void dropContent(const std::string& path);
  // Where the verified bytes of regular file `nodeid` lie, given with its entry (LOOKUP):
  // nothing is opened now; an OPEN of the node without content opens `path` in C
  // (session_passthrough.cc openLocation), within maxFiles, else the OPEN goes to JS.
  // Forgotten with the node, and with dropContent/evictContent of `path`.
  void setLocation(uint64_t nodeid, const std::string& path, uint64_t offset, uint64_t size, uint64_t fileTotal);
  // The eviction guard (src/cache/blob-store.ts setEvictionGuard): false while a file of
  // the kernel is open on `path` (contentInUse); otherwise C lets go of it at once, under
  // the same lock (content and locations), so no open can take it after this answer.
  bool evictContent(const std::string& path);
  // JS dropped the node. `evicted`: the kernel forgot it (FORGET), so no file of it is
  // open any more; otherwise JS gave back a lookup the kernel never took, and an earlier
  // process's state of the node (restart) stays.
  void forgetNode(uint64_t nodeid, bool evicted);
  Stats stats();
  uint64_t initFlags() const { return initFlags_; }

  // --- restart (adopt.cc, watchdog.cc) ---
  // The descriptors of the readers, channel order (for the fd store).
  std::vector<int> deviceFds() const;
  // Whether a reader has been inside one request for more than limitMs.
  bool readerStuck(int64_t nowMs, int64_t limitMs) const;
  int liveReaderCount() const { return liveReaders_.load(); }

 private:
  friend class UringTransport;  // handle(), readerStopped(), liveReaders_
  // A reader (or io_uring queue thread) ends; the last one posts kEventClosed.
  void readerStopped(int stopErr);
  std::unique_ptr<UringTransport> uring_;  // set in start() when opts_.uring, never reset
  int uringError_ = 0;
  void reader(int ch);
  bool init(int ch, uint8_t* buf, size_t bufsize);
  void handle(int ch, const uint8_t* buf, size_t len, std::vector<uint8_t>& out);
  bool fastPath(int ch, const Request& r, std::vector<uint8_t>& out);
  void toJs(int ch, const Request& r);
  int send(int ch, uint64_t unique, int err, const void* a, size_t alen, const void* b = nullptr, size_t blen = 0);
  fuse_attr makeAttr(uint64_t nodeid, uint32_t mode, uint64_t size, uint32_t nlink) const;
  void record(uint64_t nodeid, const fuse_attr& attr);
  int fd(int ch) const;
  void mountSyscall();
  void mountFusermount();
  // adopt.cc: readers on opts_.adoptFds, no INIT; then FUSE_NOTIFY_RESEND.
  void adopt();
  int resend();
  bool adopted_ = false;
  // Per channel: CLOCK_MONOTONIC ms when its current request started, 0 when idle.
  std::atomic<int64_t> busySince_[16] = {};

  // Passthrough (session_passthrough.cc). All but wantPassthrough run under mu_ (unique).
  static bool hasCapSysAdmin();
  uint64_t wantPassthrough(uint64_t offered) const;
  OpenMode decideOpen(uint64_t nodeid, Node& n, int32_t* backingId);
  bool registerBacking(uint64_t nodeid, Node& n);
  void retireBacking(uint64_t nodeid, Node& n);
  void closeBacking(uint64_t nodeid, Node& n);
  // Restart (backing_journal.h): the record file, the ids of earlier processes by nodeid,
  // and the nodeids of earlier processes the kernel has forgotten since (their io mode is
  // known again: none).
  void openBackingJournal();
  bool journalBacking(BackingOp op, uint64_t nodeid, int32_t id);
  bool ioUnknown(uint64_t nodeid) const { return nodeid < opts_.ioUnknownBelow && settled_.count(nodeid) == 0; }
  void closeId(uint64_t nodeid, int32_t id);
  int journalFd_ = -1;
  uint64_t journalSize_ = 0;
  bool journalFailed_ = false;
  std::unordered_map<uint64_t, std::pair<int32_t, bool>> adoptedIds_;  // nodeid -> (id, retired)
  std::unordered_set<uint64_t> settled_;
  void countRelease(uint64_t nodeid, uint64_t fh);
  // OPEN of a node with no content but a location: opens it and makes it the node's
  // content; false (the OPEN goes to JS) over the cap or on any failure.
  bool openLocation(uint64_t nodeid);
  bool inUseLocked(const std::string& path) const;
  // Whether C holds `path` open (a live FileRef); whether a new one would pass maxFiles
  // (expired entries of files_ are pruned first). Under mu_ (unique).
  bool holdsLocked(const std::string& path) const;
  bool atCapLocked();
  void dropContentLocked(const std::string& path);
  struct Location {
    std::string path;
    uint64_t offset = 0, size = 0, total = 0;
    uint64_t seq = 0;  // which setLocation (or cap reclaim) made it: a drop and a new location of the same path differ
  };
  uint64_t locationSeq_ = 0;
  std::unordered_map<uint64_t, Location> locations_;
  std::atomic<uint64_t> locationOpens_{0}, locationFallbacks_{0};
  // The descriptor cap's reclaim of idle content (atCapLocked); under mu_ (unique).
  uint64_t releasesSinceReclaim_ = 1, contentReclaimed_ = 0;
  bool reclaimFreed_ = true;
  // Sends an open reply in the chosen mode and keeps the handle counts; fh of C's own
  // handles is 0 (cached) or kPassthroughFh.
  int sendOpen(int ch, uint64_t unique, uint64_t nodeid, uint64_t fh, uint32_t openFlags, bool cHandle);
  static constexpr uint64_t kPassthroughFh = 1ULL << 62;

  SessionOptions opts_;
  Post post_;
  std::vector<int> fds_;
  mutable std::mutex fdsMu_;
  std::shared_mutex mu_;
  NodeTable nodes_;
  /** Largest nodes_.size() since the last trim (forgetNode). */
  size_t nodesPeak_ = 0;
  static constexpr size_t kTrimFromNodes = 16384;
  std::unordered_map<std::string, std::weak_ptr<FileRef>> files_;
  std::atomic<int> liveReaders_{0};
  std::atomic<uint64_t> toJs_{0}, inC_{0}, readsInC_{0}, bytesInC_{0};
  std::atomic<uint64_t> toJsOps_[64] = {};
  std::atomic<uint64_t> inCOps_[64] = {};
  uint64_t initFlags_ = 0;
  uint32_t minor_ = 0;
  // Passthrough: negotiated (and not yet refused with EPERM); JS handles opened in
  // passthrough mode (fh -> nodeid; the others are cached-io).
  std::atomic<bool> ptEnabled_{false};
  std::unordered_map<uint64_t, std::pair<uint64_t, bool>> jsHandles_;
  std::atomic<uint64_t> ptOpens_{0}, backingLive_{0}, ptFallbacks_{0}, ptConflicts_{0};
};

int64_t monotonicMs();

}  // namespace narfs
