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
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "decode.h"
#include "fuse_abi.h"

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
  // Restart without unmount (adopt.h): resume these /dev/fuse descriptors instead of
  // mounting; the INIT they negotiated.
  std::vector<int> adoptFds;
  uint32_t adoptMinor = 0;
  uint64_t adoptFlags = 0;
};

struct FileRef {
  int fd;
  std::string path;
  explicit FileRef(int f, std::string p) : fd(f), path(std::move(p)) {}
  ~FileRef();
};

struct Node {
  fuse_attr attr{};
  bool hasAttr = false;
  bool hasLink = false;
  std::string link;
  std::shared_ptr<FileRef> file;
  uint64_t fileOffset = 0;
  uint64_t fileSize = 0;
};

struct Stats {
  uint64_t toJs = 0;
  uint64_t inC = 0;
  uint64_t nodes = 0;
  uint64_t readsInC = 0;
  uint64_t bytesInC = 0;
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
  int replyOpen(int ch, uint64_t unique, uint64_t fh, uint32_t openFlags);
  int replyData(int ch, uint64_t unique, const uint8_t* data, size_t len);
  int replyReadlink(int ch, uint64_t unique, uint64_t nodeid, const uint8_t* target, size_t len);
  int replyStatfs(int ch, uint64_t unique, uint64_t blocks, uint64_t files, uint32_t bsize, uint32_t namemax);
  // Packs up to `size` bytes of entries; returns how many reached the kernel.
  size_t replyDir(int ch, uint64_t unique, bool plus, uint32_t size, const std::vector<struct DirentIn>& entries,
                  int* err);

  bool setContent(uint64_t nodeid, const std::string& path, uint64_t offset, uint64_t size, uint64_t fileTotal);
  void dropContent(const std::string& path);
  void forgetNode(uint64_t nodeid);
  Stats stats();
  uint64_t initFlags() const { return initFlags_; }

  // --- restart (adopt.cc, watchdog.cc) ---
  // The descriptors of the readers, channel order (for the fd store).
  std::vector<int> deviceFds() const;
  // Whether a reader has been inside one request for more than limitMs.
  bool readerStuck(int64_t nowMs, int64_t limitMs) const;
  int liveReaderCount() const { return liveReaders_.load(); }

 private:
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

  SessionOptions opts_;
  Post post_;
  std::vector<int> fds_;
  mutable std::mutex fdsMu_;
  std::shared_mutex mu_;
  std::unordered_map<uint64_t, Node> nodes_;
  /** Largest nodes_.size() since the last trim (forgetNode). */
  size_t nodesPeak_ = 0;
  static constexpr size_t kTrimFromNodes = 16384;
  std::unordered_map<std::string, std::weak_ptr<FileRef>> files_;
  std::atomic<int> liveReaders_{0};
  std::atomic<uint64_t> toJs_{0}, inC_{0}, readsInC_{0}, bytesInC_{0};
  uint64_t initFlags_ = 0;
  uint32_t minor_ = 0;
};

int64_t monotonicMs();

}  // namespace narfs
