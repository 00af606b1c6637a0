// backing_journal.cc: see backing_journal.h.
#include "backing_journal.h"

#include <errno.h>
#include <unistd.h>

#include <cmath>
#include <cstring>

#include "adopt.h"
#include "session.h"

namespace narfs {

uint32_t crc32(const uint8_t* data, size_t len) {
  // The reflected CRC-32 of zlib (polynomial 0xEDB88320), bit by bit: 24-byte records.
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < len; i++) {
    c ^= data[i];
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return c ^ 0xFFFFFFFFu;
}

namespace {

void put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

void put64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

}  // namespace

void encodeBackingRecord(uint8_t out[kBackingRecord], BackingOp op, uint64_t nodeid, uint32_t backingId) {
  std::memset(out, 0, kBackingRecord);
  put32(out, 16);
  out[8] = op;
  put32(out + 12, backingId);
  put64(out + 16, nodeid);
  put32(out + 4, crc32(out + 8, 16));
}

int appendBackingRecord(int fd, uint64_t* size, BackingOp op, uint64_t nodeid, uint32_t backingId) {
  uint8_t rec[kBackingRecord];
  encodeBackingRecord(rec, op, nodeid, backingId);
  ssize_t w;
  do {
    w = write(fd, rec, sizeof rec);
  } while (w < 0 && errno == EINTR);
  if (w == static_cast<ssize_t>(sizeof rec)) {
    *size += sizeof rec;
    return 0;
  }
  int err = w < 0 ? errno : EIO;
  // A torn record would hide every later one from the reader: cut it off now (if that
  // fails too, the reader cuts it at the next open, and the caller writes no more).
  if (ftruncate(fd, static_cast<off_t>(*size)) != 0) err = err == 0 ? EIO : err;
  return err;
}

void readBackingJournalOptions(const Napi::Object& o, SessionOptions* opts) {
  Napi::Value v = o.Get("backingJournal");
  if (!v.IsObject()) return;
  Napi::Object j = v.As<Napi::Object>();
  if (!j.Get("path").IsString()) return;
  opts->backingJournal = j.Get("path").As<Napi::String>().Utf8Value();
  if (j.Get("size").IsNumber()) opts->backingJournalSize = static_cast<uint64_t>(j.Get("size").As<Napi::Number>().DoubleValue());
  if (j.Get("unknownBelow").IsNumber()) {
    opts->ioUnknownBelow = static_cast<uint64_t>(j.Get("unknownBelow").As<Napi::Number>().DoubleValue());
  }
  Napi::Value live = j.Get("live");
  if (live.IsTypedArray() && live.As<Napi::TypedArray>().TypedArrayType() == napi_float64_array) {
    Napi::Float64Array a = live.As<Napi::Float64Array>();
    for (size_t i = 0; i + 3 <= a.ElementLength(); i += 3) {
      double nodeid = a[i], id = a[i + 1];
      if (!(nodeid > 0) || !(id > 0) || id > 2147483647.0 || std::floor(id) != id) continue;
      opts->adoptedBacking.push_back({static_cast<uint64_t>(nodeid), static_cast<int32_t>(id), a[i + 2] != 0});
    }
  }
}

namespace {

Napi::Value BackingJournalAppend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  for (size_t i = 0; i < 5; i++) {
    if (info.Length() <= i || !info[i].IsNumber()) {
      Napi::TypeError::New(env, "backingJournalAppend(fd, size, op, nodeid, backingId)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  uint64_t size = static_cast<uint64_t>(info[1].As<Napi::Number>().DoubleValue());
  auto op = static_cast<BackingOp>(info[2].As<Napi::Number>().Uint32Value());
  uint64_t nodeid = static_cast<uint64_t>(info[3].As<Napi::Number>().DoubleValue());
  uint32_t id = info[4].As<Napi::Number>().Uint32Value();
  int err = appendBackingRecord(fd, &size, op, nodeid, id);
  return Napi::Number::New(env, err != 0 ? -static_cast<double>(err) : static_cast<double>(size));
}

}  // namespace

void registerBackingJournalExports(Napi::Env env, Napi::Object exports) {
  exports.Set("backingJournalAppend", Napi::Function::New(env, BackingJournalAppend));
}

}  // namespace narfs
