// hash_file.cc: hashFile(path) → Promise<{ digest, size }>, the SHA-256 of a whole file,
// computed on libuv's thread pool (not the JS thread) with the OpenSSL that node itself
// links and exports (EVP_sha256; node's headers ship openssl/evp.h). The blob store uses it
// to re-hash cached files of an earlier process (src/cache/blob-store.ts verifyBlob), so
// many files opened at once are checked in parallel while the JS thread keeps serving.
//
// Reads 1 MiB at a time with pread from offset 0 to EOF (EINTR retried); `size` is the
// number of bytes hashed, so the caller compares it with the size it stored. Errors reject
// with an Error whose `code` is the errno name (ENOENT: the file is gone).
#include "hash_file.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

namespace narfs {
namespace {

class HashWorker : public Napi::AsyncWorker {
 public:
  HashWorker(Napi::Env env, std::string path)
      : Napi::AsyncWorker(env, "narfs:hashFile"), path_(std::move(path)), deferred_(Napi::Promise::Deferred::New(env)) {}

  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    int fd = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      err_ = errno;
      return;
    }
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    if (ctx == nullptr || EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) != 1) {
      err_ = ENOMEM;
    } else {
      std::vector<unsigned char> buf(1 << 20);
      for (;;) {
        ssize_t n = pread(fd, buf.data(), buf.size(), static_cast<off_t>(size_));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
          err_ = errno;
          break;
        }
        if (n == 0) break;
        EVP_DigestUpdate(ctx, buf.data(), static_cast<size_t>(n));
        size_ += static_cast<uint64_t>(n);
      }
      unsigned int len = 0;
      if (err_ == 0 && EVP_DigestFinal_ex(ctx, digest_, &len) != 1) err_ = EIO;
    }
    EVP_MD_CTX_free(ctx);
    close(fd);
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0) {
      Napi::Error e = Napi::Error::New(env, std::string(strerrorname_np(err_) ? strerrorname_np(err_) : "EIO") + ": " +
                                                std::strerror(err_) + ", hashing " + path_);
      e.Set("code", Napi::String::New(env, strerrorname_np(err_) ? strerrorname_np(err_) : "EIO"));
      e.Set("errno", Napi::Number::New(env, -err_));
      deferred_.Reject(e.Value());
      return;
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("digest", Napi::Buffer<uint8_t>::Copy(env, digest_, sizeof digest_));
    o.Set("size", Napi::Number::New(env, static_cast<double>(size_)));
    deferred_.Resolve(o);
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  std::string path_;
  Napi::Promise::Deferred deferred_;
  int err_ = 0;
  uint64_t size_ = 0;
  unsigned char digest_[32] = {};
};

Napi::Value HashFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "hashFile(path: string)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto* w = new HashWorker(env, info[0].As<Napi::String>().Utf8Value());
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

}  // namespace

void registerHashExports(Napi::Env env, Napi::Object exports) {
  exports.Set("hashFile", Napi::Function::New(env, HashFile));
}

}  // namespace narfs
