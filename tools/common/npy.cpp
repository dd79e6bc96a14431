// .npy layout: 6-byte magic "\x93NUMPY", version (major, minor), header length (uint16 for
// 1.x, uint32 for 2.x/3.x, little endian), then an ASCII Python dict literal such as
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
// padded with spaces and ended by '\n', then the raw payload.
#include "common/npy.hpp"

#include <bit>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/dtype.hpp"

namespace blasst::tools {
namespace {

static_assert(std::endian::native == std::endian::little, "the .npy code assumes a little-endian host");

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;

[[noreturn]] void fail(const std::string& name, const std::string& what) {
  throw NpyError(name + ": " + what);
}

size_t itemsize(NpyDtype d) { return d == NpyDtype::Float32 ? 4 : 2; }

// A minimal reader for the dict literal NumPy writes: string, boolean and tuple values.
class HeaderParser {
 public:
  HeaderParser(std::string text, std::string name) : s_(std::move(text)), name_(std::move(name)) {}

  void parse(std::string* descr, bool* fortran, std::vector<int64_t>* shape) {
    bool have_descr = false, have_fortran = false, have_shape = false;
    skip_ws();
    expect('{');
    while (true) {
      skip_ws();
      if (peek() == '}') break;
      const std::string key = parse_string();
      skip_ws();
      expect(':');
      skip_ws();
      if (key == "descr") {
        *descr = parse_string();
        have_descr = true;
      } else if (key == "fortran_order") {
        *fortran = parse_bool();
        have_fortran = true;
      } else if (key == "shape") {
        *shape = parse_tuple();
        have_shape = true;
      } else {
        fail(name_, "unexpected key '" + key + "' in the .npy header");
      }
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      skip_ws();
      if (peek() != '}') fail(name_, "malformed .npy header (expected ',' or '}' at offset " + std::to_string(pos_) + ")");
    }
    if (!have_descr || !have_fortran || !have_shape)
      fail(name_, "the .npy header lacks one of 'descr', 'fortran_order', 'shape'");
  }

 private:
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void skip_ws() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  void expect(char c) {
    if (peek() != c) fail(name_, std::string("malformed .npy header (expected '") + c + "' at offset " + std::to_string(pos_) + ")");
    ++pos_;
  }
  std::string parse_string() {
    const char quote = peek();
    if (quote != '\'' && quote != '"') fail(name_, "malformed .npy header (expected a quoted string at offset " + std::to_string(pos_) + ")");
    ++pos_;
    const size_t end = s_.find(quote, pos_);
    if (end == std::string::npos) fail(name_, "malformed .npy header (unterminated string)");
    std::string out = s_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return out;
  }
  bool parse_bool() {
    if (s_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (s_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    fail(name_, "malformed .npy header ('fortran_order' must be True or False)");
  }
  std::vector<int64_t> parse_tuple() {
    std::vector<int64_t> dims;
    expect('(');
    while (true) {
      skip_ws();
      if (peek() == ')') {
        ++pos_;
        return dims;
      }
      if (!std::isdigit(static_cast<unsigned char>(peek()))) fail(name_, "malformed .npy header (bad 'shape' entry)");
      int64_t v = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        const int64_t digit = peek() - '0';
        if (v > (std::numeric_limits<int64_t>::max() - digit) / 10) fail(name_, "a dimension in 'shape' is too large");
        v = v * 10 + digit;
        ++pos_;
      }
      dims.push_back(v);
      skip_ws();
      if (peek() == ',') ++pos_;
      else if (peek() != ')') fail(name_, "malformed .npy header (bad 'shape' tuple)");
    }
  }

  std::string s_;
  std::string name_;
  size_t pos_ = 0;
};

uint32_t read_le(const uint8_t* p, size_t n) {
  uint32_t v = 0;
  for (size_t i = 0; i < n; ++i) v |= uint32_t(p[i]) << (8 * i);
  return v;
}

}  // namespace

const char* npy_dtype_name(NpyDtype dtype) { return dtype == NpyDtype::Float32 ? "float32" : "float16"; }

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::vector<float> NpyArray::to_float32() const {
  const size_t n = size_t(numel());
  std::vector<float> out(n);
  if (n == 0) return out;
  if (dtype == NpyDtype::Float32) {
    std::memcpy(out.data(), bytes.data(), n * 4);  // little-endian host (static_assert above)
  } else {
    for (size_t i = 0; i < n; ++i) {
      const uint16_t h = uint16_t(bytes[2 * i] | (uint16_t(bytes[2 * i + 1]) << 8));
      out[i] = detail::fp16_to_float(h);
    }
  }
  return out;
}

NpyArray parse_npy(const std::vector<uint8_t>& image, const std::string& name) {
  if (image.size() < kMagicLen + 4 || std::memcmp(image.data(), kMagic, kMagicLen) != 0)
    fail(name, "not a .npy file (missing the \\x93NUMPY magic)");
  const uint8_t major = image[6];
  size_t header_len = 0, header_start = 0;
  if (major == 1) {
    header_len = read_le(&image[8], 2);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (image.size() < 12) fail(name, "truncated .npy header");
    header_len = read_le(&image[8], 4);
    header_start = 12;
  } else {
    fail(name, "unsupported .npy format version " + std::to_string(major) + " (expected 1, 2 or 3)");
  }
  if (image.size() < header_start + header_len) fail(name, "truncated .npy header");
  const std::string header(reinterpret_cast<const char*>(&image[header_start]), header_len);

  std::string descr;
  bool fortran = false;
  NpyArray arr;
  HeaderParser(header, name).parse(&descr, &fortran, &arr.shape);
  if (descr == "<f4") {
    arr.dtype = NpyDtype::Float32;
  } else if (descr == "<f2") {
    arr.dtype = NpyDtype::Float16;
  } else if (descr == ">f4" || descr == ">f2") {
    fail(name, "dtype '" + descr + "' is big endian; expected little-endian float32 ('<f4') or float16 ('<f2')");
  } else {
    fail(name, "dtype '" + descr + "' is not supported; expected float32 ('<f4') or float16 ('<f2')");
  }
  if (fortran) fail(name, "array is in Fortran order; expected C order (use numpy.ascontiguousarray)");

  // Payload size, with overflow checks, before touching memory.
  const size_t payload = image.size() - header_start - header_len;
  uint64_t expected = itemsize(arr.dtype);
  for (int64_t d : arr.shape) {
    if (d != 0 && expected > std::numeric_limits<uint64_t>::max() / uint64_t(d)) fail(name, "shape " + shape_string(arr.shape) + " is too large");
    expected *= uint64_t(d);
  }
  if (payload < expected)
    fail(name, "truncated: shape " + shape_string(arr.shape) + " of " + npy_dtype_name(arr.dtype) + " needs " +
                   std::to_string(expected) + " bytes of data, the file has " + std::to_string(payload));
  if (payload > expected)
    fail(name, "has " + std::to_string(payload - expected) + " bytes past the data of shape " + shape_string(arr.shape));
  arr.bytes.assign(image.begin() + std::ptrdiff_t(header_start + header_len), image.end());
  return arr;
}

NpyArray read_npy(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail(path, "is a directory, expected a .npy file");
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) fail(path, std::string("cannot open: ") + std::strerror(errno));
  const std::streamoff size = in.tellg();
  if (size < 0) fail(path, "cannot determine the file size");
  std::vector<uint8_t> image(static_cast<size_t>(size));
  in.seekg(0);
  if (!in.read(reinterpret_cast<char*>(image.data()), size)) fail(path, "read error");
  return parse_npy(image, path);
}

std::vector<uint8_t> npy_image_f32(const std::vector<int64_t>& shape, const float* data) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < shape.size(); ++i) header += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? "," : "") + (i + 1 < shape.size() ? " " : "");
  header += "), }";
  // Pad so that magic + version + length + header (ending in '\n') is a multiple of 64.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  int64_t n = 1;
  for (int64_t d : shape) n *= d;

  // magic (6) | version 1.0 (2) | header length, uint16 LE (2) | header | payload
  const size_t payload = size_t(n) * 4;
  std::vector<uint8_t> image(10 + header.size() + payload);
  std::memcpy(image.data(), kMagic, kMagicLen);
  image[6] = 1;
  image[7] = 0;
  image[8] = uint8_t(header.size() & 0xff);
  image[9] = uint8_t(header.size() >> 8);
  std::memcpy(image.data() + 10, header.data(), header.size());
  if (payload) std::memcpy(image.data() + 10 + header.size(), data, payload);
  return image;
}

}  // namespace blasst::tools
