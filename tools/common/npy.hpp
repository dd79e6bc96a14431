// Reading and writing NumPy .npy files (format versions 1.0, 2.0 and 3.0).
//
// Only what the tools exchange is accepted: little-endian float32 ('<f4') and float16 ('<f2')
// arrays in C order. Everything else (Fortran order, big endian, other dtypes, a header that
// does not parse, a file shorter or longer than its shape says) is an NpyError whose message
// names the file and what was expected.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace blasst::tools {

class NpyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class NpyDtype { Float32, Float16 };

const char* npy_dtype_name(NpyDtype dtype);  // "float32" / "float16"

// An array as read from disk: shape and the raw little-endian payload.
struct NpyArray {
  NpyDtype dtype = NpyDtype::Float32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // numel * itemsize bytes, C order

  int64_t numel() const;
  // The elements converted to fp32 (float16 is widened exactly).
  std::vector<float> to_float32() const;
};

// Reads a whole .npy file; throws NpyError.
NpyArray read_npy(const std::string& path);

// Parses an in-memory .npy image; `name` is used in messages. Throws NpyError.
NpyArray parse_npy(const std::vector<uint8_t>& image, const std::string& name);

// The .npy image of a float32 C-order array of the given shape (data has prod(shape) elements).
std::vector<uint8_t> npy_image_f32(const std::vector<int64_t>& shape, const float* data);

// "[2, 3, 4]"
std::string shape_string(const std::vector<int64_t>& shape);

}  // namespace blasst::tools
