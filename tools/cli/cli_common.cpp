#include "cli_common.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace blasst::cli {

int report_error(const std::string& message, int code) {
  std::fflush(stdout);
  std::fprintf(stderr, "blasst: error: %s\n", message.c_str());
  return code;
}

int exit_code_for(blasst_status status) {
  return status == BLASST_ERROR_INVALID_ARGUMENT || status == BLASST_ERROR_UNSUPPORTED ? kExitBadInput
                                                                                       : kExitFailure;
}

blasst_phase parse_phase(const std::string& s) {
  if (s == "prefill") return BLASST_PHASE_PREFILL;
  if (s == "decode") return BLASST_PHASE_DECODE;
  throw std::invalid_argument("--phase " + s + ": expected prefill or decode");
}
blasst_order parse_order(const std::string& s) {
  if (s == "ascending") return BLASST_ORDER_ASCENDING;
  if (s == "anchored") return BLASST_ORDER_ANCHORED;
  throw std::invalid_argument("--order " + s + ": expected ascending or anchored");
}
blasst_engine parse_engine(const std::string& s) {
  if (s == "auto") return BLASST_ENGINE_AUTO;
  if (s == "cpu") return BLASST_ENGINE_CPU;
  if (s == "cuda") return BLASST_ENGINE_CUDA;
  throw std::invalid_argument("--engine " + s + ": expected cpu, cuda or auto");
}
blasst_dtype parse_dtype(const std::string& s) {
  if (s == "fp32") return BLASST_DTYPE_FLOAT32;
  if (s == "fp16") return BLASST_DTYPE_FLOAT16;
  if (s == "bf16") return BLASST_DTYPE_BFLOAT16;
  throw std::invalid_argument("--dtype " + s + ": expected fp32, fp16 or bf16");
}

blasst_engine resolve_engine(blasst_engine requested, blasst_dtype dtype) {
  if (requested != BLASST_ENGINE_AUTO) return requested;
  return blasst_cuda_available() && dtype != BLASST_DTYPE_FLOAT32 ? BLASST_ENGINE_CUDA : BLASST_ENGINE_CPU;
}

Progress::Progress(std::string task, int total) : task_(std::move(task)), total_(total), tty_(::isatty(2) != 0) {}
Progress::~Progress() { done(); }

void Progress::step(const std::string& what) {
  ++count_;
  if (tty_) {
    std::fprintf(stderr, "\r\033[K[%d/%d] %s: %s ...", count_, total_, task_.c_str(), what.c_str());
    open_ = true;
  } else {
    std::fprintf(stderr, "[%d/%d] %s: %s\n", count_, total_, task_.c_str(), what.c_str());
  }
  std::fflush(stderr);
}

void Progress::done() {
  if (tty_ && open_) std::fprintf(stderr, "\r\033[K");
  open_ = false;
  std::fflush(stderr);
}

Table::Table(std::vector<std::string> headers) : headers_(std::move(headers)) {}
void Table::add(std::vector<std::string> row) {
  row.resize(headers_.size());
  rows_.push_back(std::move(row));
}

void Table::print(std::FILE* out) const {
  std::vector<size_t> width(headers_.size());
  for (size_t c = 0; c < headers_.size(); ++c) {
    width[c] = headers_[c].size();
    for (const auto& r : rows_) width[c] = std::max(width[c], r[c].size());
  }
  auto line = [&](const std::vector<std::string>& cells) {
    std::string s = " ";
    for (size_t c = 0; c < cells.size(); ++c) {
      s += std::string(width[c] - cells[c].size(), ' ') + cells[c];
      s += c + 1 < cells.size() ? "  " : "";
    }
    std::fprintf(out, "%s\n", s.c_str());
  };
  line(headers_);
  size_t total = 1;
  for (size_t w : width) total += w + 2;
  std::fprintf(out, " %s\n", std::string(total - 3, '-').c_str());
  for (const auto& r : rows_) line(r);
}

std::string fmt(const char* format, double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, value);
  return buf;
}

CLI::Validator non_negative_finite() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        double v = 0.0;
        size_t used = 0;
        try {
          v = std::stod(value, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (used == 0 || used != value.size() || !std::isfinite(v) || v < 0.0)
          return "'" + value + "' is not a finite number >= 0";
        return {};
      },
      "");
}

}  // namespace blasst::cli
