// adopt.h: resuming a FUSE connection in a new process (restart without unmount), and the
// JS exports of that feature, the fd store and the engine's watchdog.
//
// A resumed session gets the /dev/fuse descriptors of the previous process (systemd's fd
// store passes them back as LISTEN_FDS): no mount(2), no INIT (the kernel connection is
// initialised already), one reader per descriptor, then FUSE_NOTIFY_RESEND (Linux 6.9+,
// fs/fuse/dev.c fuse_resend) requeues every request the previous process had read and not
// answered. The kernel marks a requeued request with FUSE_UNIQUE_RESEND (bit 63 of unique,
// include/uapi/linux/fuse.h), which a JS number cannot hold: uniques cross to JS with that
// bit moved to bit 52 (the kernel's counter, +2 per request, never gets near 2^52) and
// come back through uniqueFromJs before the reply is written.
#pragma once
#include <napi.h>

#include <cstdint>

namespace narfs {

class Session;
struct SessionOptions;

constexpr uint64_t kUniqueResend = 1ULL << 63;
constexpr uint64_t kJsResendBit = 1ULL << 52;
constexpr int32_t kNotifyResend = 7;  // FUSE_NOTIFY_RESEND (protocol 7.40)

inline uint64_t uniqueToJs(uint64_t u) { return (u & kUniqueResend) ? ((u & ~kUniqueResend) | kJsResendBit) : u; }
inline uint64_t uniqueFromJs(uint64_t u) { return (u & kJsResendBit) ? ((u & ~kJsResendBit) | kUniqueResend) : u; }

// mount() options: `adopt: { fds: number[], minor: number, flags: number }`.
void readAdoptOptions(const Napi::Object& o, SessionOptions* opts);

// mount() options: `backingJournal: { path, size, live: Float64Array of (nodeid, backingId,
// retired) triples, unknownBelow }` (backing_journal.cc; see SessionOptions).
void readBackingJournalOptions(const Napi::Object& o, SessionOptions* opts);

// backingJournalAppend(fd, size, op, nodeid, backingId) → the new size, or -errno: the
// engine's own writer, for tests of the record file.
void registerBackingJournalExports(Napi::Env env, Napi::Object exports);

// Sends one sd_notify datagram with `fds` attached (SCM_RIGHTS); returns 0 or an errno,
// ENOENT when $NOTIFY_SOCKET is unset.
int notifyWithFds(const char* state, const int* fds, size_t nfds);

// The session of argument 0 (addon.cc), or nullptr with a JS exception pending.
Session* sessionFromInfo(const Napi::CallbackInfo& info);

// Adds deviceFds and sdNotifyFds (adopt.cc), then the watchdog's exports (watchdog.cc).
void registerRestartExports(Napi::Env env, Napi::Object exports);
void registerWatchdogExports(Napi::Env env, Napi::Object exports);

}  // namespace narfs
