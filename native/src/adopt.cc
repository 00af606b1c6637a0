// adopt.cc: see adopt.h. The Session members declared under "restart" in session.h live
// here, so session.cc only calls them.
//
// sd_notify with descriptors follows systemd's sd_pid_notify_with_fds
// (src/libsystemd/sd-daemon/sd-daemon.c): one datagram, the state text as its payload and
// the descriptors as one SCM_RIGHTS control message. systemd keeps descriptors sent with
// "FDSTORE=1" (FileDescriptorStoreMax= > 0, systemd.service(5)) and passes them to the next
// process of the unit as LISTEN_FDS/LISTEN_FDNAMES (sd_listen_fds(3)).
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "adopt.h"
#include "session.h"

namespace narfs {

void readAdoptOptions(const Napi::Object& o, SessionOptions* opts) {
  Napi::Value v = o.Get("adopt");
  if (!v.IsObject()) return;
  Napi::Object a = v.As<Napi::Object>();
  Napi::Value fds = a.Get("fds");
  if (fds.IsArray()) {
    Napi::Array arr = fds.As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length() && i < 16; i++) {
      Napi::Value f = arr[i];
      if (f.IsNumber() && f.As<Napi::Number>().Int32Value() >= 0) opts->adoptFds.push_back(f.As<Napi::Number>().Int32Value());
    }
  }
  if (a.Get("minor").IsNumber()) opts->adoptMinor = a.Get("minor").As<Napi::Number>().Uint32Value();
  if (a.Get("flags").IsNumber()) opts->adoptFlags = static_cast<uint64_t>(a.Get("flags").As<Napi::Number>().DoubleValue());
}

void Session::adopt() {
  for (int f : opts_.adoptFds) {
    // systemd passes stored descriptors without FD_CLOEXEC; nothing we spawn may hold them.
    int fl = fcntl(f, F_GETFD);
    if (fl < 0) throw std::runtime_error(std::string("adopted descriptor ") + std::to_string(f) + ": " + std::strerror(errno));
    fcntl(f, F_SETFD, fl | FD_CLOEXEC);
  }
  {
    std::lock_guard<std::mutex> g(fdsMu_);
    fds_ = opts_.adoptFds;
  }
  adopted_ = true;
  minor_ = opts_.adoptMinor;
  initFlags_ = opts_.adoptFlags;
  // The connection negotiated passthrough once, at its INIT: this process may register ids
  // too (if it is allowed to: wantPassthrough asks as the first process did).
  if ((initFlags_ & FUSE_PASSTHROUGH) != 0 && wantPassthrough(FUSE_PASSTHROUGH) != 0) ptEnabled_ = true;
  liveReaders_ = static_cast<int>(fds_.size());
  auto self = shared_from_this();
  for (size_t i = 0; i < fds_.size(); i++) {
    int ch = static_cast<int>(i);
    std::thread([self, ch] { self->reader(ch); }).detach();
  }
  // The readers are waiting: requeue what the previous process read and never answered.
  int err = resend();
  auto* ready = new JsEvent();
  ready->kind = kEventReady;
  ready->a = minor_;
  ready->b = initFlags_;
  ready->c = static_cast<uint64_t>(err);
  if (!post_(ready)) delete ready;
}

int Session::resend() {
  fuse_out_header h;
  std::memset(&h, 0, sizeof h);
  h.len = sizeof h;
  h.error = kNotifyResend;  // a notification: unique 0, the code in `error`
  h.unique = 0;
  ssize_t w;
  do {
    w = write(fd(0), &h, sizeof h);
  } while (w < 0 && errno == EINTR);
  return w < 0 ? errno : 0;
}

std::vector<int> Session::deviceFds() const {
  std::lock_guard<std::mutex> g(fdsMu_);
  return fds_;
}

int notifyWithFds(const char* state, const int* fds, size_t nfds) {
  const char* target = std::getenv("NOTIFY_SOCKET");
  if (target == nullptr || target[0] == '\0') return ENOENT;
  size_t len = std::strlen(target);
  sockaddr_un addr;
  std::memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if ((target[0] != '/' && target[0] != '@') || len >= sizeof addr.sun_path) return EINVAL;
  std::memcpy(addr.sun_path, target, len);
  if (target[0] == '@') addr.sun_path[0] = '\0';
  int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return errno;
  struct iovec iov = {const_cast<char*>(state), std::strlen(state)};
  struct msghdr msg;
  std::memset(&msg, 0, sizeof msg);
  msg.msg_name = &addr;
  msg.msg_namelen = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> ctrl;
  if (nfds > 0) {
    ctrl.assign(CMSG_SPACE(sizeof(int) * nfds), 0);
    msg.msg_control = ctrl.data();
    msg.msg_controllen = ctrl.size();
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    std::memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  ssize_t n;
  do {
    n = sendmsg(s, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  int err = n < 0 ? errno : 0;
  close(s);
  return err;
}

namespace {

// deviceFds(session) → number[]: the /dev/fuse descriptors the readers use (index = channel).
Napi::Value DeviceFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Session* s = sessionFromInfo(info);
  if (s == nullptr) return env.Undefined();
  std::vector<int> fds = s->deviceFds();
  Napi::Array out = Napi::Array::New(env, fds.size());
  for (size_t i = 0; i < fds.size(); i++) out.Set(static_cast<uint32_t>(i), Napi::Number::New(env, fds[i]));
  return out;
}

// sdNotifyFds(state: string, fds: number[]) → 0 or an errno (ENOENT: not under systemd).
Napi::Value SdNotifyFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsArray()) {
    Napi::TypeError::New(env, "sdNotifyFds(state: string, fds: number[])").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string state = info[0].As<Napi::String>().Utf8Value();
  Napi::Array arr = info[1].As<Napi::Array>();
  std::vector<int> fds;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value v = arr[i];
    if (!v.IsNumber()) {
      Napi::TypeError::New(env, "fds must be numbers").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    fds.push_back(v.As<Napi::Number>().Int32Value());
  }
  return Napi::Number::New(env, notifyWithFds(state.c_str(), fds.data(), fds.size()));
}

}  // namespace

void registerRestartExports(Napi::Env env, Napi::Object exports) {
  exports.Set("deviceFds", Napi::Function::New(env, DeviceFds));
  exports.Set("sdNotifyFds", Napi::Function::New(env, SdNotifyFds));
  registerWatchdogExports(env, exports);
  registerBackingJournalExports(env, exports);
}

}  // namespace narfs
