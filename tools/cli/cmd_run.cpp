// `blasst run`: one attention call on .npy inputs.
//   Q [B, Lq, Hq, D], K [B, Lk, Hkv, D], V [B, Lk, Hkv, Dv]  (float32 or float16 .npy)
//   -> O [B, Lq, Hq, Dv] float32, optional LSE [B, Lq, Hq] float32, optional statistics JSON.
// Every output is written to a temporary first and renamed only after all were written.
#include <blasst/blasst.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>

#include "cli_common.hpp"
#include "common/attention_runner.hpp"
#include "common/npy.hpp"
#include "common/output_files.hpp"

namespace blasst::cli {
namespace {

using tools::NpyArray;

struct RunOptions {
  std::string q, k, v, out, lse, stats;
  std::string phase = "prefill", order = "ascending", engine = "auto", dtype;
  bool causal = false;
  float scale = 0.0f, sf = 0.0f;
  int block_m = 0, block_n = 0, splits = 0, threads = 0;
};

class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Checks ranks and the dimensions the three files must share; returns the problem.
tools::Problem check_shapes(const RunOptions& o, const NpyArray& q, const NpyArray& k, const NpyArray& v) {
  using tools::shape_string;
  for (auto [path, arr, what] : {std::tuple{&o.q, &q, "[B, Lq, Hq, D]"}, std::tuple{&o.k, &k, "[B, Lk, Hkv, D]"},
                                 std::tuple{&o.v, &v, "[B, Lk, Hkv, Dv]"}}) {
    if (arr->shape.size() != 4)
      throw InputError(*path + ": shape " + shape_string(arr->shape) + " has rank " + std::to_string(arr->shape.size()) +
                       ", expected rank 4 " + what);
  }
  auto mismatch = [](const std::string& path, const std::string& dim, int64_t got, const std::string& ref, int64_t want) {
    return InputError(path + ": " + dim + " is " + std::to_string(got) + ", expected " + std::to_string(want) +
                      " (as in " + ref + ")");
  };
  if (k.shape[0] != q.shape[0]) throw mismatch(o.k, "batch B (dim 0)", k.shape[0], o.q, q.shape[0]);
  if (v.shape[0] != q.shape[0]) throw mismatch(o.v, "batch B (dim 0)", v.shape[0], o.q, q.shape[0]);
  if (k.shape[3] != q.shape[3]) throw mismatch(o.k, "head dim D (dim 3)", k.shape[3], o.q, q.shape[3]);
  if (v.shape[1] != k.shape[1]) throw mismatch(o.v, "key length Lk (dim 1)", v.shape[1], o.k, k.shape[1]);
  if (v.shape[2] != k.shape[2]) throw mismatch(o.v, "KV heads Hkv (dim 2)", v.shape[2], o.k, k.shape[2]);
  for (auto [path, arr] : {std::pair{&o.q, &q}, std::pair{&o.k, &k}, std::pair{&o.v, &v}}) {
    if (arr->shape[0] < 1 || arr->shape[2] < 1 || arr->shape[3] < 1)
      throw InputError(*path + ": shape " + shape_string(arr->shape) + " has an empty batch, head or head-dim axis");
    for (int64_t d : arr->shape)
      if (d > INT32_MAX) throw InputError(*path + ": dimension " + std::to_string(d) + " exceeds 2^31-1");
  }
  if (q.shape[2] % k.shape[2] != 0)
    throw InputError(o.q + ": Hq (dim 2) is " + std::to_string(q.shape[2]) + ", expected a multiple of Hkv = " +
                     std::to_string(k.shape[2]) + " (dim 2 of " + o.k + ")");
  tools::Problem p;
  p.batch = q.shape[0];
  p.lq = q.shape[1];
  p.hq = q.shape[2];
  p.d = q.shape[3];
  p.lk = k.shape[1];
  p.hkv = k.shape[2];
  p.dv = v.shape[3];
  p.causal = o.causal;
  p.scale = o.scale;
  return p;
}

nlohmann::ordered_json stats_json(const tools::CallResult& r, blasst_phase phase, float sf) {
  nlohmann::ordered_json j;
  j["visited"] = r.info.visited;
  j["skipped"] = r.info.skipped;
  j["sparsity"] = r.sparsity();
  nlohmann::ordered_json per_head = nlohmann::ordered_json::array();
  for (size_t h = 0; h + 1 < r.per_head.size(); h += 2) per_head.push_back({r.per_head[h], r.per_head[h + 1]});
  j["per_head"] = per_head;
  j["per_head_axis"] = phase == BLASST_PHASE_DECODE ? "kv_head" : "q_head";
  j["engine"] = tools::engine_label(r.info.engine);
  j["phase"] = tools::phase_label(phase);
  j["threshold_scale_factor"] = sf;
  j["block_m"] = r.info.geometry.block_m;
  j["block_n"] = r.info.geometry.block_n;
  j["order"] = tools::order_label(r.info.geometry.order);
  j["splits"] = r.info.geometry.splits;
  return j;
}

int run_command(const RunOptions& o) {
  const blasst_phase phase = parse_phase(o.phase);
  blasst_geometry geometry{};
  geometry.block_m = o.block_m;
  geometry.block_n = o.block_n;
  geometry.order = parse_order(o.order);
  geometry.splits = o.splits;

  // Fail on unwritable outputs before any work.
  try {
    tools::check_writable("--out", o.out);
    if (!o.lse.empty()) tools::check_writable("--lse", o.lse);
    if (!o.stats.empty()) tools::check_writable("--stats", o.stats);
  } catch (const tools::OutputError& e) {
    throw InputError(e.what());
  }

  const NpyArray q = tools::read_npy(o.q);
  const NpyArray k = tools::read_npy(o.k);
  const NpyArray v = tools::read_npy(o.v);
  const tools::Problem problem = check_shapes(o, q, k, v);

  // Compute dtype: as asked, else fp16 when every input is float16, else fp32.
  const bool all_half = q.dtype == tools::NpyDtype::Float16 && k.dtype == tools::NpyDtype::Float16 &&
                        v.dtype == tools::NpyDtype::Float16;
  const blasst_dtype dtype = o.dtype.empty() ? (all_half ? BLASST_DTYPE_FLOAT16 : BLASST_DTYPE_FLOAT32) : parse_dtype(o.dtype);
  const blasst_engine engine = resolve_engine(parse_engine(o.engine), dtype);

  std::unique_ptr<tools::AttentionRunner> runner;
  {
    const std::vector<float> qf = q.to_float32(), kf = k.to_float32(), vf = v.to_float32();
    runner = std::make_unique<tools::AttentionRunner>(problem, dtype, qf.data(), kf.data(), vf.data(), engine, o.threads);
  }
  tools::CallResult result;
  if (Status s = runner->run(phase, o.sf, geometry, &result); !s) return report_error(s.message(), exit_code_for(s.code()));

  tools::PendingOutputs outputs;
  const std::vector<float> out = runner->output();
  outputs.stage(o.out, tools::npy_image_f32({problem.batch, problem.lq, problem.hq, problem.dv}, out.data()));
  if (!o.lse.empty()) {
    const std::vector<float> lse = runner->lse();
    outputs.stage(o.lse, tools::npy_image_f32({problem.batch, problem.lq, problem.hq}, lse.data()));
  }
  if (!o.stats.empty()) outputs.stage(o.stats, stats_json(result, phase, o.sf).dump(2) + "\n");
  outputs.commit();

  const blasst_geometry& g = result.info.geometry;
  std::printf("%s on %s: B=%lld Lq=%lld Lk=%lld Hq=%lld Hkv=%lld D=%lld Dv=%lld%s dtype=%s\n",
              tools::phase_label(phase), tools::engine_label(result.info.engine),
              (long long)problem.batch, (long long)problem.lq, (long long)problem.lk, (long long)problem.hq,
              (long long)problem.hkv, (long long)problem.d, (long long)problem.dv, problem.causal ? " causal" : "",
              tools::dtype_label(dtype));
  std::printf("geometry: block_m=%d block_n=%d order=%s splits=%d\n", g.block_m, g.block_n, tools::order_label(g.order),
              g.splits);
  std::printf("threshold_scale_factor=%g: visited %lld tiles, skipped %lld, sparsity %.4f\n", double(o.sf),
              (long long)result.info.visited, (long long)result.info.skipped, result.sparsity());
  return kExitOk;
}

}  // namespace

void add_run_command(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* sub = app.add_subcommand("run", "Run one attention call on .npy inputs and write O (and LSE, statistics)");
  sub->add_option("--q", o->q, "Queries .npy, float32 or float16, shape [B, Lq, Hq, D]")->required();
  sub->add_option("--k", o->k, "Keys .npy, shape [B, Lk, Hkv, D]")->required();
  sub->add_option("--v", o->v, "Values .npy, shape [B, Lk, Hkv, Dv]")->required();
  sub->add_option("--out", o->out, "Output O .npy, float32 [B, Lq, Hq, Dv]")->required();
  sub->add_option("--lse", o->lse, "Optional output log-sum-exp .npy, float32 [B, Lq, Hq] (natural log)");
  sub->add_option("--stats", o->stats, "Optional statistics JSON: visited/skipped tiles, sparsity, per-head counts, geometry used");
  sub->add_option("--phase", o->phase, "prefill (decision group: block_m rows of one query head) or decode (all query heads of a KV head)")
      ->capture_default_str()->check(CLI::IsMember({"prefill", "decode"}));
  sub->add_flag("--causal", o->causal, "Causal mask, bottom-right aligned (row i sees keys <= Lk - Lq + i); default off");
  sub->add_option("--scale", o->scale, "Score scale applied to q.k; 0 = 1/sqrt(D)")->capture_default_str()->check(CLI::Number);
  sub->add_option("--threshold-scale-factor,--sf", o->sf,
                  "Skip threshold factor: lambda = factor / Lk, a tile is skipped when every row of its group has "
                  "tile max - running max < ln(lambda); 0 = dense, lambda >= 1 also means dense")
      ->capture_default_str()->check(non_negative_finite());
  sub->add_option("--block-m", o->block_m, "Query rows per prefill decision group; 0 = engine default (128)")
      ->capture_default_str()->check(CLI::Range(0, 65536));
  sub->add_option("--block-n", o->block_n, "Keys per KV tile; 0 = engine default (128)")
      ->capture_default_str()->check(CLI::Range(0, 65536));
  sub->add_option("--order", o->order, "Tile visiting order: ascending (first tile is the anchor) or anchored (tile 0 and the last visible tile)")
      ->capture_default_str()->check(CLI::IsMember({"ascending", "anchored"}));
  sub->add_option("--splits", o->splits, "KV splits per decision group; 0 = engine default (1)")
      ->capture_default_str()->check(CLI::Range(0, 65536));
  sub->add_option("--engine", o->engine, "cpu, cuda, or auto (CUDA when built in, a GPU is present and the dtype is fp16/bf16; else CPU)")
      ->capture_default_str()->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  sub->add_option("--threads", o->threads, "CPU engine threads; 0 = all hardware threads")
      ->capture_default_str()->check(CLI::Range(0, 4096));
  sub->add_option("--dtype", o->dtype, "Compute dtype the inputs are converted to: fp32, fp16 or bf16 (default: fp16 when all "
                  "inputs are float16, else fp32; the CUDA engine needs fp16/bf16)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  sub->callback([o, exit_code] {
    try {
      *exit_code = run_command(*o);
    } catch (const tools::NpyError& e) {
      *exit_code = report_error(e.what());
    } catch (const InputError& e) {
      *exit_code = report_error(e.what());
    } catch (const tools::OutputError& e) {
      *exit_code = report_error(e.what(), kExitFailure);
    } catch (const std::bad_alloc&) {
      *exit_code = report_error("out of memory (inputs too large?)", kExitFailure);
    } catch (const std::exception& e) {
      *exit_code = report_error(e.what());
    }
  });
}

}  // namespace blasst::cli
