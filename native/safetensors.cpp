#include "safetensors.h"

#include "json_util.h"

#include <cstdio>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace arvid {

size_t st_dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  throw std::runtime_error("unsupported safetensors dtype '" + d + "'");
}

int64_t StTensor::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

StFile read_safetensors(const std::string& path) {
  auto fail = [&](const std::string& what) { return std::runtime_error(path + ": " + what); };
  std::ifstream in(path, std::ios::binary);
  if (!in) throw fail("cannot open the file");
  in.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  if (size < 8) throw fail("not a safetensors file (shorter than its 8-byte header length)");
  unsigned char len_bytes[8];
  in.read(reinterpret_cast<char*>(len_bytes), 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
  if (n > size - 8 || n > (100u << 20)) throw fail("not a safetensors file (header length " + std::to_string(n) + " past the end)");
  std::string header(n, '\0');
  in.read(header.data(), static_cast<std::streamsize>(n));
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(header);
  } catch (const std::exception& e) {
    throw fail(std::string("bad safetensors header: ") + e.what());
  }
  if (!h.is_object()) throw fail("bad safetensors header: not a JSON object");
  const uint64_t data_size = size - 8 - n;
  StFile out;
  for (const auto& [name, v] : h.items()) {
    try {
      if (name == "__metadata__") {
        out.metadata = v.get<std::map<std::string, std::string>>();
        continue;
      }
      StTensor t;
      t.dtype = v.at("dtype").get<std::string>();
      const auto& shape = v.at("shape");
      if (!shape.is_array()) throw std::runtime_error("shape must be an array");
      for (const auto& s : shape) {
        const int64_t d = json_whole<int64_t>(s);
        if (d < 0) throw std::runtime_error("negative dimension");
        t.shape.push_back(d);
      }
      const auto& off = v.at("data_offsets");
      if (!off.is_array() || off.size() != 2) throw std::runtime_error("data_offsets must be [begin, end]");
      const uint64_t b = json_whole<int64_t>(off[0]), e = json_whole<int64_t>(off[1]);
      const uint64_t want = static_cast<uint64_t>(t.numel()) * st_dtype_size(t.dtype);
      if (e < b || e > data_size) throw std::runtime_error("data_offsets past the end of the file");
      if (e - b != want) throw std::runtime_error("data_offsets hold " + std::to_string(e - b) + " bytes, shape and dtype need " + std::to_string(want));
      t.data.resize(want);
      in.seekg(static_cast<std::streamoff>(8 + n + b));
      in.read(reinterpret_cast<char*>(t.data.data()), static_cast<std::streamsize>(want));
      if (!in) throw std::runtime_error("short read");
      out.tensors.emplace(name, std::move(t));
    } catch (const std::exception& e) {  // ours, and nlohmann's type / missing-key errors
      throw fail("tensor '" + name + "': " + e.what());
    }
  }
  return out;
}

void write_safetensors(const std::string& path, const StFile& file) {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();  // ordered: metadata first, then the data order
  if (!file.metadata.empty()) h["__metadata__"] = file.metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : file.tensors) {
    const uint64_t want = static_cast<uint64_t>(t.numel()) * st_dtype_size(t.dtype);
    if (t.data.size() != want) throw std::runtime_error(path + ": tensor '" + name + "' has the wrong byte count");
    h[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + want}}};
    offset += want;
  }
  std::string header = h.dump();
  while ((header.size() + 8) % 8) header += ' ';  // align the data to 8 bytes, as the format recommends
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error(path + ": cannot write the file");
    uint64_t n = header.size();
    unsigned char len_bytes[8];
    for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>((n >> (8 * i)) & 0xFF);
    out.write(reinterpret_cast<const char*>(len_bytes), 8);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (const auto& [name, t] : file.tensors)
      out.write(reinterpret_cast<const char*>(t.data.data()), static_cast<std::streamsize>(t.data.size()));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      throw std::runtime_error(path + ": write failed");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot rename the temporary file into place");
  }
}

}  // namespace arvid
