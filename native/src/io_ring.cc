// io_ring.cc: see io_ring.h.
#include "io_ring.h"

#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

namespace narfs {

namespace {

int sysSetup(unsigned entries, io_uring_params* p) {
  return static_cast<int>(syscall(__NR_io_uring_setup, entries, p));
}

int sysEnter(int fd, unsigned toSubmit, unsigned minComplete, unsigned flags, const void* arg, size_t argsz) {
  return static_cast<int>(syscall(__NR_io_uring_enter, fd, toSubmit, minComplete, flags, arg, argsz));
}

template <typename T>
T* at(void* base, uint32_t off) {
  return reinterpret_cast<T*>(static_cast<uint8_t*>(base) + off);
}

}  // namespace

IoRing::~IoRing() {
  if (sqes_ != nullptr) munmap(sqes_, sqesLen_);
  if (cqMap_ != nullptr && cqMap_ != sqMap_) munmap(cqMap_, cqMapLen_);
  if (sqMap_ != nullptr) munmap(sqMap_, sqMapLen_);
  if (fd_ >= 0) close(fd_);
}

int IoRing::setup(unsigned entries) {
  io_uring_params p;
  std::memset(&p, 0, sizeof p);
  p.flags = IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
  fd_ = sysSetup(entries, &p);
  if (fd_ < 0 && errno == EINVAL) {  // a kernel before 6.1: plain task work
    std::memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_SQE128;
    fd_ = sysSetup(entries, &p);
  }
  if (fd_ < 0) return errno;
  sqMapLen_ = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  cqMapLen_ = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
  bool single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
  if (single && cqMapLen_ > sqMapLen_) sqMapLen_ = cqMapLen_;
  sqMap_ = mmap(nullptr, sqMapLen_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_SQ_RING);
  if (sqMap_ == MAP_FAILED) {
    sqMap_ = nullptr;
    return errno;
  }
  if (single) {
    cqMap_ = sqMap_;
  } else {
    cqMap_ = mmap(nullptr, cqMapLen_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_CQ_RING);
    if (cqMap_ == MAP_FAILED) {
      cqMap_ = nullptr;
      return errno;
    }
  }
  sqesLen_ = p.sq_entries * 128;  // SQE128
  void* s = mmap(nullptr, sqesLen_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_SQES);
  if (s == MAP_FAILED) return errno;
  sqes_ = static_cast<uint8_t*>(s);
  sqHead_ = at<unsigned>(sqMap_, p.sq_off.head);
  sqTail_ = at<unsigned>(sqMap_, p.sq_off.tail);
  sqMask_ = *at<unsigned>(sqMap_, p.sq_off.ring_mask);
  sqEntries_ = *at<unsigned>(sqMap_, p.sq_off.ring_entries);
  sqArray_ = at<unsigned>(sqMap_, p.sq_off.array);
  cqHead_ = at<unsigned>(cqMap_, p.cq_off.head);
  cqTail_ = at<unsigned>(cqMap_, p.cq_off.tail);
  cqMask_ = *at<unsigned>(cqMap_, p.cq_off.ring_mask);
  cqes_ = at<io_uring_cqe>(cqMap_, p.cq_off.cqes);
  localTail_ = *sqTail_;
  return 0;
}

io_uring_sqe* IoRing::sqe() {
  unsigned head = __atomic_load_n(sqHead_, __ATOMIC_ACQUIRE);
  if (localTail_ - head >= sqEntries_) return nullptr;
  unsigned idx = localTail_ & sqMask_;
  auto* e = reinterpret_cast<io_uring_sqe*>(sqes_ + static_cast<size_t>(idx) * 128);
  std::memset(e, 0, 128);
  sqArray_[idx] = idx;
  localTail_++;
  pending_++;
  return e;
}

int IoRing::submitAndWait(unsigned wait, int timeoutMs) {
  __atomic_store_n(sqTail_, localTail_, __ATOMIC_RELEASE);
  unsigned toSubmit = pending_;
  __kernel_timespec ts;
  ts.tv_sec = timeoutMs / 1000;
  ts.tv_nsec = static_cast<long long>(timeoutMs % 1000) * 1000000;
  io_uring_getevents_arg arg;
  std::memset(&arg, 0, sizeof arg);
  arg.sigmask = 0;
  arg.sigmask_sz = _NSIG / 8;
  arg.ts = reinterpret_cast<uint64_t>(&ts);
  // GETEVENTS also when not waiting: deferred task work (the kernel's copy of a request
  // into an entry's buffers) runs only inside io_uring_enter with GETEVENTS.
  unsigned flags = IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG;
  for (;;) {
    int r = sysEnter(fd_, toSubmit, wait, flags, &arg, sizeof arg);
    if (r >= 0) {
      pending_ -= static_cast<unsigned>(r) <= pending_ ? static_cast<unsigned>(r) : pending_;
      return 0;
    }
    if (errno == ETIME) {
      pending_ = 0;  // a timed-out wait still consumed the SQ (submission precedes the wait)
      return 0;
    }
    if (errno == EINTR) continue;
    return errno;
  }
}

}  // namespace narfs
