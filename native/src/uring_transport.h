// uring_transport.h: UringTransport, FUSE over io_uring for a Session (the `uring`
// transport; `dev`, reads and writes on /dev/fuse, stays the default).
//
// Protocol (Linux fs/fuse/dev_uring.c, include/uapi/linux/fuse.h 7.42; facts only):
// - INIT negotiated FUSE_OVER_IO_URING (the kernel offers it only while the fuse module
//   parameter enable_uring is Y). From then on the kernel holds new requests until every
//   queue has an entry registered: one queue per possible CPU (qid = CPU index, the
//   requester's CPU picks the queue), so a thread per possible CPU, each with its own ring.
// - An entry is a 288-byte header buffer (fuse_uring_req_header) plus a payload buffer of
//   at least max(8 KiB, max_write, max_pages pages); REGISTER (IORING_OP_URING_CMD,
//   SQE128, iovec[2] = header, payload) hands it to the kernel. Its completion (res 0)
//   means a request is in it: fuse_in_header in in_out, the first argument in op_in, the
//   rest (payload_sz bytes) in the payload, and the commit id in ring_ent_in_out.
// - The reply goes into the same entry (fuse_out_header in in_out, body in the payload,
//   payload_sz) and leaves with COMMIT_AND_FETCH (commit id, qid), which also gives the
//   entry back for the next request. Completions with res < 0 (ENOTCONN, ECANCELED)
//   mean the connection is gone: the entry is dead.
// - FORGET, BATCH_FORGET and INTERRUPT still arrive on /dev/fuse (the kernel's io_uring
//   queue ops send only requests through the ring); notifications (unique 0) cannot go
//   through the ring.
//
// Channels: an entry is channel kChBase + queue * depth + index, the `ch` a request
// carries to JS and back: replies route by it (Session::send). Replies come from any
// thread: the entry's buffers are filled by the replier, the commit SQE is submitted by
// the queue's own thread (woken through an eventfd read in its ring), because the kernel
// fetches the next request in the submitter's task context.
//
// Restart without unmount (adopt.h) does not apply: the rings die with the process.
#pragma once
#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace narfs {

class Session;
class IoRing;

class UringTransport {
 public:
  static constexpr int kChBase = 1 << 20;
  static bool owns(int ch) { return ch >= kChBase; }

  UringTransport(int devFd, int depth, uint32_t payloadSize);
  ~UringTransport();

  // Starts a thread per possible CPU (each keeps `session` alive and counts as one of its
  // readers) and registers every entry; waits up to deadlineMs for all. Returns 0, or the
  // errno of the first failure (the threads then stop on their own).
  int start(const std::shared_ptr<Session>& session, int deadlineMs);
  // A reply for the request in entry `ch`: header and body go into the entry, the commit
  // is queued for the entry's thread. 0, or ENOENT (no such request in it), ENOTCONN.
  // iov[0] is the fuse_out_header (its len is set here), the rest the body.
  int reply(int ch, uint64_t unique, const struct iovec* iov, int iovcnt);
  // The payload buffer of entry `ch` (a reply whose body is written there is not copied).
  uint8_t* payload(int ch);
  // The /dev/fuse connection ended: queue threads stop once no entry is in the kernel.
  void connectionGone();

  int queues() const { return static_cast<int>(queues_.size()); }
  uint64_t served() const { return served_.load(); }
  int depth() const { return depth_; }

 private:
  struct Entry;
  struct Queue;
  void run(Queue* q, std::shared_ptr<Session> s, IoRing& ring, std::vector<std::pair<uint64_t, int32_t>>& early);
  int fetched(Queue* q, int idx, std::vector<uint8_t>& in, std::vector<uint8_t>& out, Session* s);

  int devFd_;
  int depth_;
  uint32_t payloadSize_;
  std::vector<std::unique_ptr<Queue>> queues_;
  std::atomic<bool> gone_{false};
  std::atomic<uint64_t> served_{0};
};

// The number of possible CPUs (/sys/devices/system/cpu/possible, the kernel's
// num_possible_cpus(): the queues to register).
int possibleCpus();

}  // namespace narfs
