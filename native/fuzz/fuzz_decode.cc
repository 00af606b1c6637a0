// fuzz_decode.cc: feeds decodeRequest (and packDirents) with malformed, truncated and
// oversized FUSE requests, outside any mount. Built with AddressSanitizer and
// UndefinedBehaviorSanitizer by native/fuzz/run.sh; every input lives in a heap block of
// exactly its length, so one byte read past the end is a crash.
//
// Inputs come from a seeded xorshift generator (reproducible: `fuzz_decode N SEED`):
// well-formed requests of every opcode, then mutated (truncated, header len lied about,
// counts and sizes set to extremes, random bytes, names without NUL, buffers up to
// 1.1 MiB). After a successful decode every field it returns is used, so pointers that
// escape the buffer are caught too. Exit 0 after N inputs; prints per-status counts.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "decode.h"
#include "dirent_pack.h"
#include "fuse_abi.h"

namespace {

uint64_t state = 0x9e3779b97f4a7c15ULL;
uint64_t next() {
  state ^= state << 13;
  state ^= state >> 7;
  state ^= state << 17;
  return state;
}
uint32_t below(uint32_t n) { return n == 0 ? 0 : static_cast<uint32_t>(next() % n); }

const uint32_t kOps[] = {FUSE_LOOKUP, FUSE_FORGET, FUSE_GETATTR, FUSE_SETATTR, FUSE_READLINK, FUSE_OPEN,
                         FUSE_READ, FUSE_WRITE, FUSE_STATFS, FUSE_RELEASE, FUSE_GETXATTR, FUSE_LISTXATTR,
                         FUSE_FLUSH, FUSE_INIT, FUSE_OPENDIR, FUSE_READDIR, FUSE_RELEASEDIR, FUSE_ACCESS,
                         FUSE_INTERRUPT, FUSE_BATCH_FORGET, FUSE_READDIRPLUS, FUSE_DESTROY, 0, 9999, 0xffffffffu};

std::vector<uint8_t> wellFormed(uint32_t op) {
  std::vector<uint8_t> body;
  auto put = [&](const void* p, size_t n) { body.insert(body.end(), (const uint8_t*)p, (const uint8_t*)p + n); };
  switch (op) {
    case FUSE_LOOKUP: {
      uint32_t n = 1 + below(300);
      for (uint32_t i = 0; i < n; i++) body.push_back(static_cast<uint8_t>(1 + below(255)));
      body.push_back(0);
      break;
    }
    case FUSE_GETXATTR: {
      fuse_getxattr_in g{below(70000), 0};
      put(&g, sizeof g);
      const char* n = "security.selinux";
      put(n, strlen(n) + 1);
      break;
    }
    case FUSE_BATCH_FORGET: {
      uint32_t count = below(64);
      fuse_batch_forget_in b{count, 0};
      put(&b, sizeof b);
      for (uint32_t i = 0; i < count; i++) {
        fuse_forget_one f{next(), next()};
        put(&f, sizeof f);
      }
      break;
    }
    case FUSE_INIT: {
      uint32_t v[16] = {7, 45, 131072, FUSE_INIT_EXT | 0x3fffffff, 0x3f};
      put(v, sizeof v);
      break;
    }
    default: {
      uint32_t n = below(80);
      for (uint32_t i = 0; i < n; i++) body.push_back(static_cast<uint8_t>(next()));
    }
  }
  fuse_in_header h{};
  h.len = static_cast<uint32_t>(sizeof h + body.size());
  h.opcode = op;
  h.unique = next();
  h.nodeid = next();
  std::vector<uint8_t> out(sizeof h);
  std::memcpy(out.data(), &h, sizeof h);
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

void mutate(std::vector<uint8_t>& b) {
  switch (below(9)) {
    case 0: break;  // as is
    case 1: b.resize(below(static_cast<uint32_t>(b.size()) + 1)); break;  // truncated
    case 2: if (b.size() >= 4) { uint32_t l = static_cast<uint32_t>(next()); std::memcpy(b.data(), &l, 4); } break;
    case 3: { size_t extra = below(2) ? below(64) : (1u << 20) + below(100000); b.resize(b.size() + extra, static_cast<uint8_t>(next())); break; }
    case 4: for (int i = 0; i < 8 && !b.empty(); i++) b[below(static_cast<uint32_t>(b.size()))] = static_cast<uint8_t>(next()); break;
    case 5: if (b.size() > 40) { uint32_t c = below(2) ? 0xffffffffu : below(100000); std::memcpy(b.data() + 40, &c, 4); } break;
    case 6: for (auto& x : b) if (x == 0 && b.size() > 40) x = 'x'; break;  // names lose their NUL
    case 7: b.clear(); break;
    case 8: { size_t n = below(200); b.resize(n); for (auto& x : b) x = static_cast<uint8_t>(next()); break; }
  }
  // Keep the header's len honest half the time, so bodies get decoded.
  if (b.size() >= 4 && below(2)) { uint32_t l = static_cast<uint32_t>(b.size()); std::memcpy(b.data(), &l, 4); }
}

volatile uint64_t sink;

void use(const narfs::Request& r) {
  uint64_t acc = r.unique ^ r.nodeid ^ r.fh ^ r.offset ^ r.size ^ r.initFlags ^ r.interruptUnique;
  for (uint32_t i = 0; i < r.namelen; i++) acc += r.name[i];
  for (uint32_t i = 0; i < r.forgetCount; i++) {
    uint64_t id, n;
    narfs::forgetAt(r, i, &id, &n);
    acc ^= id + n;
  }
  sink = acc;
}

void fuzzPack() {
  size_t count = below(20);
  std::vector<std::vector<uint8_t>> names(count);
  std::vector<narfs::DirentIn> entries(count);
  for (size_t i = 0; i < count; i++) {
    names[i].resize(below(300));
    for (auto& x : names[i]) x = static_cast<uint8_t>(1 + below(255));
    entries[i] = narfs::DirentIn{names[i].data(), static_cast<uint32_t>(names[i].size()), next(), next() & 1 ? next() : 0, i + 1, {}};
    entries[i].attr.mode = static_cast<uint32_t>(next());
  }
  size_t cap = below(4096);
  uint8_t* out = static_cast<uint8_t*>(std::malloc(cap == 0 ? 1 : cap));
  size_t used = 0;
  size_t n = narfs::packDirents(below(2) != 0, entries.data(), count, 1, 1, out, cap, &used);
  if (n > count || used > cap) std::abort();
  std::free(out);
}

}  // namespace

int main(int argc, char** argv) {
  long count = argc > 1 ? std::atol(argv[1]) : 100000;
  if (argc > 2) state = std::strtoull(argv[2], nullptr, 10) | 1;
  long byStatus[4] = {0, 0, 0, 0};
  for (long i = 0; i < count; i++) {
    std::vector<uint8_t> b = wellFormed(kOps[below(sizeof kOps / sizeof kOps[0])]);
    mutate(b);
    // An exact-size heap copy: ASan flags any read past its end.
    uint8_t* heap = static_cast<uint8_t*>(std::malloc(b.empty() ? 1 : b.size()));
    if (!b.empty()) std::memcpy(heap, b.data(), b.size());
    narfs::Request r;
    narfs::DecodeStatus st = narfs::decodeRequest(b.empty() ? nullptr : heap, b.size(), &r);
    byStatus[static_cast<int>(st)]++;
    if (st == narfs::DecodeStatus::Ok) use(r);
    std::free(heap);
    if (i % 8 == 0) fuzzPack();
  }
  std::printf("fuzz_decode: %ld inputs: ok %ld, too short %ld, len mismatch %ld, bad body %ld\n", count, byStatus[0],
              byStatus[1], byStatus[2], byStatus[3]);
  return 0;
}
