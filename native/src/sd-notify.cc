// sd-notify.cc: sd_notify(3) without libsystemd, for `narfs mount` under a Type=notify unit.
//
// Protocol (systemd's src/libsystemd/sd-daemon/sd-daemon.c, sd_pid_notify_with_fds, and
// sd_notify(3)): one datagram holding newline-separated VAR=VALUE assignments ("READY=1",
// "STATUS=…", "WATCHDOG=1", "STOPPING=1") sent on an AF_UNIX SOCK_DGRAM socket to the
// address in $NOTIFY_SOCKET: a filesystem path ("/run/systemd/notify") or, when it starts
// with '@', an abstract address (the '@' becomes a NUL byte). Node has no AF_UNIX datagram
// sockets, hence this function.
//
// sdNotify(state) → true when the datagram was sent, false when $NOTIFY_SOCKET is unset
// (not started by systemd: nothing to tell). A failure to send throws an Error carrying
// errno's name (systemd drops a notification it cannot attribute; the caller logs it).
// Like sd_notify(…, unset_environment=0) it leaves $NOTIFY_SOCKET in place, so later
// STATUS= and WATCHDOG=1 messages reach the manager too. The socket is opened and closed
// per call (a handful of messages a minute; no descriptor is held across fork/exec).
#include "sd-notify.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace narfs {

Napi::Value SdNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "sdNotify(state: string)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string state = info[0].As<Napi::String>().Utf8Value();
  const char* target = std::getenv("NOTIFY_SOCKET");
  if (target == nullptr || target[0] == '\0') return Napi::Boolean::New(env, false);
  size_t len = std::strlen(target);
  sockaddr_un addr;
  std::memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if ((target[0] != '/' && target[0] != '@') || len >= sizeof addr.sun_path) {
    Napi::Error::New(env, "sdNotify: $NOTIFY_SOCKET is neither a path nor an abstract address")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::memcpy(addr.sun_path, target, len);
  if (target[0] == '@') addr.sun_path[0] = '\0';
  socklen_t addrLen = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len);
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    Napi::Error::New(env, std::string("sdNotify: socket: ") + std::strerror(errno)).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  ssize_t n;
  do {
    n = sendto(fd, state.data(), state.size(), MSG_NOSIGNAL,
               reinterpret_cast<const sockaddr*>(&addr), addrLen);
  } while (n < 0 && errno == EINTR);
  int err = errno;
  close(fd);
  if (n < 0) {
    Napi::Error::New(env, std::string("sdNotify: sendto ") + target + ": " + std::strerror(err))
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Boolean::New(env, true);
}

}  // namespace narfs
