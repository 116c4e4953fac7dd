// Unit tests of the libtorch-free pieces: safetensors round trip, its header as written and bad
// files, the ring plan and the schedule.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>

#include "safetensors.h"
#include "stream_plan.h"

using namespace arvid;

static int failures = 0;
#define CHECK(cond)                                                    \
  do {                                                                 \
    if (!(cond)) {                                                     \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                      \
    }                                                                  \
  } while (0)

template <class F>
static bool throws_with(F f, const char* needle) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return std::strstr(e.what(), needle) != nullptr;
  }
  return false;
}

// A safetensors file of `header` (its 8-byte length first) and `data_bytes` zero bytes.
static void write_raw(const std::string& path, const std::string& header, size_t data_bytes) {
  std::ofstream out(path, std::ios::binary);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xFF));
  out << header << std::string(data_bytes, '\0');
}

static std::string header_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
  std::string h(n, '\0');
  in.read(h.data(), static_cast<std::streamsize>(n));
  return h;
}

static void test_safetensors(const std::string& dir) {
  StFile f;
  StTensor a;
  a.dtype = "F32";
  a.shape = {2, 3};
  float vals[6] = {1, -2, 3.5f, 0, 1e-7f, 42};
  a.data.assign(reinterpret_cast<uint8_t*>(vals), reinterpret_cast<uint8_t*>(vals) + sizeof vals);
  StTensor e;
  e.dtype = "I64";
  e.shape = {0};
  f.tensors["a"] = a;
  f.tensors["empty"] = e;
  f.metadata["k"] = "v";
  const std::string path = dir + "/selftest.safetensors";
  write_safetensors(path, f);
  StFile g = read_safetensors(path);
  CHECK(g.tensors.size() == 2);
  CHECK(g.tensors.at("a").shape == a.shape);
  CHECK(g.tensors.at("a").data == a.data);
  CHECK(g.tensors.at("empty").numel() == 0);
  CHECK(g.metadata.at("k") == "v");
  // The header as the format's other writers lay it out: compact, metadata first, tensors in the
  // order of their bytes, padded with spaces to 8 bytes.
  const std::string h = header_of(path);
  CHECK(h.rfind(
            R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
            R"("empty":{"dtype":"I64","shape":[0],"data_offsets":[24,24]}})",
            0) == 0);
  CHECK((h.size() + 8) % 8 == 0 && h.find_last_not_of(' ') == h.find_last_of('}'));
  {
    std::ofstream bad(dir + "/bad.safetensors", std::ios::binary);
    bad << "garbage";
  }
  CHECK(throws_with([&] { read_safetensors(dir + "/bad.safetensors"); }, "not a safetensors file"));
  {  // a header claiming more bytes than the file has
    std::ifstream in(path, std::ios::binary);
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream cut(dir + "/cut.safetensors", std::ios::binary);
    cut << all.substr(0, all.size() - 4);
  }
  CHECK(throws_with([&] { read_safetensors(dir + "/cut.safetensors"); }, "past the end"));
  CHECK(throws_with([&] { read_safetensors(dir + "/nope.safetensors"); }, "cannot open"));
  // Bad headers: one line naming the file, and the tensor where one is at fault.
  auto refused = [&](const char* header, size_t data_bytes, const char* needle) {
    const std::string bad = dir + "/header.safetensors";
    write_raw(bad, header, data_bytes);
    return throws_with([&] { read_safetensors(bad); }, needle) &&
           throws_with([&] { read_safetensors(bad); }, "header.safetensors: ");
  };
  CHECK(refused(R"({"a": })", 0, "bad safetensors header"));
  CHECK(refused(R"({} x)", 0, "bad safetensors header"));
  CHECK(refused(R"([1, 2])", 0, "not a JSON object"));
  CHECK(refused(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8, "tensor 'a': expected a whole number"));
  CHECK(refused(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8, "tensor 'a': shape must be an array"));
  CHECK(refused(R"({"a":{"dtype":"F32","shape":[2]}})", 8, "data_offsets"));
  CHECK(refused(R"({"a":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})", 8, "tensor 'a': "));
  CHECK(refused(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8, "negative dimension"));
  CHECK(refused(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8, "shape and dtype need 12"));
  CHECK(refused(R"({"__metadata__":{"k":1}})", 0, "tensor '__metadata__': "));
}

static void test_plan() {
  StreamSettings s;  // LongLive: chunk 3, sink 3, attention 12 -> 4 slots
  RingPlanner rp(s, 10);
  int slots[8];
  for (int c = 0; c < 8; ++c) {
    ForwardPlan p = rp.plan_chunk(3 * c);
    slots[c] = static_cast<int>(p.write_start / 30);
    if (c < 4) CHECK(p.kv_len == 30 * (c + 1));
    else CHECK(p.kv_len == 120);
    rp.commit(p);
  }
  const int want[8] = {0, 1, 2, 3, 1, 2, 3, 1};  // fill, then the oldest window slot; slot 0 (sink) stays
  for (int c = 0; c < 8; ++c) CHECK(slots[c] == want[c]);
  // global_sink: a switch past the first window keeps the sink and re-runs the last 9 frames.
  ForwardPlan r = rp.plan_recache(24);
  CHECK(r.frame_start == 15 && r.num_frames == 9 && r.write_start == 30 && r.kv_len == 120);
  ForwardPlan r0 = rp.plan_recache(6);
  CHECK(r0.frame_start == 0 && r0.num_frames == 6 && r0.write_start == 0 && r0.kv_len == 60);
  s.global_sink = false;
  RingPlanner rf(s, 10);
  ForwardPlan r2 = rf.plan_recache(24);
  CHECK(r2.frame_start == 12 && r2.num_frames == 12 && r2.write_start == 0 && r2.kv_len == 120);
  CHECK(r2.filled_after == 4 && r2.next_slot_after == 1);
  StreamSettings bad;
  bad.sink_frames = 4;
  CHECK(throws_with([&] { RingPlanner(bad, 1); }, "multiple of chunk_frames"));
}

static void test_schedule() {
  Schedule sc = make_schedule(StreamSettings{});
  CHECK(sc.timesteps.size() == 4);
  CHECK(sc.timesteps[0] == 1000.0f);
  CHECK(std::fabs(sc.timesteps[1] - 937.5f) < 1e-3f);
  CHECK(std::fabs(sc.timesteps[2] - 833.333f) < 1e-2f);
  CHECK(std::fabs(sc.timesteps[3] - 625.0f) < 1e-3f);
  auto e = sinusoidal_embedding(4, 0.0f);
  CHECK(e.size() == 4 && e[0] == 1.0f && e[2] == 0.0f);
}

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : ".";
  test_safetensors(dir);
  test_plan();
  test_schedule();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("arvid native selftest: all checks passed\n");
  return 0;
}
