// addon.cc: the N-API surface of the narfs FUSE engine (src/fuse/native-mount.ts is its
// only user).
//
// mount(opts, dispatch) → session. `dispatch(kind, ch, unique, nodeid, a, b, c, flags,
// name, forgets)` runs on the main thread, once per request JS must answer (kind = FUSE
// opcode) and for the events ready (-1) and closed (-2); `name` is a Buffer (names are
// bytes), `forgets` a Float64Array of nodeid/nlookup pairs. Numbers cross as doubles:
// uniques, nodeids, handles and offsets stay below 2^53 in practice and are checked on
// the way back. Replies are plain functions taking the session first; none of them
// blocks on anything but a write to /dev/fuse.
#include <napi.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>

#include "adopt.h"
#include "dir_flags.h"
#include "dirent_pack.h"
#include "hash_file.h"
#include "malloc_trim.h"
#include "session.h"
#include "sd-notify.h"

namespace {

using narfs::JsEvent;
using narfs::Session;

void CallJs(Napi::Env env, Napi::Function fn, void* /*ctx*/, JsEvent* ev);

using Tsfn = Napi::TypedThreadSafeFunction<void, JsEvent, CallJs>;

struct Holder {
  std::shared_ptr<Session> session;
  std::shared_ptr<Tsfn> tsfn;
  bool released = false;
};

void CallJs(Napi::Env env, Napi::Function fn, void* /*ctx*/, JsEvent* ev) {
  std::unique_ptr<JsEvent> owned(ev);
  if (env == nullptr || fn.IsEmpty()) return;
  Napi::Value name = env.Undefined();
  if (!ev->name.empty()) name = Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<const uint8_t*>(ev->name.data()), ev->name.size());
  Napi::Value forgets = env.Undefined();
  if (!ev->forgets.empty()) {
    auto arr = Napi::Float64Array::New(env, ev->forgets.size());
    for (size_t i = 0; i < ev->forgets.size(); i++) arr[i] = static_cast<double>(ev->forgets[i]);
    forgets = arr;
  }
  fn.Call({
      Napi::Number::New(env, ev->kind),
      Napi::Number::New(env, ev->ch),
      Napi::Number::New(env, static_cast<double>(ev->unique)),
      Napi::Number::New(env, static_cast<double>(ev->nodeid)),
      Napi::Number::New(env, static_cast<double>(ev->a)),
      Napi::Number::New(env, static_cast<double>(ev->b)),
      Napi::Number::New(env, static_cast<double>(ev->c)),
      Napi::Number::New(env, ev->flags),
      name,
      forgets,
  });
  if (env.IsExceptionPending()) {
    // A throwing dispatcher must not take the process down from a callback.
    env.GetAndClearPendingException();
  }
}

Session* sessionOf(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal()) {
    Napi::TypeError::New(info.Env(), "first argument must be a session").ThrowAsJavaScriptException();
    return nullptr;
  }
  return info[0].As<Napi::External<Holder>>().Data()->session.get();
}

bool u64(const Napi::CallbackInfo& info, size_t i, uint64_t* out) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a number").ThrowAsJavaScriptException();
    return false;
  }
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > 9007199254740991.0 || std::floor(d) != d) {
    Napi::RangeError::New(info.Env(), "argument " + std::to_string(i) + " must be a whole number >= 0").ThrowAsJavaScriptException();
    return false;
  }
  *out = static_cast<uint64_t>(d);
  return true;
}

Napi::Value Mount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction()) {
    Napi::TypeError::New(env, "mount(options, dispatch)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object o = info[0].As<Napi::Object>();
  narfs::SessionOptions opts;
  Napi::Value mp = o.Get("mountpoint");
  if (!mp.IsString()) {
    Napi::TypeError::New(env, "options.mountpoint must be a string").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  opts.mountpoint = mp.As<Napi::String>().Utf8Value();
  if (o.Get("fsname").IsString()) opts.fsname = o.Get("fsname").As<Napi::String>().Utf8Value();
  opts.allowOther = o.Get("allowOther").ToBoolean().Value();
  opts.useFusermount = o.Get("useFusermount").ToBoolean().Value();
  if (o.Get("threads").IsNumber()) {
    int t = o.Get("threads").As<Napi::Number>().Int32Value();
    opts.threads = t < 1 ? 1 : (t > 16 ? 16 : t);
  }
  if (o.Get("entryTtl").IsNumber()) opts.entryTtl = o.Get("entryTtl").As<Napi::Number>().DoubleValue();
  if (o.Get("attrTtl").IsNumber()) opts.attrTtl = o.Get("attrTtl").As<Napi::Number>().DoubleValue();
  if (o.Get("passthrough").IsBoolean()) opts.passthrough = o.Get("passthrough").As<Napi::Boolean>().Value();
  // FUSE over io_uring (uring_transport.h): transport "uring"; anything else is /dev/fuse.
  if (o.Get("transport").IsString()) opts.uring = o.Get("transport").As<Napi::String>().Utf8Value() == "uring";
  if (o.Get("uringDepth").IsNumber()) {
    int d = o.Get("uringDepth").As<Napi::Number>().Int32Value();
    opts.uringDepth = d < 1 ? 1 : (d > 256 ? 256 : d);
  }
  // Cache files C may hold open (session.h maxFiles; absent: no cap).
  if (o.Get("maxFiles").IsNumber()) {
    double m = o.Get("maxFiles").As<Napi::Number>().DoubleValue();
    opts.maxFiles = m < 1 ? 1 : static_cast<uint64_t>(m);
  }
  narfs::readAdoptOptions(o, &opts);  // restart without unmount (adopt.cc)
  narfs::readBackingJournalOptions(o, &opts);  // backing ids across restarts (backing_journal.cc)

  Tsfn tsfn = Tsfn::New(env, info[1].As<Napi::Function>(), "narfs-fuse", 0, 1);
  auto tsfnPtr = std::make_shared<Tsfn>(tsfn);
  auto session = std::make_shared<Session>(opts, [tsfnPtr](JsEvent* ev) {
    napi_status st = tsfnPtr->NonBlockingCall(ev);
    return st == napi_ok;
  });
  try {
    session->start();
  } catch (const std::exception& e) {
    tsfn.Release();
    Napi::Error::New(env, e.what()).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // The thread-safe function lives as long as readers may post: `release` ends it once the
  // closed event came; `unref` lets the process exit while a detached mount lingers.
  auto* holder = new Holder{session, tsfnPtr, false};
  return Napi::External<Holder>::New(env, holder, [](Napi::Env, Holder* h) { delete h; });
}

Napi::Value Release(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal()) return info.Env().Undefined();
  Holder* h = info[0].As<Napi::External<Holder>>().Data();
  if (!h->released) {
    h->released = true;
    h->tsfn->Release();
  }
  return info.Env().Undefined();
}

Napi::Value Unref(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal()) return info.Env().Undefined();
  Holder* h = info[0].As<Napi::External<Holder>>().Data();
  if (!h->released) h->tsfn->Unref(info.Env());
  return info.Env().Undefined();
}

#define SESSION_AND(n)                     \
  Session* s = sessionOf(info);            \
  if (s == nullptr) return env.Undefined(); \
  uint64_t args[n];                        \
  for (size_t i = 0; i < n; i++)           \
    if (!u64(info, i + 1, &args[i])) return env.Undefined();

Napi::Value ReplyErr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SESSION_AND(3);
  return Napi::Number::New(env, s->replyErr(static_cast<int>(args[0]), args[1], static_cast<int>(args[2])));
}

Napi::Value ReplyEntry(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SESSION_AND(6);
  double ttl = info.Length() > 7 && info[7].IsNumber() ? info[7].As<Napi::Number>().DoubleValue() : 0;
  return Napi::Number::New(env, s->replyEntry(static_cast<int>(args[0]), args[1], args[2], static_cast<uint32_t>(args[3]),
                                              args[4], static_cast<uint32_t>(args[5]), ttl));
}

Napi::Value ReplyAttr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SESSION_AND(6);
  return Napi::Number::New(env, s->replyAttr(static_cast<int>(args[0]), args[1], args[2], static_cast<uint32_t>(args[3]),
                                             args[4], static_cast<uint32_t>(args[5])));
}

// replyOpen(s, ch, unique, nodeid, fh, openFlags) → errno of the reply (0: the kernel has
// the handle and will RELEASE it; otherwise it never will). C picks the io mode.
Napi::Value ReplyOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SESSION_AND(5);
  return Napi::Number::New(env, s->replyOpen(static_cast<int>(args[0]), args[1], args[2], args[3],
                                             static_cast<uint32_t>(args[4])));
}

Napi::Value ReplyStatfs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SESSION_AND(6);
  return Napi::Number::New(env, s->replyStatfs(static_cast<int>(args[0]), args[1], args[2], args[3],
                                               static_cast<uint32_t>(args[4]), static_cast<uint32_t>(args[5])));
}

bool bufferArg(const Napi::CallbackInfo& info, size_t i, const uint8_t** data, size_t* len) {
  if (info.Length() <= i || !info[i].IsBuffer()) {
    Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a Buffer").ThrowAsJavaScriptException();
    return false;
  }
  auto b = info[i].As<Napi::Buffer<uint8_t>>();
  *data = b.Data();
  *len = b.Length();
  return true;
}

Napi::Value ReplyData(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SESSION_AND(2);
  const uint8_t* d;
  size_t n;
  if (!bufferArg(info, 3, &d, &n)) return env.Undefined();
  if (n > Session::kMaxWrite) n = Session::kMaxWrite;
  return Napi::Number::New(env, s->replyData(static_cast<int>(args[0]), args[1], d, n));
}

Napi::Value ReplyReadlink(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SESSION_AND(3);
  const uint8_t* d;
  size_t n;
  if (!bufferArg(info, 4, &d, &n)) return env.Undefined();
  return Napi::Number::New(env, s->replyReadlink(static_cast<int>(args[0]), args[1], args[2], d, n));
}

// replyDir(s, ch, unique, plus, size, startOffset, names: Buffer[], nums: Float64Array
//          [, dirNodeid, eofOffset, targets: (Buffer | undefined)[]])
// nums holds 5 numbers per entry: ino, nodeid, mode, size, nlink; targets the symlink
// target of an entry (READDIRPLUS); eofOffset the offset after the directory's last entry
// (0: not known). Returns the entries the kernel received (0 when the write failed).
Napi::Value ReplyDir(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SESSION_AND(5);
  if (info.Length() < 8 || !info[6].IsArray() || !info[7].IsTypedArray()) {
    Napi::TypeError::New(env, "replyDir(s, ch, unique, plus, size, start, names, nums)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array names = info[6].As<Napi::Array>();
  Napi::TypedArray ta = info[7].As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_float64_array) {
    Napi::TypeError::New(env, "nums must be a Float64Array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Float64Array nums = ta.As<Napi::Float64Array>();
  uint32_t count = names.Length();
  if (nums.ElementLength() < static_cast<size_t>(count) * 5) {
    Napi::RangeError::New(env, "nums is shorter than 5 per name").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::vector<Napi::Buffer<uint8_t>> keep;
  keep.reserve(count);
  std::vector<narfs::DirentIn> entries(count);
  for (uint32_t i = 0; i < count; i++) {
    Napi::Value v = names[i];
    if (!v.IsBuffer()) {
      Napi::TypeError::New(env, "names must be Buffers").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    keep.push_back(v.As<Napi::Buffer<uint8_t>>());
    narfs::DirentIn& e = entries[i];
    e.name = keep.back().Data();
    e.namelen = static_cast<uint32_t>(keep.back().Length() > 1024 ? 0 : keep.back().Length());
    double* p = nums.Data() + static_cast<size_t>(i) * 5;
    for (int k = 0; k < 5; k++) {
      if (!(p[k] >= 0) || p[k] > 9007199254740991.0) {
        Napi::RangeError::New(env, "nums must be whole numbers >= 0").ThrowAsJavaScriptException();
        return env.Undefined();
      }
    }
    e.ino = static_cast<uint64_t>(p[0]);
    e.nodeid = static_cast<uint64_t>(p[1]);
    e.off = args[4] + i + 1;
    std::memset(&e.attr, 0, sizeof e.attr);
    uint64_t size = static_cast<uint64_t>(p[3]);
    e.attr.ino = e.nodeid != 0 ? e.nodeid : e.ino;
    e.attr.mode = static_cast<uint32_t>(p[2]);
    e.attr.size = size;
    e.attr.blocks = (size + 511) / 512;
    e.attr.atime = e.attr.mtime = e.attr.ctime = 1;
    e.attr.nlink = static_cast<uint32_t>(p[4]);
    e.attr.blksize = 4096;
  }
  uint64_t dirNodeid = 0, eofOffset = 0;
  if (info.Length() > 9 && (!u64(info, 8, &dirNodeid) || !u64(info, 9, &eofOffset))) return env.Undefined();
  std::vector<Session::Bytes> targets;
  std::vector<Napi::Buffer<uint8_t>> keepTargets;
  bool haveTargets = info.Length() > 10 && info[10].IsArray();
  if (haveTargets) {
    Napi::Array ts = info[10].As<Napi::Array>();
    targets.resize(count);
    keepTargets.reserve(count);
    for (uint32_t i = 0; i < count && i < ts.Length(); i++) {
      Napi::Value v = ts[i];
      if (!v.IsBuffer()) continue;
      keepTargets.push_back(v.As<Napi::Buffer<uint8_t>>());
      targets[i].data = keepTargets.back().Data();
      targets[i].len = keepTargets.back().Length();
    }
  }
  int err = 0;
  size_t n = s->replyDir(static_cast<int>(args[0]), args[1], args[2] != 0, static_cast<uint32_t>(args[3]), entries,
                         haveTargets ? &targets : nullptr, dirNodeid, eofOffset, &err);
  // A reply the kernel did not take (the request was interrupted) delivered no entry.
  return Napi::Number::New(env, err == 0 ? static_cast<double>(n) : 0);
}

// setContent(s, nodeid, path, offset, size, fileTotal) → whether reads are now served here.
Napi::Value SetContent(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Session* s = sessionOf(info);
  if (s == nullptr) return env.Undefined();
  uint64_t nodeid, off, size, total;
  if (!u64(info, 1, &nodeid) || !u64(info, 3, &off) || !u64(info, 4, &size) || !u64(info, 5, &total)) return env.Undefined();
  if (!info[2].IsString()) {
    Napi::TypeError::New(env, "path must be a string").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Boolean::New(env, s->setContent(nodeid, info[2].As<Napi::String>().Utf8Value(), off, size, total));
}

// setLocation(s, nodeid, path, offset, size, fileTotal): where the verified bytes of a
// regular file lie, given with its entry; C opens it on OPEN (session.h setLocation).
Napi::Value SetLocation(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Session* s = sessionOf(info);
  if (s == nullptr) return env.Undefined();
  uint64_t nodeid, off, size, total;
  if (!u64(info, 1, &nodeid) || !u64(info, 3, &off) || !u64(info, 4, &size) || !u64(info, 5, &total)) return env.Undefined();
  if (!info[2].IsString()) {
    Napi::TypeError::New(env, "path must be a string").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  s->setLocation(nodeid, info[2].As<Napi::String>().Utf8Value(), off, size, total);
  return env.Undefined();
}

// evictContent(s, path) → whether the cache may evict `path` (C let go of it); false while
// a file of the kernel is open on it.
Napi::Value EvictContent(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Session* s = sessionOf(info);
  if (s == nullptr || info.Length() < 2 || !info[1].IsString()) return Napi::Boolean::New(env, true);
  return Napi::Boolean::New(env, s->evictContent(info[1].As<Napi::String>().Utf8Value()));
}

Napi::Value DropContent(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Session* s = sessionOf(info);
  if (s == nullptr) return env.Undefined();
  if (info.Length() < 2 || !info[1].IsString()) return env.Undefined();
  s->dropContent(info[1].As<Napi::String>().Utf8Value());
  return env.Undefined();
}

Napi::Value ContentInUse(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Session* s = sessionOf(info);
  if (s == nullptr || info.Length() < 2 || !info[1].IsString()) return Napi::Boolean::New(env, false);
  return Napi::Boolean::New(env, s->contentInUse(info[1].As<Napi::String>().Utf8Value()));
}

// forgetNode(s, nodeid, evicted?): JS dropped the node; `evicted`: because the kernel
// FORGOT it (not a lookup given back that the kernel never took).
Napi::Value ForgetNode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SESSION_AND(1);
  s->forgetNode(args[0], info.Length() > 2 && info[2].ToBoolean().Value());
  return env.Undefined();
}

Napi::Value GetStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Session* s = sessionOf(info);
  if (s == nullptr) return env.Undefined();
  narfs::Stats st = s->stats();
  Napi::Object o = Napi::Object::New(env);
  o.Set("toJs", static_cast<double>(st.toJs));
  Napi::Object byOp = Napi::Object::New(env);
  for (uint32_t i = 0; i < 64; i++) {
    if (st.toJsByOpcode[i] != 0) byOp.Set(i, static_cast<double>(st.toJsByOpcode[i]));
  }
  o.Set("toJsByOpcode", byOp);
  o.Set("inC", static_cast<double>(st.inC));
  Napi::Object inCByOp = Napi::Object::New(env);
  for (uint32_t i = 0; i < 64; i++) {
    if (st.inCByOpcode[i] != 0) inCByOp.Set(i, static_cast<double>(st.inCByOpcode[i]));
  }
  o.Set("inCByOpcode", inCByOp);
  o.Set("nodes", static_cast<double>(st.nodes));
  o.Set("readsInC", static_cast<double>(st.readsInC));
  o.Set("bytesInC", static_cast<double>(st.bytesInC));
  o.Set("passthroughOffered", (s->initFlags() >> 63) != 0);
  o.Set("passthroughEnabled", st.passthroughEnabled);
  o.Set("passthroughOpens", static_cast<double>(st.passthroughOpens));
  o.Set("backingLive", static_cast<double>(st.backingLive));
  o.Set("passthroughFallbacks", static_cast<double>(st.passthroughFallbacks));
  o.Set("passthroughConflicts", static_cast<double>(st.passthroughConflicts));
  o.Set("backingAdopted", static_cast<double>(st.backingAdopted));
  o.Set("backingJournalFailed", st.backingJournalFailed);
  o.Set("uringActive", st.uringActive);
  o.Set("uringQueues", static_cast<double>(st.uringQueues));
  o.Set("uringRequests", static_cast<double>(st.uringRequests));
  o.Set("uringError", st.uringError);
  o.Set("locationOpens", static_cast<double>(st.locationOpens));
  o.Set("locationFallbacks", static_cast<double>(st.locationFallbacks));
  o.Set("heldFiles", static_cast<double>(st.heldFiles));
  o.Set("contentReclaimed", static_cast<double>(st.contentReclaimed));
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("mount", Napi::Function::New(env, Mount));
  exports.Set("release", Napi::Function::New(env, Release));
  exports.Set("unref", Napi::Function::New(env, Unref));
  exports.Set("replyErr", Napi::Function::New(env, ReplyErr));
  exports.Set("replyEntry", Napi::Function::New(env, ReplyEntry));
  exports.Set("replyAttr", Napi::Function::New(env, ReplyAttr));
  exports.Set("replyOpen", Napi::Function::New(env, ReplyOpen));
  exports.Set("replyData", Napi::Function::New(env, ReplyData));
  exports.Set("replyReadlink", Napi::Function::New(env, ReplyReadlink));
  exports.Set("replyStatfs", Napi::Function::New(env, ReplyStatfs));
  exports.Set("replyDir", Napi::Function::New(env, ReplyDir));
  exports.Set("setContent", Napi::Function::New(env, SetContent));
  exports.Set("dropContent", Napi::Function::New(env, DropContent));
  exports.Set("setLocation", Napi::Function::New(env, SetLocation));
  exports.Set("evictContent", Napi::Function::New(env, EvictContent));
  exports.Set("contentInUse", Napi::Function::New(env, ContentInUse));
  exports.Set("forgetNode", Napi::Function::New(env, ForgetNode));
  exports.Set("stats", Napi::Function::New(env, GetStats));
  exports.Set("sdNotify", Napi::Function::New(env, narfs::SdNotify));
  narfs::registerRestartExports(env, exports);  // adopt.cc, watchdog.cc
  narfs::registerHashExports(env, exports);     // hash_file.cc
  narfs::registerDirFlagExports(env, exports);  // dir_flags.cc
  narfs::registerMallocTrimExport(env, exports); // malloc_trim.cc
  return exports;
}

}  // namespace

narfs::Session* narfs::sessionFromInfo(const Napi::CallbackInfo& info) { return sessionOf(info); }

NODE_API_MODULE(narfs_fuse, Init)
