// watchdog.cc: systemd's WATCHDOG=1 from a C thread that pings only while both halves of
// the daemon are alive (mechanism here, policy — the interval and the staleness bound — in
// src/daemon/systemd-notify.ts).
//
// Invariant: a ping is sent at most once per interval, and only when
//   (1) JS called watchdogBeat() within the last `staleMs` (its event loop runs: a loop
//       stuck in a long synchronous call stops beating), and
//   (2) when a session is watched: at least one reader thread is alive and no reader has
//       been inside one request for longer than `staleMs` (a reader blocked in a pread of
//       a hung cache disk, or in a write to /dev/fuse, stops the pings).
// Either stall withholds the pings and systemd kills the service after WatchdogSec=
// (systemd.service(5)); it is restarted and resumes the mount (adopt.h). The clock is
// CLOCK_MONOTONIC (std::chrono::steady_clock). One watchdog per process.
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "adopt.h"
#include "session.h"

namespace narfs {

int64_t monotonicMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

bool Session::readerStuck(int64_t nowMs, int64_t limitMs) const {
  for (const auto& b : busySince_) {
    int64_t since = b.load(std::memory_order_relaxed);
    if (since != 0 && nowMs - since > limitMs) return true;
  }
  return false;
}

namespace {

struct Watchdog {
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  int64_t intervalMs = 0;
  int64_t staleMs = 0;
  std::weak_ptr<Session> session;
  bool watchSession = false;
  std::atomic<int64_t> lastBeat{0};
  std::atomic<uint64_t> pings{0}, withheld{0};
  std::atomic<int> lastReason{0};  // 0 ok, 1 JS stale, 2 reader stuck, 3 no reader, 4 send failed
};

std::mutex gMu;
std::shared_ptr<Watchdog> gDog;

void run(std::shared_ptr<Watchdog> d) {
  std::unique_lock<std::mutex> lk(d->mu);
  for (;;) {
    if (d->cv.wait_for(lk, std::chrono::milliseconds(d->intervalMs), [&] { return d->stop; })) return;
    int64_t now = monotonicMs();
    int reason = 0;
    if (now - d->lastBeat.load() > d->staleMs) {
      reason = 1;
    } else if (d->watchSession) {
      std::shared_ptr<Session> s = d->session.lock();
      if (!s || s->liveReaderCount() == 0) reason = 3;
      else if (s->readerStuck(now, d->staleMs)) reason = 2;
    }
    if (reason == 0 && notifyWithFds("WATCHDOG=1", nullptr, 0) != 0) reason = 4;
    d->lastReason = reason;
    if (reason == 0) d->pings++;
    else d->withheld++;
  }
}

void stopDog() {
  std::shared_ptr<Watchdog> d;
  {
    std::lock_guard<std::mutex> g(gMu);
    d = std::move(gDog);
  }
  if (!d) return;
  {
    std::lock_guard<std::mutex> g(d->mu);
    d->stop = true;
  }
  d->cv.notify_all();  // the thread holds its own reference and ends by itself
}

// watchdogStart(session | null, intervalMs, staleMs): (re)starts the pinging thread. JS has
// just proven itself alive (counts as a beat).
Napi::Value WatchdogStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[1].IsNumber() || !info[2].IsNumber()) {
    Napi::TypeError::New(env, "watchdogStart(session | null, intervalMs, staleMs)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto d = std::make_shared<Watchdog>();
  if (info[0].IsExternal()) {
    Session* s = sessionFromInfo(info);
    if (s == nullptr) return env.Undefined();
    d->session = s->shared_from_this();
    d->watchSession = true;
  }
  d->intervalMs = info[1].As<Napi::Number>().Int64Value();
  d->staleMs = info[2].As<Napi::Number>().Int64Value();
  if (d->intervalMs < 10 || d->staleMs < d->intervalMs) {
    Napi::RangeError::New(env, "watchdogStart: intervalMs >= 10 and staleMs >= intervalMs").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  d->lastBeat = monotonicMs();
  stopDog();
  std::thread(run, d).detach();
  std::lock_guard<std::mutex> g(gMu);
  gDog = d;
  return env.Undefined();
}

Napi::Value WatchdogBeat(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> g(gMu);
  if (gDog) gDog->lastBeat = monotonicMs();
  return info.Env().Undefined();
}

Napi::Value WatchdogStop(const Napi::CallbackInfo& info) {
  stopDog();
  return info.Env().Undefined();
}

// watchdogStats() → { pings, withheld, lastReason } or undefined when not running.
Napi::Value WatchdogStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> g(gMu);
  if (!gDog) return env.Undefined();
  static const char* const kReasons[] = {"ok", "js-stalled", "reader-stuck", "no-reader", "send-failed"};
  Napi::Object o = Napi::Object::New(env);
  o.Set("pings", static_cast<double>(gDog->pings.load()));
  o.Set("withheld", static_cast<double>(gDog->withheld.load()));
  o.Set("lastReason", kReasons[gDog->lastReason.load()]);
  return o;
}

}  // namespace

void registerWatchdogExports(Napi::Env env, Napi::Object exports) {
  exports.Set("watchdogStart", Napi::Function::New(env, WatchdogStart));
  exports.Set("watchdogBeat", Napi::Function::New(env, WatchdogBeat));
  exports.Set("watchdogStop", Napi::Function::New(env, WatchdogStop));
  exports.Set("watchdogStats", Napi::Function::New(env, WatchdogStats));
}

}  // namespace narfs
