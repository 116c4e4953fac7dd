// arvid-stream: the whole streaming run of arvid's causal Wan DiT in C++, on AOTInductor packages
// exported by `arvid export aoti` (no Python at run time).
//
// The host does what arvid.runtime does around the exported graphs: the ring-buffer plan (write
// slot, valid length, frame offset), the 4-step schedule with re-noise between steps, the
// clean-context update, prompt switches with KV re-cache (sink kept or rebuilt per global_sink),
// the timestep embedding (float64, on the host) and the write of each forward's new K/V into the
// ring slots. The graphs are functional: cache in, new K/V out (see export/graphs.py).
//
//   arvid-stream --package-dir DIR [--package-dir DIR2 ...] --inputs in.safetensors --out latents.safetensors
//
// in.safetensors: noise [B, F, C, H, W] f32; renoise [chunks, steps-1, B, chunk, C, H, W] f32;
// text_k, text_v [P, L, B, H, Lt, D] (the cross-attention K/V of each prompt, model dtype);
// switch_frames [P-1] i64 (absent or empty for one prompt).
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "json_util.h"
#include "safetensors.h"
#include "stream_plan.h"

namespace arvid {
namespace {

using nlohmann::json;

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

at::ScalarType st_to_torch(const std::string& d) {
  if (d == "F32") return at::kFloat;
  if (d == "F64") return at::kDouble;
  if (d == "F16") return at::kHalf;
  if (d == "BF16") return at::kBFloat16;
  if (d == "I64") return at::kLong;
  if (d == "I32") return at::kInt;
  if (d == "I16") return at::kShort;
  if (d == "I8") return at::kChar;
  if (d == "U8") return at::kByte;
  if (d == "BOOL") return at::kBool;
  throw std::runtime_error("safetensors dtype " + d + " is not supported here");
}

at::ScalarType name_to_torch(const std::string& d) {
  if (d == "float32") return at::kFloat;
  if (d == "bfloat16") return at::kBFloat16;
  if (d == "float16") return at::kHalf;
  if (d == "int32") return at::kInt;
  if (d == "int64") return at::kLong;
  throw std::runtime_error("graph dtype " + d + " is not supported here");
}

at::Tensor to_torch(const StTensor& t) {
  std::vector<int64_t> shape(t.shape.begin(), t.shape.end());
  auto opts = at::TensorOptions().dtype(st_to_torch(t.dtype));
  if (t.data.empty()) return at::empty(shape, opts);
  return at::from_blob(const_cast<uint8_t*>(t.data.data()), shape, opts).clone();
}

StTensor from_torch(const at::Tensor& x) {
  at::Tensor c = x.to(at::kCPU).contiguous();
  StTensor t;
  if (c.scalar_type() != at::kFloat) throw std::runtime_error("only float32 outputs are written");
  t.dtype = "F32";
  t.shape.assign(c.sizes().begin(), c.sizes().end());
  const auto* p = static_cast<const uint8_t*>(c.data_ptr());
  t.data.assign(p, p + c.nbytes());
  return t;
}

// -- packages ------------------------------------------------------------------------------
using Constants = std::unordered_map<std::string, at::Tensor>;

// The weights file beside a directory's packages (export/aoti.py keeps the constants out of the
// .so), on the packages' device; `bytes` is its size in the manifest (-1: not recorded). Each
// tensor's file bytes are freed once converted, so the weights sit in host memory about once.
std::shared_ptr<Constants> read_constants(const std::string& path, int64_t bytes, const std::string& device) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error(path + " is missing: the packages take their weights from it; export them again");
  const auto size = static_cast<int64_t>(in.tellg());
  if (bytes >= 0 && size != bytes)  // another export's file, or a cut-short copy
    throw std::runtime_error(path + " holds " + std::to_string(size) + " bytes, the manifest " + std::to_string(bytes) +
                             "; export them again");
  StFile f = read_safetensors(path);
  auto out = std::make_shared<Constants>();
  const at::Device dev(device);
  for (auto& [name, t] : f.tensors) {
    out->emplace(name, to_torch(t).to(dev));
    std::vector<uint8_t>().swap(t.data);
  }
  return out;
}

struct Graph {
  std::string kind;  // "step" | "chunk" | "recache"
  int num_frames = 0;
  std::string path;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;

  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) {
    auto out = loader->run(inputs);
    if (out.size() != 3) throw std::runtime_error(path + ": expected 3 outputs (x0, new_k, new_v), got " + std::to_string(out.size()));
    return out;
  }
};

struct Geometry {
  int64_t batch = 0, channels = 0, height = 0, width = 0;
  int64_t layers = 0, heads = 0, head_dim = 0, capacity = 0, text_len = 0, freq_dim = 0;
  int64_t tokens_per_frame = 0;
  at::ScalarType model_dtype = at::kFloat;
  int64_t rope_positions = 0;
  std::string device = "cpu";
};

std::vector<int64_t> spec_shape(const json& spec, const std::string& name, at::ScalarType* dtype = nullptr) {
  for (const json& t : spec.at("inputs")) {
    if (t.at("name").get<std::string>() != name) continue;
    if (dtype) *dtype = name_to_torch(t.at("dtype").get<std::string>());
    return json_whole_list<int64_t>(t.at("shape"));
  }
  throw std::runtime_error("the graph spec has no input '" + name + "'");
}

struct Packages {
  StreamSettings stream;
  Geometry geo;
  std::string weights;
  std::vector<std::shared_ptr<Constants>> constants;  // user-managed by the runners (torch 2.13 also references them)
  std::unique_ptr<Graph> step, chunk;
  std::map<int, std::unique_ptr<Graph>> recache;  // by number of frames
};

StreamSettings parse_stream(const json& j) {
  StreamSettings s;
  s.chunk_frames = json_whole<int>(j.at("chunk_frames"));
  s.sink_frames = json_whole<int>(j.at("sink_frames"));
  s.attention_frames = json_whole<int>(j.at("attention_frames"));
  s.denoising_steps = json_whole_list<int>(j.at("denoising_steps"));
  s.num_train_timesteps = json_whole<int>(j.at("num_train_timesteps"));
  s.shift = j.at("shift").get<double>();
  s.context_noise = j.at("context_noise").get<double>();
  s.global_sink = j.at("global_sink").get<bool>();
  s.validate();
  return s;
}

void load_dir(Packages& pk, const std::string& dir, bool first) {
  const std::string mpath = dir + "/export.json";
  json m;
  try {
    m = json::parse(read_text(mpath));
  } catch (const std::exception& e) {
    throw std::runtime_error(mpath + ": not a readable export manifest (" + e.what() + ")");
  }
  try {
    if (!m.contains("format") || m.at("format").get<std::string>() != "aoti")
      throw std::runtime_error("not an AOTInductor export (format is not 'aoti')");
    const std::string dev = m.at("device").at("device").get<std::string>();
    const std::string dev_type = dev.substr(0, dev.find(':'));
    if (dev_type == "cuda" && !torch::cuda::is_available())
      throw std::runtime_error("the packages were built for " + dev + " and no CUDA device is available");
    if (dev_type != "cuda" && dev_type != "cpu") throw std::runtime_error("unsupported package device " + dev);
    StreamSettings stream = parse_stream(m.at("stream_config"));
    const std::string weights = m.at("weights_sha256").get<std::string>();
    const json& spec = m.at("spec");
    Geometry g;
    g.device = dev;
    auto x = spec_shape(spec, "x");
    auto cache = spec_shape(spec, "cache_k", &g.model_dtype);
    auto text = spec_shape(spec, "text_k");
    if (x.size() != 5 || cache.size() != 5 || text.size() != 5) throw std::runtime_error("unexpected ranks in the graph spec");
    g.batch = x[0], g.channels = x[2], g.height = x[3], g.width = x[4];
    g.layers = cache[0], g.capacity = cache[2], g.heads = cache[3], g.head_dim = cache[4];
    g.text_len = text[3];
    g.rope_positions = json_whole<int64_t>(m.at("rope_positions"));
    if (g.capacity % stream.attention_frames) throw std::runtime_error("cache size is not a multiple of attention_frames");
    g.tokens_per_frame = g.capacity / stream.attention_frames;
    const std::string kind = m.at("graph").get<std::string>();
    if (kind == "step") g.freq_dim = spec_shape(spec, "t_freq").at(2);
    if (first) {
      pk.stream = stream, pk.geo = g, pk.weights = weights;
    } else {
      if (weights != pk.weights) throw std::runtime_error("weights differ from the other package directories (weights_sha256)");
      if (g.batch != pk.geo.batch || g.height != pk.geo.height || g.width != pk.geo.width || g.layers != pk.geo.layers ||
          g.capacity != pk.geo.capacity || g.device != pk.geo.device || g.text_len != pk.geo.text_len)
        throw std::runtime_error("shapes or device differ from the other package directories");
      if (stream.attention_frames != pk.stream.attention_frames || stream.chunk_frames != pk.stream.chunk_frames ||
          stream.sink_frames != pk.stream.sink_frames)
        throw std::runtime_error("stream settings differ from the other package directories");
      pk.geo.rope_positions = std::min(pk.geo.rope_positions, g.rope_positions);
      if (g.freq_dim) pk.geo.freq_dim = g.freq_dim;
    }
    std::shared_ptr<Constants> consts;
    std::string wpath;
    if (m.contains("weights_file")) {  // else an export of before, with the weights inside each package
      const std::string wname = m.at("weights_file").get<std::string>();
      wpath = dir + "/" + wname;
      const bool recorded = m.contains("files") && m.at("files").contains(wname);
      consts = read_constants(wpath, recorded ? json_whole<int64_t>(m.at("files").at(wname).at("bytes")) : -1, dev);
      pk.constants.push_back(consts);
    }
    for (const json& p : m.at("packages")) {
      auto gr = std::make_unique<Graph>();
      gr->kind = kind;
      gr->num_frames = json_whole<int>(p.at("num_frames"));
      gr->path = dir + "/" + p.at("file").get<std::string>();
      if (!std::ifstream(gr->path)) throw std::runtime_error("package " + gr->path + " is missing");
      try {
        gr->loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(gr->path, "model", /*run_single_threaded=*/false);
      } catch (const std::exception& e) {
        std::string w = e.what();
        throw std::runtime_error("package " + gr->path + " is corrupt or not an AOTInductor package (" +
                                 w.substr(0, w.find('\n')) + ")");
      }
      if (consts) {
        Constants mine;
        for (const std::string& n : gr->loader->get_constant_fqns()) {
          auto it = consts->find(n);
          if (it == consts->end())
            throw std::runtime_error(wpath + " has no tensor '" + n + "', which " + gr->path + " needs; export it again");
          mine.emplace(n, it->second);
        }
        try {
          gr->loader->load_constants(mine, /*use_inactive=*/false, /*check_full_update=*/true, /*user_managed=*/true);
        } catch (const std::exception&) {  // torch's message is its call site; the reason went to stderr
          throw std::runtime_error("package " + gr->path + ": its constants do not load (see the error above); export it again");
        }
      }
      if (kind == "step") pk.step = std::move(gr);
      else if (kind == "chunk") pk.chunk = std::move(gr);
      else if (kind == "recache") {
        const int f = gr->num_frames;
        pk.recache[f] = std::move(gr);
      } else throw std::runtime_error("unknown graph kind '" + kind + "'");
    }
  } catch (const json::exception& e) {  // a missing key or a value of the wrong type
    throw std::runtime_error(mpath + ": " + e.what());
  } catch (const std::runtime_error& e) {
    const std::string w = e.what();
    if (w.rfind(dir, 0) == 0 || w.rfind("package ", 0) == 0) throw;
    throw std::runtime_error(mpath + ": " + w);
  }
}

// -- the stream ----------------------------------------------------------------------------
struct Inputs {
  at::Tensor noise, renoise, text_k, text_v;
  std::vector<int> switches;
};

Inputs read_inputs(const std::string& path, const Packages& pk) {
  StFile f = read_safetensors(path);
  auto get = [&](const char* name) -> at::Tensor {
    auto it = f.tensors.find(name);
    if (it == f.tensors.end()) throw std::runtime_error(path + ": no tensor '" + std::string(name) + "'");
    return to_torch(it->second);
  };
  const Geometry& g = pk.geo;
  const StreamSettings& s = pk.stream;
  Inputs in;
  in.noise = get("noise");
  const auto n = in.noise.sizes();
  if (n.size() != 5 || n[0] != g.batch || n[2] != g.channels || n[3] != g.height || n[4] != g.width ||
      in.noise.scalar_type() != at::kFloat)
    throw std::runtime_error(path + ": noise must be float32 [B, F, C, H, W] = [" + std::to_string(g.batch) + ", F, " +
                             std::to_string(g.channels) + ", " + std::to_string(g.height) + ", " + std::to_string(g.width) +
                             "], got " + shape_str(n));
  const int64_t frames = n[1];
  if (frames == 0 || frames % s.chunk_frames)
    throw std::runtime_error(path + ": frame count " + std::to_string(frames) + " is not a positive multiple of the chunk (" +
                             std::to_string(s.chunk_frames) + " latent frames)");
  const int64_t chunks = frames / s.chunk_frames, steps = static_cast<int64_t>(s.denoising_steps.size());
  in.renoise = get("renoise");
  std::vector<int64_t> want{chunks, steps - 1, g.batch, s.chunk_frames, g.channels, g.height, g.width};
  if (in.renoise.sizes() != at::IntArrayRef(want) || in.renoise.scalar_type() != at::kFloat)
    throw std::runtime_error(path + ": renoise must be float32 [chunks, steps-1, B, chunk, C, H, W] = " + shape_str(want) +
                             ", got " + shape_str(in.renoise.sizes()));
  in.text_k = get("text_k");
  in.text_v = get("text_v");
  const auto t = in.text_k.sizes();
  if (t.size() != 6 || t[1] != g.layers || t[2] != g.batch || t[3] != g.heads || t[4] != g.text_len || t[5] != g.head_dim ||
      in.text_v.sizes() != t)
    throw std::runtime_error(path + ": text_k/text_v must be [P, L, B, H, Lt, D] = [P, " + std::to_string(g.layers) + ", " +
                             std::to_string(g.batch) + ", " + std::to_string(g.heads) + ", " + std::to_string(g.text_len) +
                             ", " + std::to_string(g.head_dim) + "], got " + shape_str(t) + " and " +
                             shape_str(in.text_v.sizes()));
  in.text_k = in.text_k.to(g.model_dtype);
  in.text_v = in.text_v.to(g.model_dtype);
  if (f.tensors.count("switch_frames")) {
    at::Tensor sw = get("switch_frames").to(at::kLong).reshape({-1});
    for (int64_t i = 0; i < sw.numel(); ++i) in.switches.push_back(static_cast<int>(sw[i].item<int64_t>()));
  }
  const int64_t prompts = t[0];
  if (prompts < 1) throw std::runtime_error(path + ": at least one prompt is needed");
  if (static_cast<int64_t>(in.switches.size()) != prompts - 1)
    throw std::runtime_error(path + ": " + std::to_string(prompts) + " prompts need " + std::to_string(prompts - 1) +
                             " switch frames, got " + std::to_string(in.switches.size()));
  int prev = 0;
  for (int sw : in.switches) {
    if (!(prev < sw && sw < frames))
      throw std::runtime_error(path + ": switch frame " + std::to_string(sw) +
                               " out of range: switch frames must increase strictly inside (0, " + std::to_string(frames) + ")");
    if (sw % s.chunk_frames)
      throw std::runtime_error(path + ": switch frame " + std::to_string(sw) + " is not on a chunk boundary");
    prev = sw;
  }
  return in;
}

struct ChunkTiming {
  int index, frame_start;
  bool recached;
  double ms;
};

class Streamer {
 public:
  Streamer(Packages& pk) : pk_(pk), plan_(pk.stream, pk.geo.tokens_per_frame), sched_(make_schedule(pk.stream)) {
    const Geometry& g = pk.geo;
    dev_ = at::Device(g.device);
    const auto mopts = at::TensorOptions().dtype(g.model_dtype).device(dev_);
    cache_k_ = at::zeros({g.layers, g.batch, g.capacity, g.heads, g.head_dim}, mopts);
    cache_v_ = at::zeros_like(cache_k_);
    auto iopts = at::TensorOptions().dtype(at::kInt).device(dev_);
    write_start_ = at::zeros({1}, iopts);
    kv_len_ = at::zeros({g.batch}, iopts);
    frame_offset_ = at::zeros({1}, iopts);
    if (!pk.step && !pk.chunk) throw std::runtime_error("no step or chunk package among the package directories");
    const int cf = pk.stream.chunk_frames;
    if (pk.step && pk.step->num_frames != cf)
      throw std::runtime_error("the step package runs " + std::to_string(pk.step->num_frames) + " frames, the chunk is " +
                               std::to_string(cf));
    if (pk.step) {
      for (size_t i = 0; i < sched_.timesteps.size(); ++i) t_steps_.push_back(t_freq(sched_.timesteps[i], cf));
      t_context_ = t_freq(sched_.context_timestep, cf);
    }
  }

  at::Tensor t_freq(float t, int frames) const {
    if (!pk_.geo.freq_dim) throw std::runtime_error("no step package: the timestep embedding size is unknown");
    auto e = sinusoidal_embedding(static_cast<int>(pk_.geo.freq_dim), t);
    at::Tensor row = at::from_blob(e.data(), {1, 1, static_cast<int64_t>(e.size())}, at::kFloat).clone();
    return row.expand({pk_.geo.batch, frames, static_cast<int64_t>(e.size())}).contiguous().to(dev_);
  }
  at::Tensor scalar(float v) const { return at::full({1}, v, at::TensorOptions().dtype(at::kFloat).device(dev_)); }

  // The re-cache graph of an n-frame span: a recache package, or the step package for a one-chunk span.
  Graph* recache_graph(int frames) const {
    auto it = pk_.recache.find(frames);
    if (it != pk_.recache.end()) return it->second.get();
    if (pk_.step && pk_.step->num_frames == frames) return pk_.step.get();
    return nullptr;
  }

  void check_recache_graphs(const std::vector<int>& switches) const {
    for (int s : switches) {
      const int f = plan_.plan_recache(s).num_frames;
      if (!recache_graph(f))
        throw std::runtime_error("the prompt switch at frame " + std::to_string(s) + " needs a re-cache package of " +
                                 std::to_string(f) + " frames; export it (arvid export aoti --graph recache)");
    }
  }

  void activate(const ForwardPlan& p) {
    const int64_t need = p.frame_start + p.num_frames;
    if (need > pk_.geo.rope_positions)
      throw std::runtime_error("latent frame " + std::to_string(need - 1) + " is past the packages' RoPE table (" +
                               std::to_string(pk_.geo.rope_positions) + " positions); export with more rope positions");
    write_start_.fill_(p.write_start);
    kv_len_.fill_(p.kv_len);
    frame_offset_.fill_(p.frame_start);
  }

  void write_kv(const ForwardPlan& p, const at::Tensor& nk, const at::Tensor& nv) {
    const int64_t len = nk.size(2);
    cache_k_.narrow(2, p.write_start, len).copy_(nk);
    cache_v_.narrow(2, p.write_start, len).copy_(nv);
  }

  std::vector<at::Tensor> step_inputs(const at::Tensor& x, const at::Tensor& tf, const at::Tensor& sigma) {
    return {x, tf, sigma, text_k_, text_v_, cache_k_, cache_v_, write_start_, kv_len_, frame_offset_};
  }

  void recache(int switch_frame, const at::Tensor& history) {
    ForwardPlan p = plan_.plan_recache(switch_frame);
    activate(p);
    const int first = p.frame_start - (switch_frame - pk_.stream.attention_frames);
    at::Tensor x = history.narrow(1, first, p.num_frames).contiguous();
    auto out = recache_graph(p.num_frames)->run(step_inputs(x, t_freq(0.f, p.num_frames), scalar(0.f)));
    write_kv(p, out[1], out[2]);
    plan_.commit(p);
  }

  at::Tensor run_chunk(int ci, int fs, const at::Tensor& noise, const at::Tensor& renoise) {
    ForwardPlan p = plan_.plan_chunk(fs);
    activate(p);
    const int cf = pk_.stream.chunk_frames;
    at::Tensor x = noise.narrow(1, fs, cf).contiguous();
    at::Tensor x0;
    if (pk_.chunk) {
      auto out = pk_.chunk->run({x, renoise[ci].contiguous(), text_k_, text_v_, cache_k_, cache_v_, write_start_, kv_len_,
                                 frame_offset_});
      x0 = out[0];
      write_kv(p, out[1], out[2]);
    } else {
      const size_t steps = sched_.timesteps.size();
      for (size_t si = 0; si < steps; ++si) {
        auto out = pk_.step->run(step_inputs(x, t_steps_[si], scalar(sched_.sigmas[si])));
        x0 = out[0];
        // Every forward of this plan masks its own slots out of the cache, so only the clean-context
        // pass's K/V need writing; the denoising steps' K/V are dropped.
        if (si + 1 < steps) {
          const double sn = sched_.sigmas[si + 1];
          x = x0 * (1 - sn) + renoise[ci][static_cast<int64_t>(si)] * sn;
        }
      }
      auto ctx = pk_.step->run(step_inputs(x0, t_context_, scalar(0.f)));
      write_kv(p, ctx[1], ctx[2]);
    }
    plan_.commit(p);
    return x0;
  }

  at::Tensor stream(const Inputs& in, std::vector<ChunkTiming>* timings) {
    const StreamSettings& s = pk_.stream;
    const int frames = static_cast<int>(in.noise.size(1)), cf = s.chunk_frames;
    check_recache_graphs(in.switches);
    if (frames > pk_.geo.rope_positions)
      throw std::runtime_error("the stream has " + std::to_string(frames) + " latent frames, the packages' RoPE table " +
                               std::to_string(pk_.geo.rope_positions) + " positions");
    at::Tensor noise = in.noise.to(dev_), renoise = in.renoise.to(dev_);
    plan_.reset();
    cache_k_.zero_();
    cache_v_.zero_();
    set_prompt(in, 0);
    at::Tensor history = at::zeros({pk_.geo.batch, s.attention_frames, pk_.geo.channels, pk_.geo.height, pk_.geo.width},
                                   at::TensorOptions().dtype(at::kFloat).device(dev_));
    std::vector<at::Tensor> outs;
    size_t next_switch = 0;
    for (int ci = 0; ci < frames / cf; ++ci) {
      const int fs = ci * cf;
      auto t0 = std::chrono::steady_clock::now();
      bool switched = false;
      if (next_switch < in.switches.size() && in.switches[next_switch] == fs) {
        set_prompt(in, static_cast<int64_t>(++next_switch));
        recache(fs, history);
        switched = true;
      }
      at::Tensor x0 = run_chunk(ci, fs, noise, renoise).clone();
      if (dev_.is_cuda()) torch::cuda::synchronize();
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (timings) timings->push_back({ci, fs, switched, ms});
      history = at::cat({history.narrow(1, cf, s.attention_frames - cf), x0}, 1);
      outs.push_back(x0);
    }
    return at::cat(outs, 1).to(at::kCPU);
  }

  void set_prompt(const Inputs& in, int64_t p) {
    text_k_ = in.text_k[p].to(dev_).contiguous();
    text_v_ = in.text_v[p].to(dev_).contiguous();
  }

  RingPlanner& planner() { return plan_; }
  const Schedule& schedule() const { return sched_; }

 private:
  Packages& pk_;
  RingPlanner plan_;
  Schedule sched_;
  at::Device dev_ = at::kCPU;
  at::Tensor cache_k_, cache_v_, write_start_, kv_len_, frame_offset_, text_k_, text_v_, t_context_;
  std::vector<at::Tensor> t_steps_;
};

const char* kUsage =
    "usage: arvid-stream --package-dir DIR [--package-dir DIR ...] --inputs in.safetensors --out latents.safetensors\n"
    "                    [--threads N (default 1)] [--warmup N (default 1)] [--global-sink true|false]\n"
    "       arvid-stream --print-plan --frames F [--switch-frames S1,S2,...] [--global-sink true|false]\n"
    "                    (the ring plan and schedule for LongLive's default stream settings; no packages)\n";

bool parse_bool(const std::string& v) {
  if (v == "true" || v == "1") return true;
  if (v == "false" || v == "0") return false;
  throw UsageError("--global-sink takes true or false, got '" + v + "'");
}

std::vector<int> parse_ints(const std::string& v) {
  std::vector<int> out;
  std::stringstream ss(v);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    try {
      size_t used = 0;
      out.push_back(std::stoi(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw UsageError("not a list of integers: '" + v + "'");
    }
  }
  return out;
}

void print_plan(const StreamSettings& s, int frames, const std::vector<int>& switches, int64_t tokens_per_frame) {
  RingPlanner rp(s, tokens_per_frame);
  Schedule sc = make_schedule(s);
  std::printf("schedule");
  for (size_t i = 0; i < sc.timesteps.size(); ++i) std::printf(" t=%.9g sigma=%.9g", sc.timesteps[i], sc.sigmas[i]);
  std::printf("\n");
  size_t next = 0;
  auto show = [](const char* kind, const ForwardPlan& p) {
    std::printf("%s frame_start=%d num_frames=%d write_start=%lld kv_len=%lld filled_after=%d next_slot_after=%d\n", kind,
                p.frame_start, p.num_frames, static_cast<long long>(p.write_start), static_cast<long long>(p.kv_len),
                p.filled_after, p.next_slot_after);
  };
  for (int fs = 0; fs < frames; fs += s.chunk_frames) {
    if (next < switches.size() && switches[next] == fs) {
      ++next;
      ForwardPlan p = rp.plan_recache(fs);
      show("recache", p);
      rp.commit(p);
    }
    ForwardPlan p = rp.plan_chunk(fs);
    show("chunk", p);
    rp.commit(p);
  }
}

int run(int argc, char** argv) {
  std::vector<std::string> dirs;
  std::string inputs, out;
  int threads = 1, warmup = 1, frames = 0;
  bool plan_only = false;
  int global_sink = -1;
  std::vector<int> plan_switches;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(a + " needs a value");
      return argv[++i];
    };
    auto int_value = [&]() -> int {
      std::string v = value();
      auto xs = parse_ints(v);
      if (xs.size() != 1) throw UsageError(a + " takes one integer, got '" + v + "'");
      return xs[0];
    };
    if (a == "--package-dir") dirs.push_back(value());
    else if (a == "--inputs") inputs = value();
    else if (a == "--out") out = value();
    else if (a == "--threads") threads = int_value();
    else if (a == "--warmup") warmup = int_value();
    else if (a == "--global-sink") global_sink = parse_bool(value());
    else if (a == "--print-plan") plan_only = true;
    else if (a == "--frames") frames = int_value();
    else if (a == "--switch-frames") plan_switches = parse_ints(value());
    else if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else throw UsageError("unknown argument '" + a + "'");
  }
  if (plan_only) {
    StreamSettings s;
    if (global_sink >= 0) s.global_sink = global_sink;
    if (frames <= 0) throw UsageError("--print-plan needs --frames F");
    print_plan(s, frames, plan_switches, 1);
    return 0;
  }
  if (dirs.empty() || inputs.empty() || out.empty()) throw UsageError("--package-dir, --inputs and --out are required");
  if (threads < 1) throw UsageError("--threads must be >= 1");
  at::set_num_threads(threads);
  Packages pk;
  for (size_t i = 0; i < dirs.size(); ++i) load_dir(pk, dirs[i], i == 0);
  if (global_sink >= 0) pk.stream.global_sink = global_sink;  // the graphs do not depend on it
  Inputs in = read_inputs(inputs, pk);
  Streamer st(pk);
  std::printf("arvid-stream: device %s, threads %d, %lld latent frames, %zu prompt switch(es), global_sink %s, %s graph\n",
              pk.geo.device.c_str(), at::get_num_threads(), static_cast<long long>(in.noise.size(1)), in.switches.size(),
              pk.stream.global_sink ? "true" : "false", pk.chunk ? "chunk" : "step");
  c10::InferenceMode guard;
  for (int w = 0; w < warmup; ++w) st.stream(in, nullptr);
  std::vector<ChunkTiming> timings;
  at::Tensor latents = st.stream(in, &timings);
  std::vector<double> plain;
  for (const auto& t : timings) {
    std::printf("chunk %d frames %d-%d%s: %.3f ms\n", t.index, t.frame_start, t.frame_start + pk.stream.chunk_frames - 1,
                t.recached ? " (re-cache)" : "", t.ms);
    if (!t.recached) plain.push_back(t.ms);
  }
  if (!plain.empty()) {
    std::sort(plain.begin(), plain.end());
    std::printf("chunks without re-cache: median %.3f ms, min %.3f ms, max %.3f ms over %zu chunks\n",
                plain[plain.size() / 2], plain.front(), plain.back(), plain.size());
  }
  StFile f;
  f.tensors["latents"] = from_torch(latents);
  f.metadata["threads"] = std::to_string(at::get_num_threads());
  write_safetensors(out, f);
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

}  // namespace
}  // namespace arvid

int main(int argc, char** argv) {
  try {
    return arvid::run(argc, argv);
  } catch (const arvid::UsageError& e) {
    std::fprintf(stderr, "arvid-stream: %s\n%s", e.what(), arvid::kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::string w = e.what();
    std::fprintf(stderr, "arvid-stream: error: %s\n", w.substr(0, w.find('\n')).c_str());
    return 1;
  }
}
