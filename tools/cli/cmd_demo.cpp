// `blasst demo`: the project's showcase. Generates the embedded structured workload (sink,
// local windows, topics, retrieval keys, heavy tails), runs dense attention and skip-softmax
// at several thresholds for prefill and for decode, and prints per phase: the factor, lambda,
// the measured sparsity (overall and the range over heads), the error against dense and the
// time and speedup.
#include <blasst/blasst.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "cli_common.hpp"
#include "common/attention_runner.hpp"
#include "common/sysinfo.hpp"
#include "common/npy.hpp"
#include "common/timing.hpp"
#include "common/workload.hpp"

namespace blasst::cli {
namespace {

struct DemoOptions {
  uint64_t seed = 1;
  bool quick = false;
  int threads = 0;
  int reps = 0;
  std::string engine = "auto";
};

struct PhaseSetup {
  blasst_phase phase;
  tools::WorkloadSpec spec;
  bool causal;
  std::vector<float> factors;  // skip thresholds to sweep (dense is always run first)
  int reps;
  std::string sample;  // path prefix of captured q/k/v (<prefix>_q.npy ...); empty = synthetic
  std::string title;
};

// Real attention captured from SmolLM2-135M (data/samples/manifest.json): layer 23, which has
// a strong attention sink, all 9 query / 3 KV heads over the first 2048 tokens of a license text.
const char* const kRealSample = BLASST_SOURCE_DIR "/data/samples/smollm2_licenses_L23_all_2048";

std::vector<PhaseSetup> demo_setups(const DemoOptions& o) {
  PhaseSetup prefill{BLASST_PHASE_PREFILL, {}, true, {1, 10, 100, 300, 1000, 3000}, o.quick ? 1 : 3, {}, {}};
  prefill.spec.batch = 1;
  prefill.spec.lq = prefill.spec.lk = o.quick ? 2048 : 4096;
  prefill.spec.hq = 8;
  prefill.spec.hkv = 2;
  prefill.spec.d = prefill.spec.dv = 128;

  PhaseSetup decode{BLASST_PHASE_DECODE, {}, false, {1, 10, 100, 1000, 3000, 10000}, o.quick ? 3 : 7, {}, {}};
  decode.spec.batch = 4;
  decode.spec.lq = 1;
  decode.spec.lk = o.quick ? 4096 : 16384;
  decode.spec.hq = 32;
  decode.spec.hkv = 8;
  decode.spec.d = decode.spec.dv = 128;
  prefill.title = decode.title = "structured synthetic attention";

  // Factors that give sparsity ~0.3 / 0.5 on this sample (data/samples/README.md).
  PhaseSetup real{BLASST_PHASE_PREFILL, {}, true, {30, 190, 500, 890, 2000}, o.quick ? 1 : 3, {}, {}};
  real.sample = kRealSample;
  real.title = "real attention: SmolLM2-135M layer 23, 2048 tokens of GPL-3";
  std::vector<PhaseSetup> setups;
  if (std::filesystem::exists(real.sample + "_q.npy")) setups.push_back(real);
  setups.push_back(prefill);
  setups.push_back(decode);
  for (PhaseSetup& s : setups) {
    s.spec.seed = o.seed;
    if (o.reps > 0) s.reps = o.reps;
  }
  return setups;
}

// Range of per-head sparsity, "0.12-0.85".
std::string head_range(const std::vector<int64_t>& per_head) {
  double lo = 1.0, hi = 0.0;
  for (size_t h = 0; h + 1 < per_head.size(); h += 2) {
    const double s = per_head[h] ? double(per_head[h + 1]) / double(per_head[h]) : 0.0;
    lo = std::min(lo, s);
    hi = std::max(hi, s);
  }
  if (per_head.empty()) return "-";
  return fmt("%.2f", lo) + "-" + fmt("%.2f", hi);
}

int run_phase(const PhaseSetup& setup, blasst_engine requested, int threads) {
  const blasst_dtype dtype = resolve_engine(requested, BLASST_DTYPE_FLOAT16) == BLASST_ENGINE_CUDA
                                 ? BLASST_DTYPE_FLOAT16
                                 : BLASST_DTYPE_FLOAT32;
  const blasst_engine engine = resolve_engine(requested, dtype);
  const tools::WorkloadSpec& w = setup.spec;
  const char* name = tools::phase_label(setup.phase);

  Progress progress(name, int(setup.factors.size()) + 2);
  progress.step(setup.sample.empty() ? "generating the workload" : "loading the captured sample");
  std::unique_ptr<tools::AttentionRunner> runner;
  tools::Problem p;
  p.causal = setup.causal;
  if (setup.sample.empty()) {
    const tools::Workload data = tools::generate_workload(w);
    p.batch = w.batch, p.lq = w.lq, p.lk = w.lk, p.hq = w.hq, p.hkv = w.hkv, p.d = w.d, p.dv = w.dv;
    runner = std::make_unique<tools::AttentionRunner>(p, dtype, data.q.data(), data.k.data(), data.v.data(), engine, threads);
  } else {
    // [1, L, H, D] float16 arrays, as the capture script writes them
    const tools::NpyArray q = tools::read_npy(setup.sample + "_q.npy");
    const tools::NpyArray k = tools::read_npy(setup.sample + "_k.npy");
    const tools::NpyArray v = tools::read_npy(setup.sample + "_v.npy");
    p.batch = q.shape[0], p.lq = q.shape[1], p.hq = q.shape[2], p.d = q.shape[3];
    p.lk = k.shape[1], p.hkv = k.shape[2], p.dv = v.shape[3];
    runner = std::make_unique<tools::AttentionRunner>(p, dtype, q.to_float32().data(), k.to_float32().data(),
                                                      v.to_float32().data(), engine, threads);
  }

  const blasst_geometry geometry{};  // engine defaults
  Status status;
  tools::CallResult result;
  auto timed = [&](float sf) {
    return tools::time_runs([&] { return bool(status = runner->run(setup.phase, sf, geometry, &result)); },
                            runner->on_device() ? 3 : 1, setup.reps);
  };

  progress.step("dense");
  const tools::Timing dense_t = timed(0.0f);
  if (!status) return report_error(status.message(), exit_code_for(status.code()));
  const std::vector<float> dense = runner->output();
  const blasst_run_info dense_info = result.info;

  Table table({"threshold_sf", "lambda", "sparsity", "heads min-max", "max_abs_err", "rel_l2_err", "ms", "speedup"});
  table.add({"0 (dense)", "-", fmt("%.3f", 0.0), "-", "0", "0", fmt("%.2f", dense_t.median_ms), "1.00x"});
  for (float sf : setup.factors) {
    progress.step("threshold_scale_factor " + fmt("%g", double(sf)));
    const tools::Timing t = timed(sf);
    if (!status) return report_error(status.message(), exit_code_for(status.code()));
    const tools::ErrorStats err = tools::compare_outputs(runner->output(), dense);
    const double lambda = double(sf) / double(p.lk);
    table.add({fmt("%g", double(sf)), lambda >= 1.0 ? fmt("%.3g (off)", lambda) : fmt("%.3g", lambda),
               fmt("%.3f", result.sparsity()), head_range(result.per_head), fmt("%.2e", err.max_abs),
               fmt("%.2e", err.rel_l2), fmt("%.2f", t.median_ms), fmt("%.2fx", dense_t.median_ms / t.median_ms)});
  }
  progress.done();

  const blasst_geometry& g = dense_info.geometry;
  std::printf("\n== %s, %s: B=%lld Lq=%lld Lk=%lld Hq=%lld Hkv=%lld D=%lld%s, %s on %s ==\n", name,
              setup.title.c_str(), (long long)p.batch,
              (long long)p.lq, (long long)p.lk, (long long)p.hq, (long long)p.hkv, (long long)p.d,
              p.causal ? " causal" : "", tools::dtype_label(dtype), tools::engine_label(dense_info.engine));
  std::printf("geometry: block_m=%d block_n=%d order=%s splits=%d; decision group = %s; median of %d run(s), ms per call\n",
              g.block_m, g.block_n, tools::order_label(g.order), g.splits,
              setup.phase == BLASST_PHASE_DECODE ? "the query heads of one KV head" : "block_m rows of one query head",
              setup.reps);
  std::printf("dense: %.2f ms, %.1f GFLOP/s dense-equivalent\n", dense_t.median_ms,
              p.dense_flops() / (dense_t.median_ms * 1e6));
  table.print();
  std::fflush(stdout);
  return kExitOk;
}

int demo_command(const DemoOptions& o) {
  const blasst_engine requested = parse_engine(o.engine);
  const int threads = o.threads > 0 ? o.threads : tools::hardware_threads();
  std::printf("blasst %s demo: real attention captured from SmolLM2-135M (when data/samples is present), then\n"
              "structured synthetic attention (sink, local windows, topics, retrieval keys, heavy-tailed noise,\n"
              "per-head sharpness), seed %llu; engine requested: %s; CPU threads: %d\n"
              "lambda = threshold_scale_factor / Lk; a KV tile is skipped when every row of its decision group\n"
              "has tile max - running max < ln(lambda). Errors are against dense attention of the same engine.\n",
              blasst_version(), (unsigned long long)o.seed, o.engine.c_str(), threads);
  const double t0 = tools::now_ms();
  for (const PhaseSetup& s : demo_setups(o)) {
    if (int rc = run_phase(s, requested, o.threads); rc != kExitOk) return rc;
  }
  std::printf("\ndone in %.1f s\n", (tools::now_ms() - t0) / 1000.0);
  return kExitOk;
}

}  // namespace

void add_demo_command(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<DemoOptions>();
  CLI::App* sub = app.add_subcommand("demo", "Sweep skip thresholds on the embedded structured workload (prefill and decode) "
                                             "and compare sparsity, error and speed with dense attention");
  sub->add_option("--seed", o->seed, "Seed of the synthetic workload")->capture_default_str();
  sub->add_flag("--quick", o->quick, "Smaller problems (prefill L=2048, decode Lk=4096) and fewer repetitions");
  sub->add_option("--threads", o->threads, "CPU engine threads; 0 = all hardware threads")
      ->capture_default_str()->check(CLI::Range(0, 4096));
  sub->add_option("--reps", o->reps, "Timed repetitions per point, after one warm-up run (median reported); 0 = 3 for prefill, 7 for decode (1 and 3 with --quick)")
      ->capture_default_str()->check(CLI::Range(0, 1000));
  sub->add_option("--engine", o->engine, "cpu, cuda, or auto (the GPU when a CUDA engine is built in and a device is present, else CPU)")
      ->capture_default_str()->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  sub->callback([o, exit_code] {
    try {
      *exit_code = demo_command(*o);
    } catch (const std::bad_alloc&) {
      *exit_code = report_error("out of memory", kExitFailure);
    } catch (const std::exception& e) {
      *exit_code = report_error(e.what(), kExitFailure);
    }
  });
}

}  // namespace blasst::cli
