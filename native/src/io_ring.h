// io_ring.h: IoRing, a minimal io_uring instance on the raw syscalls (no liburing on
// bookworm's build machines; what the FUSE transport needs is one SQE kind and one read).
//
// Format: io_uring_setup(2) with IORING_SETUP_SQE128 (128-byte SQEs: IORING_OP_URING_CMD
// carries 80 bytes of command), the SQ ring, CQ ring and SQE array mapped as
// io_uring_setup(2) and Linux include/uapi/linux/io_uring.h describe (IORING_OFF_SQ_RING,
// IORING_OFF_CQ_RING, IORING_OFF_SQES; one mapping for both rings with
// IORING_FEAT_SINGLE_MMAP). Invariant: one thread owns an IoRing (it asks for
// IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN where the kernel has them): only
// it takes SQEs, submits and reaps. Every wait has a deadline (IORING_ENTER_EXT_ARG).
#pragma once
#include <linux/io_uring.h>

#include <cstddef>
#include <cstdint>

namespace narfs {

class IoRing {
 public:
  IoRing() = default;
  ~IoRing();
  IoRing(const IoRing&) = delete;
  IoRing& operator=(const IoRing&) = delete;

  // Returns 0 or the errno of io_uring_setup / mmap.
  int setup(unsigned entries);
  // A zeroed 128-byte SQE, or nullptr when the SQ is full (submit first).
  io_uring_sqe* sqe();
  // Submits what sqe() handed out and waits up to timeoutMs for at least `wait`
  // completions (wait 0: no wait). Returns 0, or the errno (ETIME on timeout is 0).
  int submitAndWait(unsigned wait, int timeoutMs);
  // Calls fn(user_data, res) for every completion ready now; returns how many.
  template <typename Fn>
  unsigned reap(Fn fn) {
    unsigned n = 0;
    unsigned head = *cqHead_;
    for (;;) {
      unsigned tail = __atomic_load_n(cqTail_, __ATOMIC_ACQUIRE);
      if (head == tail) break;
      const io_uring_cqe& c = cqes_[head & cqMask_];
      uint64_t ud = c.user_data;
      int32_t res = c.res;
      head++;
      __atomic_store_n(cqHead_, head, __ATOMIC_RELEASE);
      fn(ud, res);
      n++;
    }
    return n;
  }
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  void* sqMap_ = nullptr;
  size_t sqMapLen_ = 0;
  void* cqMap_ = nullptr;
  size_t cqMapLen_ = 0;
  uint8_t* sqes_ = nullptr;
  size_t sqesLen_ = 0;
  unsigned* sqHead_ = nullptr;
  unsigned* sqTail_ = nullptr;
  unsigned sqMask_ = 0;
  unsigned sqEntries_ = 0;
  unsigned* sqArray_ = nullptr;
  unsigned* cqHead_ = nullptr;
  unsigned* cqTail_ = nullptr;
  unsigned cqMask_ = 0;
  io_uring_cqe* cqes_ = nullptr;
  unsigned pending_ = 0;  // SQEs handed out, not yet submitted
  unsigned localTail_ = 0;
};

}  // namespace narfs
