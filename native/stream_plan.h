// The host side of the streaming algorithm, without libtorch: stream settings, the ring-buffer
// plan of runtime/kv_cache.py (RingPlanner._advance/_plan/plan_chunk/plan_recache/commit, which
// every ring cache inherits) and the few-step flow-matching schedule of runtime/scheduler.py. Kept in step with the Python code by
// tests/test_native_stream.py, which compares the plans and the schedule printed by
// `arvid-stream --print-plan` with the Python ones.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace arvid {

struct StreamSettings {
  int chunk_frames = 3;
  int sink_frames = 3;
  int attention_frames = 12;
  std::vector<int> denoising_steps{1000, 750, 500, 250};
  int num_train_timesteps = 1000;
  double shift = 5.0;
  double context_noise = 0.0;
  bool global_sink = true;

  int window_frames() const { return attention_frames - sink_frames; }
  int sink_chunks() const { return sink_frames / chunk_frames; }
  int slot_chunks() const { return attention_frames / chunk_frames; }
  void validate() const;  // the checks of StreamConfig.__post_init__; throws one line
};

struct ForwardPlan {
  int frame_start = 0;   // first query frame (absolute latent frame = RoPE position)
  int num_frames = 0;
  int64_t write_start = 0;  // first token slot the forward's K/V go to
  int64_t kv_len = 0;       // valid tokens (a prefix of the ring), own K/V included
  int filled_after = 0;
  int next_slot_after = 0;
  bool recache = false;
};

class RingPlanner {
 public:
  RingPlanner(const StreamSettings& cfg, int64_t tokens_per_frame);
  void reset() { filled_ = 0, next_slot_ = 0; }
  ForwardPlan plan_chunk(int frame_start) const;
  ForwardPlan plan_recache(int switch_frame) const;
  void commit(const ForwardPlan& p) { filled_ = p.filled_after, next_slot_ = p.next_slot_after; }
  int64_t capacity() const { return capacity_; }
  int64_t chunk_tokens() const { return chunk_tokens_; }

 private:
  void advance(int& filled, int& next_slot, int chunks) const;
  ForwardPlan make(int frame_start, int num_frames, int write_slot, int filled, bool recache) const;
  StreamSettings cfg_;
  int64_t chunk_tokens_, capacity_;
  int filled_ = 0, next_slot_ = 0;
};

// The denoising schedule: timesteps t (float32 values, 1000 * sigma) and sigmas, computed in
// float32 the way runtime/scheduler.py does with torch (linspace, shift warp, warped indices).
struct Schedule {
  std::vector<float> timesteps;
  std::vector<float> sigmas;
  float context_timestep = 0.f;
};
Schedule make_schedule(const StreamSettings& cfg);

// Wan's sinusoidal timestep embedding of one timestep, [cos | sin] of t * 10000^(-i/half),
// computed in float64 and rounded to float32 (runtime/model.py sinusoidal_embedding).
std::vector<float> sinusoidal_embedding(int dim, float t);

}  // namespace arvid
