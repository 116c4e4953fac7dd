// The JSON reads both manifests and safetensors headers share. nlohmann's get<int>() turns 2.5 into
// 2 and 1e30 into INT_MIN without a word; a shape, an offset or a frame count must be written as a
// whole number that fits.
#pragma once

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace arvid {

template <typename Int = int64_t>
Int json_whole(const nlohmann::json& v) {
  if (!v.is_number_integer()) throw std::runtime_error("expected a whole number, got " + v.dump());
  using lim = std::numeric_limits<Int>;
  const bool fits = v.is_number_unsigned()
                        ? v.get<uint64_t>() <= static_cast<uint64_t>(lim::max())
                        : v.get<int64_t>() >= static_cast<int64_t>(lim::min()) && v.get<int64_t>() <= static_cast<int64_t>(lim::max());
  if (!fits) throw std::runtime_error("whole number out of range: " + v.dump());
  return static_cast<Int>(v.get<int64_t>());
}

template <typename Int = int64_t>
std::vector<Int> json_whole_list(const nlohmann::json& v) {
  if (!v.is_array()) throw std::runtime_error("expected a list of whole numbers, got " + v.dump());
  std::vector<Int> out;
  for (const auto& x : v) out.push_back(json_whole<Int>(x));
  return out;
}

}  // namespace arvid
