// safetensors files, read and written directly: an 8-byte little-endian header length N, N bytes
// of JSON header ({"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
// optional "__metadata__": {str: str}}), then the raw little-endian tensor bytes.
// No dependency on libtorch: tensors are dtype name + shape + bytes.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace arvid {

struct StTensor {
  std::string dtype;            // "F32", "F64", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;    // numel() * st_dtype_size(dtype) bytes

  int64_t numel() const;
};

// Bytes per element of a safetensors dtype name; throws for one this reader does not know.
size_t st_dtype_size(const std::string& dtype);

struct StFile {
  std::map<std::string, StTensor> tensors;
  std::map<std::string, std::string> metadata;
};

// Throws std::runtime_error with one line naming the file and what is wrong.
StFile read_safetensors(const std::string& path);
// Writes atomically (a temporary file beside `path`, then a rename): no partial output file.
void write_safetensors(const std::string& path, const StFile& file);

}  // namespace arvid
