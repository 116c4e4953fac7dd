#include "stream_plan.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace arvid {

void StreamSettings::validate() const {
  const int c = chunk_frames;
  if (c < 1) throw std::runtime_error("chunk_frames must be >= 1, got " + std::to_string(c));
  if (sink_frames < 0 || sink_frames % c)
    throw std::runtime_error("sink_frames (" + std::to_string(sink_frames) + ") must be a multiple of chunk_frames (" +
                             std::to_string(c) + ")");
  if (attention_frames % c || attention_frames <= sink_frames)
    throw std::runtime_error("attention_frames (" + std::to_string(attention_frames) +
                             ") must be a multiple of chunk_frames and larger than sink_frames");
  if (denoising_steps.empty()) throw std::runtime_error("denoising_steps is empty");
  for (int s : denoising_steps)
    if (s <= 0 || s > num_train_timesteps)
      throw std::runtime_error("denoising step " + std::to_string(s) + " outside (0, num_train_timesteps]");
}

RingPlanner::RingPlanner(const StreamSettings& cfg, int64_t tokens_per_frame)
    : cfg_(cfg),
      chunk_tokens_(cfg.chunk_frames * tokens_per_frame),
      capacity_(cfg.attention_frames * tokens_per_frame) {
  cfg_.validate();
}

void RingPlanner::advance(int& filled, int& next_slot, int chunks) const {
  for (int i = 0; i < chunks; ++i) {
    if (filled < cfg_.slot_chunks()) {
      filled += 1;
      next_slot = filled < cfg_.slot_chunks() ? filled : cfg_.sink_chunks();
    } else {
      const int window = cfg_.slot_chunks() - cfg_.sink_chunks();
      next_slot = cfg_.sink_chunks() + (next_slot - cfg_.sink_chunks() + 1) % window;
    }
  }
}

ForwardPlan RingPlanner::make(int frame_start, int num_frames, int write_slot, int filled, bool recache) const {
  const int chunks = num_frames / cfg_.chunk_frames;
  int filled_after = filled, next_after = write_slot;
  advance(filled_after, next_after, chunks);
  const int kv_chunks = std::max(filled_after, write_slot + chunks);
  ForwardPlan p;
  p.frame_start = frame_start;
  p.num_frames = num_frames;
  p.write_start = write_slot * chunk_tokens_;
  p.kv_len = kv_chunks * chunk_tokens_;
  p.filled_after = filled_after;
  p.next_slot_after = next_after;
  p.recache = recache;
  return p;
}

ForwardPlan RingPlanner::plan_chunk(int frame_start) const {
  const int slot = filled_ < cfg_.slot_chunks() ? filled_ : next_slot_;
  return make(frame_start, cfg_.chunk_frames, slot, filled_, false);
}

ForwardPlan RingPlanner::plan_recache(int switch_frame) const {
  // The last n = min(attention_frames, s) frames are re-run at t = 0 with the new prompt. From frame
  // 0, or without global_sink, they rebuild the cache (their first chunk becomes the sink); else the
  // sink keeps its K/V and only the last window_frames re-run frames are run and written.
  const int n = std::min(cfg_.attention_frames, switch_frame);
  if (switch_frame - n == 0 || !cfg_.global_sink) return make(switch_frame - n, n, 0, 0, true);
  return make(switch_frame - cfg_.window_frames(), cfg_.window_frames(), cfg_.sink_chunks(), cfg_.sink_chunks(), true);
}

Schedule make_schedule(const StreamSettings& cfg) {
  // torch.linspace(1, 0, n + 1) in float32: step = (end - start) / (steps - 1); the first half
  // counts up from start, the second half down from end (ATen's CPU kernel).
  const int n = cfg.num_train_timesteps;
  const int64_t steps = n + 1;
  const float start = 1.0f, end = 0.0f;
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int64_t halfway = steps / 2;
  auto lin = [&](int64_t i) -> float {
    return i < halfway ? start + step * static_cast<float>(i) : end - step * static_cast<float>(steps - i - 1);
  };
  const float shift = static_cast<float>(cfg.shift);
  auto table = [&](int64_t idx) -> float {  // cat([sigmas * n, 0])[idx]
    if (idx >= n) return 0.0f;
    const float s = lin(idx);
    const float sigma = (shift * s) / (1.0f + (shift - 1.0f) * s);
    return sigma * static_cast<float>(n);
  };
  Schedule out;
  for (int k : cfg.denoising_steps) {
    const float t = table(n - k);
    out.timesteps.push_back(t);
    out.sigmas.push_back(t / static_cast<float>(n));
  }
  out.context_timestep = static_cast<float>(cfg.context_noise);
  return out;
}

std::vector<float> sinusoidal_embedding(int dim, float t) {
  const int half = dim / 2;
  std::vector<float> out(2 * half);
  const double td = static_cast<double>(t);
  for (int i = 0; i < half; ++i) {
    const double freq = std::pow(10000.0, -static_cast<double>(i) / half);
    const double arg = td * freq;
    out[i] = static_cast<float>(std::cos(arg));
    out[half + i] = static_cast<float>(std::sin(arg));
  }
  return out;
}

}  // namespace arvid
