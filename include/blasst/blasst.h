/*
 * blasst: BLASST (skip-softmax) attention, C ABI.
 *
 * One attention call computes, per batch entry b, query head h and query row i,
 *   O[b,i,h,:] = softmax_k(scale * q . k_k) @ V   over the keys row i sees,
 * while skipping KV tiles whose scores cannot matter (SPEC.md section 3).
 *
 * Shapes (per batch entry):  Q [Lq, Hq, Dqk]   K [Lk, Hkv, Dqk]   V [Lk, Hkv, Dv]
 *                            O [Lq, Hq, Dv]    LSE [Lq, Hq] (fp32)
 * Hq = G * Hkv; query head h reads KV head h / G.
 *
 * Every call validates its arguments and returns a status; on error nothing is
 * written to any output and blasst_last_error() names the argument at fault.
 * All strides are in elements (not bytes); the last dimension of every tensor
 * is contiguous (stride 1).
 */
#ifndef BLASST_BLASST_H
#define BLASST_BLASST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BLASST_VERSION_MAJOR 0
#define BLASST_VERSION_MINOR 1
#define BLASST_VERSION_PATCH 0

/* In C++ the enums get a fixed underlying type, so any int a C caller stores in one is a valid
 * value to check (the layout is the same int-sized enum as in C). */
#ifdef __cplusplus
#define BLASST_ENUM_BASE : int
#else
#define BLASST_ENUM_BASE
#endif

/* Largest head dimension any engine accepts (MLA absorbed decode: 576/512). */
#define BLASST_MAX_HEAD_DIM 576

typedef enum blasst_status BLASST_ENUM_BASE {
  BLASST_OK = 0,
  BLASST_ERROR_INVALID_ARGUMENT = 1, /* a bad argument; the message names it */
  BLASST_ERROR_UNSUPPORTED = 2,      /* valid, but no engine here can run it */
  BLASST_ERROR_OUT_OF_MEMORY = 3,
  BLASST_ERROR_CUDA = 4,             /* a CUDA runtime error; the message has the CUDA text */
  BLASST_ERROR_INTERNAL = 5
} blasst_status;

typedef enum blasst_dtype BLASST_ENUM_BASE {
  BLASST_DTYPE_FLOAT32 = 0,
  BLASST_DTYPE_FLOAT16 = 1,
  BLASST_DTYPE_BFLOAT16 = 2,
  BLASST_DTYPE_FLOAT8_E4M3 = 3 /* OCP e4m3 (torch.float8_e4m3fn): with dequantization scales */
} blasst_dtype;

typedef enum blasst_phase BLASST_ENUM_BASE {
  BLASST_PHASE_PREFILL = 0, /* decision group: block_m rows of one query head */
  BLASST_PHASE_DECODE = 1   /* decision group: a KV head's (query head, row) pairs, head-major,
                               all of them or chunks of block_m (MLA: 16-128 heads per KV head) */
} blasst_phase;

typedef enum blasst_order BLASST_ENUM_BASE {
  BLASST_ORDER_ASCENDING = 0, /* first visited tile is the anchor; m starts at -inf */
  BLASST_ORDER_ANCHORED = 1   /* anchors: tile 0 and the last visible tile; m seeded from them */
} blasst_order;

typedef enum blasst_engine BLASST_ENUM_BASE {
  BLASST_ENGINE_AUTO = 0, /* CUDA when the pointers are device pointers and a CUDA engine is built */
  BLASST_ENGINE_CPU = 1,
  BLASST_ENGINE_CUDA = 2
} blasst_engine;

/* Tile decisions written to blasst_args.decisions (one byte per tile). */
typedef enum blasst_decision BLASST_ENUM_BASE {
  BLASST_TILE_NOT_VISITED = 0,
  BLASST_TILE_KEPT = 1,
  BLASST_TILE_SKIPPED = 2
} blasst_decision;

/*
 * A strided view of one tensor operand. Element (b, t, h, d) of a contiguous or
 * padded layout lives at data + b*batch_stride + t*token_stride + h*head_stride + d.
 *   - ragged layouts (cu_seqlens given): t is the packed token index cu_seqlens[b] + i,
 *     batch_stride is ignored.
 *   - paged K/V (block_table given): "b" is the physical page and t the slot in the page,
 *     so batch_stride is the page stride ([num_pages, page_size, Hkv, D] layout).
 * numel is the number of elements addressable from data (the extent of the view, not of a
 * larger allocation it may be part of): every access the call can make is checked against it
 * before anything runs. CUDA engines do not read device memory on the host, so there the extents
 * of padded layouts and of every page are checked, while the contents of cu_seqlens, seqlens,
 * block_table and per_kv_head_factor (device memory) are trusted: they must hold what the CPU
 * engine would accept (it checks them all). The CPU engine refuses device pointers.
 */
typedef struct blasst_tensor {
  void* data;
  blasst_dtype dtype;
  int64_t batch_stride;
  int64_t token_stride;
  int64_t head_stride;
  int64_t numel;
} blasst_tensor;

/* Tile geometry. The CPU engine takes it as given (0 = default); GPU engines report what they used. */
typedef struct blasst_geometry {
  int32_t block_m;     /* prefill: query rows per decision group (default 128); decode: (head, row)
                          pairs per group, head-major within a KV head (default 0 = all of them) */
  int32_t block_n;     /* keys per KV tile (default 128) */
  blasst_order order;  /* default BLASST_ORDER_ASCENDING */
  int32_t splits;      /* KV splits per decision group (default 1) */
} blasst_geometry;

/*
 * Skip threshold of SPEC section 4 for this call (one layer, one phase):
 *   lambda_b = threshold_scale_factor / Lk_b;  0 = exact dense; lambda >= 1 turns skipping off
 *   for that batch entry. per_kv_head_factor, when not NULL, holds num_kv_heads factors
 *   (host memory for the CPU engine, device memory for CUDA engines) and replaces the scalar.
 * per_request_factor, when not NULL, holds batch factors, one per batch entry (same memory
 *   rules), and replaces the scalar for its entry; it cannot be combined with per_kv_head_factor.
 *   CUDA engines read it when the kernel runs, so a call captured in a CUDA graph takes the
 *   values present at each replay. The CPU engine refuses a value that is not finite and >= 0;
 *   CUDA engines do not check device memory: there such a value (NaN, negative, inf) makes its
 *   entry dense, as lambda >= 1 does.
 */
typedef struct blasst_threshold {
  float threshold_scale_factor;
  const float* per_kv_head_factor;
  const float* per_request_factor;
} blasst_threshold;

/*
 * Dequantization scales of FP8 (e4m3) operands: the real value of a stored element x of Q, K or
 * V is scale * x, exactly (engines fold the scales into the score scale and the output). Each
 * pointer holds one value (per_kv_head = 0) or num_kv_heads values (per_kv_head = 1; the query
 * heads of KV head h take q[h]); host memory for the CPU engine, device memory for CUDA
 * engines. A scale is required for, and only for, an operand stored in FP8. The CPU engine
 * refuses a value that is not finite and > 0; CUDA engines do not read device memory on the host.
 */
typedef struct blasst_scales {
  const float* q;
  const float* k;
  const float* v;
  int32_t per_kv_head;
} blasst_scales;

typedef struct blasst_args {
  uint32_t struct_size; /* sizeof(blasst_args); set by blasst_args_init */

  int32_t batch;
  int32_t num_q_heads;
  int32_t num_kv_heads;
  int32_t head_dim_qk;
  int32_t head_dim_v;
  int32_t max_seqlen_q; /* padded Lq; the bound for ragged entries */
  int32_t max_seqlen_k; /* padded Lk; the bound for ragged or paged entries */

  /* Per-entry lengths. At most one of cu_seqlens_* and seqlens_* per side.
   * cu_seqlens_q [batch+1]: ragged packed Q/O/LSE (t = cu_seqlens_q[b] + i).
   * seqlens_q [batch]: padded Q with per-entry lengths. Neither: every entry has max_seqlen_q.
   * Same for K/V. Paged K/V takes seqlens_k (or max_seqlen_k for all). */
  const int32_t* cu_seqlens_q;
  const int32_t* seqlens_q;
  const int32_t* cu_seqlens_k;
  const int32_t* seqlens_k;

  /* Paged KV cache: block_table [batch, block_table_stride] of page indices < num_pages;
   * token t of entry b is slot t % page_size of page block_table[b][t / page_size]. */
  const int32_t* block_table;
  int32_t block_table_stride;
  int32_t page_size;
  int32_t num_pages;

  blasst_tensor q;   /* [B, Lq, Hq, Dqk] */
  blasst_tensor k;   /* [B, Lk, Hkv, Dqk] (or pages) */
  blasst_tensor v;   /* [B, Lk, Hkv, Dv]  (or pages) */
  blasst_tensor out; /* [B, Lq, Hq, Dv], same dtype as q (FP8 q: float32, float16 or bfloat16) */
  /* dtypes: q, k, v share one of float32, float16, bfloat16; or K and V (together) in FP8 beside
   * a 16/32-bit q (an FP8 KV cache); or all three in FP8. */
  blasst_tensor lse; /* [B, Lq, Hq] fp32 with head dim stride 1 unused; data may be NULL */

  float scale;  /* score scale; 0 = 1/sqrt(head_dim_qk) */
  int32_t causal; /* bottom-right aligned: row i sees keys k <= Lk - Lq + i */

  blasst_threshold threshold;
  blasst_scales scales; /* FP8 operands only; zeroed otherwise */
  blasst_geometry geometry;
  blasst_engine engine;
  int32_t num_threads; /* CPU engine: 0 = all hardware threads */
  void* stream;        /* cudaStream_t for CUDA engines */

  /* Optional statistics outputs (same memory space as the engine's tensors).
   * stats_per_head [H * 2] int64: (visited, skipped) per query head in prefill,
   * per KV head in decode. decisions [batch, groups, num_tiles] uint8 blasst_decision,
   * groups = Hq * ceil(max_seqlen_q / block_m) in prefill (head-major), in decode
   * Hkv * ceil(G * max_seqlen_q / block_m) (KV-head-major; Hkv when block_m = 0);
   * num_tiles = ceil(max_seqlen_k / block_n). */
  int64_t* stats_per_head;
  uint8_t* decisions;
  int64_t decisions_numel;

  /* Scratch memory (device memory for CUDA engines): split-KV partial results in decode, V
   * transposed for FP8 prefill on the sm_90a kernel (16-byte aligned). NULL lets the engine use
   * its own cached buffer (grown as needed, not CUDA-graph capturable); size it with
   * blasst_workspace_size to capture calls in a graph. The CPU engine needs none. */
  void* workspace;
  size_t workspace_bytes;
} blasst_args;

/* What a call did. */
typedef struct blasst_run_info {
  uint32_t struct_size;     /* sizeof(blasst_run_info); set by blasst_run_info_init */
  blasst_engine engine;     /* the engine that ran */
  blasst_geometry geometry; /* the geometry it used */
  int64_t visited;          /* visited tiles, summed over decision groups */
  int64_t skipped;          /* skipped tiles */
} blasst_run_info;

/*
 * Gradients of one forward call (training). Given the forward's decisions, BLASST attention is
 * block-sparse attention over the kept tiles of each decision group, so the gradients are those of
 * softmax attention over the keys a row sees in kept tiles. blasst_backward recomputes the scores
 * and each row's log-sum-exp in fp64 from args' q, k, v (args.out and args.lse are not read) and
 * writes dq, dk, dv: dq rows past an entry's query length and dk, dv rows past its key length are
 * not written. The CPU engine runs it (host memory; dense, padded or ragged layouts, not paged;
 * 16/32-bit operands, all of one dtype with the gradients and dout).
 */
typedef struct blasst_backward_args {
  uint32_t struct_size;      /* sizeof(blasst_backward_args); set by blasst_backward_args_init */
  blasst_phase phase;        /* the forward's phase (its decision groups) */
  blasst_geometry geometry;  /* the forward's geometry as blasst_run_info reported it */
  const uint8_t* decisions;  /* the forward's trace [batch, groups, tiles] (blasst_args.decisions) */
  int64_t decisions_numel;
  blasst_tensor dout;        /* upstream gradient of out, laid out as out */
  blasst_tensor dlse;        /* upstream gradient of lse (fp32, laid out as lse); data may be NULL */
  blasst_tensor dq, dk, dv;  /* written, laid out as q, k, v */
} blasst_backward_args;

/* Defaults: zeroed arguments with struct_size set, engine AUTO, default geometry. */
void blasst_args_init(blasst_args* args);
void blasst_run_info_init(blasst_run_info* info);
void blasst_backward_args_init(blasst_backward_args* grads);

/* Prefill and decode attention. info may be NULL. */
blasst_status blasst_prefill(const blasst_args* args, blasst_run_info* info);
blasst_status blasst_decode(const blasst_args* args, blasst_run_info* info);

/* dq, dk, dv of the forward call `args` (see blasst_backward_args). */
blasst_status blasst_backward(const blasst_args* args, const blasst_backward_args* grads);

/* Bytes of workspace a call with these arguments needs (0 if none). */
blasst_status blasst_workspace_size(const blasst_args* args, blasst_phase phase, size_t* bytes);

/* Message of the last failed call on this thread ("" after a success). */
const char* blasst_last_error(void);
const char* blasst_status_name(blasst_status status);
const char* blasst_version(void);

/* 1 when a CUDA engine was built in and a device is usable. */
int blasst_cuda_available(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* BLASST_BLASST_H */
