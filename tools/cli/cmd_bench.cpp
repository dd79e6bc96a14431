// `blasst bench`: CPU benchmark of the core. Per phase, dense attention (threshold 0) and
// skip-softmax at several threshold factors on the structured workload, median of N runs.
// Reports dense-equivalent GFLOP/s (4 * Lq * Lk * D * Hq per entry, halved for causal), for
// decode also the dense-equivalent K+V bytes per second, the measured sparsity, the speedup
// over dense and its ratio to the bound 2 / (2 - s) (the share of work that skipping removes
// when QK^T must still be computed for every tile). Rows are appended to a CSV file.
//
// `blasst bench --engine cuda ...` runs the GPU benchmark scripts instead (gpu_bench_forward.hpp).
#include <blasst/blasst.hpp>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cli_common.hpp"
#include "common/attention_runner.hpp"
#include "common/csv.hpp"
#include "common/sysinfo.hpp"
#include "common/timing.hpp"
#include "common/workload.hpp"

namespace blasst::cli {
namespace {

struct BenchOptions {
  std::string phase = "all", dtype = "fp32", order = "ascending", engine = "cpu", thresholds, csv;
  bool no_csv = false;
  bool causal = false;
  int64_t seqlen = 0, q_len = 1, heads = 0, kv_heads = 0, head_dim = 128, batch = 0;
  int reps = 3, warmup = 1, threads = 0, block_m = 0, block_n = 0, splits = 0;
  uint64_t seed = 1;
};

std::vector<float> parse_thresholds(const std::string& list, const std::vector<float>& fallback) {
  if (list.empty()) return fallback;
  std::vector<float> out;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    float v = 0.0f;
    try {
      v = std::stof(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || !(v >= 0.0f) || v > 3.0e38f)
      throw std::invalid_argument("--thresholds: '" + item + "' is not a non-negative number");
    if (v > 0.0f) out.push_back(v);  // dense is always measured
  }
  return out;
}

std::string default_csv_path() {
#ifdef BLASST_SOURCE_DIR
  std::error_code ec;
  if (std::filesystem::is_directory(std::string(BLASST_SOURCE_DIR) + "/bench", ec))
    return std::string(BLASST_SOURCE_DIR) + "/bench/results/cpu_bench.csv";
#endif
  return "bench/results/cpu_bench.csv";
}

int bench_phase(const BenchOptions& o, blasst_phase phase, std::vector<tools::BenchRow>* rows) {
  const bool decode = phase == BLASST_PHASE_DECODE;
  tools::WorkloadSpec w;
  w.seed = o.seed;
  w.batch = o.batch > 0 ? o.batch : (decode ? 4 : 1);
  w.lk = o.seqlen > 0 ? o.seqlen : (decode ? 16384 : 4096);
  w.lq = decode ? o.q_len : w.lk;
  w.hq = o.heads > 0 ? o.heads : (decode ? 32 : 8);
  w.hkv = o.kv_heads > 0 ? o.kv_heads : (decode ? std::max<int64_t>(1, w.hq / 4) : w.hq);
  w.d = w.dv = o.head_dim;
  if (w.hq % w.hkv != 0)
    return report_error("--heads " + std::to_string(w.hq) + " is not a multiple of --kv-heads " + std::to_string(w.hkv));
  const std::vector<float> factors =
      parse_thresholds(o.thresholds, decode ? std::vector<float>{10, 100, 1000, 3000} : std::vector<float>{10, 100, 300, 1000});

  const blasst_dtype dtype = parse_dtype(o.dtype);
  tools::Problem p;
  p.batch = w.batch, p.lq = w.lq, p.lk = w.lk, p.hq = w.hq, p.hkv = w.hkv, p.d = w.d, p.dv = w.dv;
  p.causal = o.causal;
  const char* name = tools::phase_label(phase);

  Progress progress(std::string("bench ") + name, int(factors.size()) + 2);
  progress.step("generating the workload");
  std::unique_ptr<tools::AttentionRunner> runner;
  {
    const tools::Workload data = tools::generate_workload(w);
    runner = std::make_unique<tools::AttentionRunner>(p, dtype, data.q.data(), data.k.data(), data.v.data(),
                                                      BLASST_ENGINE_CPU, o.threads);
  }
  blasst_geometry geometry{};
  geometry.block_m = o.block_m;
  geometry.block_n = o.block_n;
  geometry.order = parse_order(o.order);
  geometry.splits = o.splits;

  Status status;
  tools::CallResult result;
  auto measure = [&](float sf) {
    return tools::time_runs([&] { return bool(status = runner->run(phase, sf, geometry, &result)); }, o.warmup, o.reps);
  };

  const std::string cpu = tools::cpu_label(), date = tools::utc_date(), commit = tools::source_commit();
  const double flops = p.dense_flops(), bytes = p.kv_bytes(dtype);
  auto add_row = [&](const char* kernel, float sf, double sparsity, double ms) {
    tools::BenchRow r;
    r.gpu = cpu, r.date = date, r.commit = commit, r.phase = name, r.kernel = kernel, r.dtype = tools::dtype_label(dtype);
    r.batch = p.batch, r.lq = p.lq, r.lk = p.lk, r.hq = p.hq, r.hkv = p.hkv, r.d = p.d, r.causal = p.causal;
    r.sf = sf, r.sparsity = sparsity, r.ms = ms, r.tflops = flops / (ms * 1e9);
    if (decode) r.gbs = bytes / (ms * 1e6);
    rows->push_back(r);
  };

  progress.step("dense");
  const tools::Timing dense = measure(0.0f);
  if (!status) return report_error(status.message(), exit_code_for(status.code()));
  const blasst_geometry used = result.info.geometry;
  add_row("blasst-cpu-dense", 0.0f, 0.0, dense.median_ms);

  std::vector<std::string> head = {"kernel", "sf", "lambda", "sparsity", "ms", "GFLOP/s"};
  if (decode) head.push_back("K+V GB/s");
  for (const char* h : {"speedup", "bound 2/(2-s)", "of bound"}) head.push_back(h);
  Table table(head);
  auto table_row = [&](const char* kernel, float sf, double s, double ms) {
    const double speedup = dense.median_ms / ms, bound = 2.0 / (2.0 - s);
    std::vector<std::string> r = {kernel, fmt("%g", double(sf)), sf > 0 ? fmt("%.3g", double(sf) / double(p.lk)) : "-",
                                  fmt("%.3f", s), fmt("%.2f", ms), fmt("%.1f", flops / (ms * 1e6))};
    if (decode) r.push_back(fmt("%.2f", bytes / (ms * 1e6)));
    r.push_back(fmt("%.2fx", speedup));
    r.push_back(fmt("%.2fx", bound));
    r.push_back(fmt("%.0f%%", 100.0 * speedup / bound));
    table.add(r);
  };
  table_row("dense", 0.0f, 0.0, dense.median_ms);
  for (float sf : factors) {
    progress.step("threshold_scale_factor " + fmt("%g", double(sf)));
    const tools::Timing t = measure(sf);
    if (!status) return report_error(status.message(), exit_code_for(status.code()));
    add_row("blasst-cpu-skip", sf, result.sparsity(), t.median_ms);
    table_row("skip", sf, result.sparsity(), t.median_ms);
  }
  progress.done();

  std::printf("\n== %s: B=%lld Lq=%lld Lk=%lld Hq=%lld Hkv=%lld D=%lld%s %s, cpu engine, %d thread(s) ==\n", name,
              (long long)p.batch, (long long)p.lq, (long long)p.lk, (long long)p.hq, (long long)p.hkv, (long long)p.d,
              p.causal ? " causal" : "", tools::dtype_label(dtype), o.threads > 0 ? o.threads : tools::hardware_threads());
  std::printf("geometry: block_m=%d block_n=%d order=%s splits=%d; median of %d run(s) after %d warm-up\n", used.block_m,
              used.block_n, tools::order_label(used.order), used.splits, o.reps, o.warmup);
  table.print();
  std::fflush(stdout);
  return kExitOk;
}

int bench_command(const BenchOptions& o) {
  std::vector<blasst_phase> phases;
  if (o.phase == "prefill" || o.phase == "all") phases.push_back(BLASST_PHASE_PREFILL);
  if (o.phase == "decode" || o.phase == "all") phases.push_back(BLASST_PHASE_DECODE);
  if (o.phase == "all" && o.seqlen > 0)
    std::fprintf(stderr, "blasst bench: note: --seqlen applies to both phases (prefill Lq = Lk, decode Lk)\n");
  std::vector<tools::BenchRow> rows;
  for (blasst_phase ph : phases)
    if (int rc = bench_phase(o, ph, &rows); rc != kExitOk) return rc;
  if (!o.no_csv && !rows.empty()) {
    const std::string path = o.csv.empty() ? default_csv_path() : o.csv;
    const std::string warning = tools::append_bench_rows(path, rows);
    if (!warning.empty()) std::fprintf(stderr, "blasst bench: warning: %s\n", warning.c_str());
    std::printf("\nappended %zu row(s) to %s\n", rows.size(), path.c_str());
  }
  return kExitOk;
}

}  // namespace

void add_bench_command(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* sub = app.add_subcommand("bench", "CPU benchmark: dense vs skip-softmax at several thresholds on the structured "
                                              "workload; prints a table and appends CSV rows");
  sub->add_option("--phase", o->phase, "prefill, decode or all")->capture_default_str()->check(CLI::IsMember({"prefill", "decode", "all"}));
  sub->add_option("--engine", o->engine, "cpu (this benchmark) or cuda: runs python3 <source>/bench/gpu_bench.py (prefill) and/or "
                  "gpu_decode_bench.py (decode) with the arguments other than --engine and --phase")
      ->capture_default_str()->check(CLI::IsMember({"cpu", "cuda"}));
  sub->add_option("--seqlen", o->seqlen, "Sequence length in tokens: prefill Lq = Lk, decode Lk; 0 = 4096 (prefill), 16384 (decode)")
      ->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 30));
  sub->add_option("--q-len", o->q_len, "Decode: query rows per entry (Lq)")->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  sub->add_option("--batch", o->batch, "Batch entries; 0 = 1 (prefill), 4 (decode)")->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 20));
  sub->add_option("--heads", o->heads, "Query heads Hq; 0 = 8 (prefill), 32 (decode)")->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(4096)));
  sub->add_option("--kv-heads", o->kv_heads, "KV heads Hkv (divides Hq); 0 = Hq (prefill), Hq/4 (decode)")
      ->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(4096)));
  sub->add_option("--head-dim", o->head_dim, "Head dimension D (= Dv)")->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(BLASST_MAX_HEAD_DIM)));
  sub->add_flag("--causal", o->causal, "Causal mask (bottom-right aligned); FLOPs are halved; default off");
  sub->add_option("--thresholds", o->thresholds, "Comma-separated threshold_scale_factor values for skip mode (lambda = sf / Lk); "
                  "default 10,100,300,1000 (prefill), 10,100,1000,3000 (decode); dense is always measured");
  sub->add_option("--reps", o->reps, "Timed repetitions per point; the median is reported")->capture_default_str()->check(CLI::Range(1, 100000));
  sub->add_option("--warmup", o->warmup, "Untimed warm-up runs per point")->capture_default_str()->check(CLI::Range(0, 100000));
  sub->add_option("--threads", o->threads, "CPU engine threads; 0 = all hardware threads")->capture_default_str()->check(CLI::Range(0, 4096));
  sub->add_option("--dtype", o->dtype, "Compute dtype of Q/K/V/O: fp32, fp16 or bf16")->capture_default_str()
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  sub->add_option("--block-m", o->block_m, "Query rows per prefill decision group; 0 = engine default (128)")->capture_default_str()->check(CLI::Range(0, 65536));
  sub->add_option("--block-n", o->block_n, "Keys per KV tile; 0 = engine default (128)")->capture_default_str()->check(CLI::Range(0, 65536));
  sub->add_option("--order", o->order, "Tile visiting order: ascending or anchored")->capture_default_str()
      ->check(CLI::IsMember({"ascending", "anchored"}));
  sub->add_option("--splits", o->splits, "KV splits per decision group; 0 = engine default (1)")->capture_default_str()->check(CLI::Range(0, 65536));
  sub->add_option("--seed", o->seed, "Seed of the synthetic workload")->capture_default_str();
  sub->add_option("--csv", o->csv, "CSV file the rows are appended to (created with a header if absent); default "
                  "<source>/bench/results/cpu_bench.csv, or ./bench/results/cpu_bench.csv without a source tree");
  sub->add_flag("--no-csv", o->no_csv, "Do not write CSV rows");
  sub->callback([o, exit_code] {
    try {
      *exit_code = bench_command(*o);
    } catch (const std::invalid_argument& e) {
      *exit_code = report_error(e.what());
    } catch (const std::bad_alloc&) {
      *exit_code = report_error("out of memory (problem too large?)", kExitFailure);
    } catch (const std::exception& e) {
      *exit_code = report_error(e.what(), kExitFailure);
    }
  });
}

}  // namespace blasst::cli
