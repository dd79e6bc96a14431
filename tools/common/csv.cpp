#include "common/csv.hpp"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace blasst::tools {
namespace fs = std::filesystem;

const std::vector<std::string>& bench_csv_columns() {
  static const std::vector<std::string> cols = {"gpu", "date", "commit", "phase", "kernel", "dtype",
                                                "batch", "lq", "lk", "hq", "hkv", "d", "causal", "sf",
                                                "sparsity", "ms", "tflops", "gbs"};
  return cols;
}

namespace {

std::string header_line() {
  std::string h;
  for (const std::string& c : bench_csv_columns()) h += (h.empty() ? "" : ",") + c;
  return h;
}

// Quotes a field only when it needs it (RFC 4180).
std::string field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string num(double v, int precision) {
  std::ostringstream os;
  os.precision(precision);
  os << v;
  return os.str();
}

}  // namespace

std::string append_bench_rows(const std::string& path, const std::vector<BenchRow>& rows) {
  std::error_code ec;
  const fs::path dir = fs::path(path).parent_path();
  if (!dir.empty() && !fs::is_directory(dir, ec)) {
    fs::create_directories(dir, ec);
    if (ec) throw std::runtime_error(path + ": cannot create directory " + dir.string() + ": " + ec.message());
  }
  std::string warning;
  const bool exists = fs::exists(path, ec) && fs::file_size(path, ec) > 0;
  if (exists) {
    std::ifstream in(path);
    std::string first;
    std::getline(in, first);
    if (first != header_line()) warning = path + ": existing header differs from the current schema; rows appended anyway";
  }
  std::ofstream out(path, std::ios::app);
  if (!out) throw std::runtime_error(path + ": cannot open for appending: " + std::strerror(errno));
  if (!exists) out << header_line() << '\n';
  for (const BenchRow& r : rows) {
    out << field(r.gpu) << ',' << r.date << ',' << field(r.commit) << ',' << r.phase << ',' << r.kernel << ','
        << r.dtype << ',' << r.batch << ',' << r.lq << ',' << r.lk << ',' << r.hq << ',' << r.hkv << ','
        << r.d << ',' << (r.causal ? 1 : 0) << ',' << num(r.sf, 6) << ',' << num(r.sparsity, 5) << ','
        << num(r.ms, 6) << ',' << num(r.tflops, 6) << ',' << (r.gbs ? num(*r.gbs, 6) : std::string()) << '\n';
  }
  out.flush();
  if (!out) throw std::runtime_error(path + ": write failed");
  return warning;
}

}  // namespace blasst::tools
