// uring_transport.cc: see uring_transport.h. Facts from Linux fs/fuse/dev_uring.c
// (fuse_uring_register, fuse_uring_commit_fetch, fuse_uring_args_to_ring,
// fuse_uring_copy_from_ring, fuse_uring_stop_queues).
#include "uring_transport.h"

#include <errno.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <thread>

#include "fuse_abi.h"
#include "io_ring.h"
#include "session.h"

namespace narfs {

namespace {

constexpr uint64_t kWakeTag = ~0ULL;
constexpr int kTickMs = 500;          // a queue thread looks at its stop condition this often
constexpr int kGoneGraceMs = 5000;    // after the connection ended, entries still in the kernel
constexpr size_t kInHeader = sizeof(fuse_in_header);

}  // namespace

int possibleCpus() {
  // "0-1", "0-3,5", "0": the highest index + 1 (queues are indexed by CPU number).
  FILE* f = std::fopen("/sys/devices/system/cpu/possible", "re");
  int maxCpu = -1;
  if (f != nullptr) {
    char buf[256] = {};
    if (std::fgets(buf, sizeof buf, f) != nullptr) {
      const char* p = buf;
      while (*p != '\0') {
        char* end = nullptr;
        long v = std::strtol(p, &end, 10);
        if (end == p) break;
        if (v > maxCpu) maxCpu = static_cast<int>(v);
        p = end;
        if (*p == '-' || *p == ',') p++;
      }
    }
    std::fclose(f);
  }
  if (maxCpu < 0) {
    long n = sysconf(_SC_NPROCESSORS_CONF);
    return n > 0 ? static_cast<int>(n) : 1;
  }
  return maxCpu + 1;
}

enum class EntryState { Kernel, User, Replying, Commit, Dead };

struct UringTransport::Entry {
  uring_req_header* hdr = nullptr;
  uint8_t* payload = nullptr;
  struct iovec iov[2];
  EntryState state = EntryState::Kernel;
  uint64_t commitId = 0;
};

struct UringTransport::Queue {
  int qid = 0;
  std::vector<Entry> entries;
  void* mem = nullptr;
  size_t memLen = 0;
  int wakeFd = -1;
  uint64_t wakeBuf = 0;
  std::mutex mu;
  std::vector<int> commits;  // entries whose reply is written, for the thread to commit
  bool closed = false;
  std::thread::id owner;
  ~Queue() {
    if (mem != nullptr) munmap(mem, memLen);
    if (wakeFd >= 0) close(wakeFd);
  }
  void wake() {
    uint64_t one = 1;
    ssize_t w = write(wakeFd, &one, sizeof one);
    (void)w;  // EAGAIN: the counter is already non-zero, the thread wakes anyway
  }
};

UringTransport::UringTransport(int devFd, int depth, uint32_t payloadSize)
    : devFd_(devFd), depth_(depth), payloadSize_(payloadSize) {}

UringTransport::~UringTransport() = default;

int UringTransport::start(const std::shared_ptr<Session>& session, int deadlineMs) {
  int n = possibleCpus();
  size_t hdrBytes = (sizeof(uring_req_header) * static_cast<size_t>(depth_) + 4095) & ~static_cast<size_t>(4095);
  for (int i = 0; i < n; i++) {
    auto q = std::make_unique<Queue>();
    q->qid = i;
    q->memLen = hdrBytes + static_cast<size_t>(payloadSize_) * static_cast<size_t>(depth_);
    void* m = mmap(nullptr, q->memLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return errno;
    q->mem = m;
    q->wakeFd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (q->wakeFd < 0) return errno;
    q->entries.resize(static_cast<size_t>(depth_));
    for (int e = 0; e < depth_; e++) {
      Entry& en = q->entries[static_cast<size_t>(e)];
      en.hdr = reinterpret_cast<uring_req_header*>(static_cast<uint8_t*>(m) + sizeof(uring_req_header) * e);
      en.payload = static_cast<uint8_t*>(m) + hdrBytes + static_cast<size_t>(payloadSize_) * e;
      en.iov[0] = {en.hdr, sizeof(uring_req_header)};
      en.iov[1] = {en.payload, payloadSize_};
    }
    queues_.push_back(std::move(q));
  }
  // Each thread reports its registration: 0 or an errno.
  struct Start {
    std::mutex mu;
    std::condition_variable cv;
    int done = 0;
    int err = 0;
  };
  auto st = std::make_shared<Start>();
  for (auto& qp : queues_) {
    Queue* q = qp.get();
    session->liveReaders_++;
    std::shared_ptr<Session> keep = session;
    std::thread([this, q, keep, st] {
      int err = 0;
      IoRing ring;
      {
        std::lock_guard<std::mutex> g(q->mu);
        q->owner = std::this_thread::get_id();
      }
      // The kernel picks the queue by the requester's CPU; the fetch of the next request
      // runs in this thread's context: keep it on that CPU (best effort).
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(q->qid, &set);
      sched_setaffinity(0, sizeof set, &set);
      err = ring.setup(static_cast<unsigned>(depth_) * 2 + 4);
      if (err == 0) {
        for (int e = 0; e < depth_; e++) {
          io_uring_sqe* s = ring.sqe();
          s->opcode = IORING_OP_URING_CMD;
          s->fd = devFd_;
          s->cmd_op = kUringCmdRegister;
          s->addr = reinterpret_cast<uint64_t>(q->entries[static_cast<size_t>(e)].iov);
          s->len = 2;
          s->user_data = static_cast<uint64_t>(e);
          auto* req = reinterpret_cast<uring_cmd_req*>(s->cmd);
          req->qid = static_cast<uint16_t>(q->qid);
        }
        io_uring_sqe* w = ring.sqe();
        w->opcode = IORING_OP_READ;
        w->fd = q->wakeFd;
        w->addr = reinterpret_cast<uint64_t>(&q->wakeBuf);
        w->len = sizeof q->wakeBuf;
        w->user_data = kWakeTag;
        err = ring.submitAndWait(0, 0);
      }
      // A REGISTER the kernel refuses completes at once (EOPNOTSUPP: enable_uring is N;
      // EINVAL: a buffer too small); accepted ones complete only with a request.
      std::vector<std::pair<uint64_t, int32_t>> early;
      if (err == 0) ring.reap([&](uint64_t ud, int32_t res) { early.emplace_back(ud, res); });
      for (auto& [ud, res] : early) {
        if (ud != kWakeTag && res < 0 && err == 0) err = -res;
      }
      {
        std::lock_guard<std::mutex> g(st->mu);
        st->done++;
        if (err != 0 && st->err == 0) st->err = err;
      }
      st->cv.notify_all();
      if (err != 0) {
        {
          std::lock_guard<std::mutex> g(q->mu);
          q->closed = true;
        }
        keep->readerStopped(0);
        return;
      }
      run(q, keep, ring, early);
    }).detach();
  }
  std::unique_lock<std::mutex> g(st->mu);
  bool all = st->cv.wait_for(g, std::chrono::milliseconds(deadlineMs),
                             [&] { return st->done == static_cast<int>(queues_.size()) || st->err != 0; });
  if (st->err != 0) return st->err;
  return all ? 0 : ETIMEDOUT;
}

void UringTransport::run(Queue* q, std::shared_ptr<Session> s, IoRing& ring,
                         std::vector<std::pair<uint64_t, int32_t>>& early) {
  std::vector<uint8_t> in(kInHeader + 128 + 64 * 1024);
  std::vector<uint8_t> out(sizeof(fuse_out_header) + Session::kMaxWrite);
  std::vector<int> commits;
  bool connDead = false;
  int64_t goneAt = 0;
  auto complete = [&](uint64_t ud, int32_t res) {
    if (ud == kWakeTag) {  // re-arm the wake-up read
      io_uring_sqe* w = ring.sqe();
      if (w != nullptr) {
        w->opcode = IORING_OP_READ;
        w->fd = q->wakeFd;
        w->addr = reinterpret_cast<uint64_t>(&q->wakeBuf);
        w->len = sizeof q->wakeBuf;
        w->user_data = kWakeTag;
      }
      return;
    }
    if (ud >= q->entries.size()) return;
    int idx = static_cast<int>(ud);
    if (res < 0) {
      // ENOTCONN / ECANCELED: the kernel tore the queue down (unmount, abort).
      std::lock_guard<std::mutex> g(q->mu);
      q->entries[ud].state = EntryState::Dead;
      connDead = true;
      return;
    }
    fetched(q, idx, in, out, s.get());
  };
  for (auto& [ud, res] : early) complete(ud, res);
  for (;;) {
    {
      std::lock_guard<std::mutex> g(q->mu);
      commits.swap(q->commits);
    }
    for (int idx : commits) {
      io_uring_sqe* c = ring.sqe();
      Entry& e = q->entries[static_cast<size_t>(idx)];
      if (c == nullptr) {  // cannot happen: one SQE per entry at most, and the wake read
        std::lock_guard<std::mutex> g(q->mu);
        q->commits.push_back(idx);
        continue;
      }
      c->opcode = IORING_OP_URING_CMD;
      c->fd = devFd_;
      c->cmd_op = kUringCmdCommitAndFetch;
      c->user_data = static_cast<uint64_t>(idx);
      auto* req = reinterpret_cast<uring_cmd_req*>(c->cmd);
      req->qid = static_cast<uint16_t>(q->qid);
      std::lock_guard<std::mutex> g(q->mu);
      req->commit_id = e.commitId;
      e.state = EntryState::Kernel;
    }
    commits.clear();
    if (gone_.load() || connDead) {
      int64_t now = monotonicMs();
      if (goneAt == 0) goneAt = now;
      int inKernel = 0;
      {
        std::lock_guard<std::mutex> g(q->mu);
        for (auto& e : q->entries) inKernel += e.state == EntryState::Kernel ? 1 : 0;
        // Entries that hold a request (JS still answering) are not waited for: their
        // replies find the queue closed.
        if (inKernel == 0 || now - goneAt > kGoneGraceMs) q->closed = true;
      }
      if (inKernel == 0 || now - goneAt > kGoneGraceMs) break;
    }
    int err = ring.submitAndWait(1, kTickMs);
    if (err != 0 && err != EBUSY && err != EAGAIN) {
      std::lock_guard<std::mutex> g(q->mu);
      q->closed = true;
      break;
    }
    ring.reap(complete);
  }
  // Closing the ring (IoRing's destructor, in the caller's lambda) cancels what is left.
  s->readerStopped(0);
}

int UringTransport::fetched(Queue* q, int idx, std::vector<uint8_t>& in, std::vector<uint8_t>& out, Session* s) {
  Entry& e = q->entries[static_cast<size_t>(idx)];
  fuse_in_header h;
  std::memcpy(&h, e.hdr->in_out, sizeof h);
  const uint32_t payloadSz = e.hdr->ring_ent_in_out.payload_sz;
  const uint64_t commitId = e.hdr->ring_ent_in_out.commit_id;
  {
    std::lock_guard<std::mutex> g(q->mu);
    e.state = EntryState::User;
    e.commitId = commitId;
  }
  const int ch = kChBase + q->qid * depth_ + idx;
  // The request as /dev/fuse would deliver it: header, first argument (op_in), the rest.
  // h.len counts all three (fuse_send_one), so the first argument is what is left.
  if (h.len < kInHeader || payloadSz > payloadSize_ || h.len - kInHeader < payloadSz ||
      h.len - kInHeader - payloadSz > sizeof e.hdr->op_in) {
    fuse_out_header oh{static_cast<uint32_t>(sizeof(fuse_out_header)), -EIO, commitId};
    struct iovec iov = {&oh, sizeof oh};
    reply(ch, commitId, &iov, 1);
    return EIO;
  }
  const size_t arg0 = h.len - kInHeader - payloadSz;
  if (in.size() < h.len) in.resize(h.len);
  std::memcpy(in.data(), &h, kInHeader);
  std::memcpy(in.data() + kInHeader, e.hdr->op_in, arg0);
  std::memcpy(in.data() + kInHeader + arg0, e.payload, payloadSz);
  served_++;
  s->handle(ch, in.data(), h.len, out);
  return 0;
}

int UringTransport::reply(int ch, uint64_t unique, const struct iovec* iov, int iovcnt) {
  if (!owns(ch)) return EBADF;
  int rel = ch - kChBase;
  size_t qi = static_cast<size_t>(rel / depth_);
  size_t idx = static_cast<size_t>(rel % depth_);
  if (qi >= queues_.size()) return EBADF;
  Queue& q = *queues_[qi];
  Entry& e = q.entries[idx];
  {
    std::lock_guard<std::mutex> g(q.mu);
    if (q.closed) return ENOTCONN;
    if (e.state != EntryState::User || e.commitId != unique) return ENOENT;
    e.state = EntryState::Replying;
  }
  // iov[0] is the fuse_out_header; the rest is the body.
  size_t pos = 0;
  for (int i = 1; i < iovcnt; i++) {
    size_t len = iov[i].iov_len;
    if (pos + len > payloadSize_) len = payloadSize_ - pos;
    if (iov[i].iov_base != e.payload + pos) std::memmove(e.payload + pos, iov[i].iov_base, len);
    pos += len;
  }
  fuse_out_header oh;
  std::memcpy(&oh, iov[0].iov_base, sizeof oh);
  oh.len = static_cast<uint32_t>(sizeof oh + pos);
  std::memcpy(e.hdr->in_out, &oh, sizeof oh);
  e.hdr->ring_ent_in_out.payload_sz = static_cast<uint32_t>(pos);
  bool other;
  {
    std::lock_guard<std::mutex> g(q.mu);
    e.state = EntryState::Commit;
    q.commits.push_back(static_cast<int>(idx));
    other = std::this_thread::get_id() != q.owner;
  }
  if (other) q.wake();
  return 0;
}

uint8_t* UringTransport::payload(int ch) {
  int rel = ch - kChBase;
  size_t qi = static_cast<size_t>(rel / depth_);
  if (rel < 0 || qi >= queues_.size()) return nullptr;
  return queues_[qi]->entries[static_cast<size_t>(rel % depth_)].payload;
}

void UringTransport::connectionGone() {
  gone_ = true;
  for (auto& q : queues_) q->wake();
}

}  // namespace narfs
