/* Calls blasst from C: one prefill with a strong attention sink, then one bad call.
 * Exits 0 only if the attention output is right and the bad call is refused with a message. */
#include <blasst/blasst.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

enum { L = 200, D = 8 };

static blasst_tensor view(float* data, int64_t numel) {
  blasst_tensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.dtype = BLASST_DTYPE_FLOAT32;
  t.batch_stride = (int64_t)L * D;
  t.token_stride = D;
  t.head_stride = D;
  t.numel = numel;
  return t;
}

int main(void) {
  static float q[L * D], k[L * D], v[L * D], out[L * D];
  for (int i = 0; i < L * D; ++i) {
    q[i] = 0.0f;
    k[i] = 0.0f;
    v[i] = (float)(i % D);
  }
  for (int i = 0; i < L; ++i) q[i * D] = 1.0f;
  k[0] = 100.0f; /* key 0 takes all the attention */

  blasst_args args;
  blasst_args_init(&args);
  args.batch = 1;
  args.num_q_heads = 1;
  args.num_kv_heads = 1;
  args.head_dim_qk = D;
  args.head_dim_v = D;
  args.max_seqlen_q = L;
  args.max_seqlen_k = L;
  args.q = view(q, L * D);
  args.k = view(k, L * D);
  args.v = view(v, L * D);
  args.out = view(out, L * D);
  args.engine = BLASST_ENGINE_CPU;
  args.threshold.threshold_scale_factor = 1.0f;
  args.geometry.block_n = 64;

  blasst_run_info info;
  blasst_run_info_init(&info);
  if (blasst_prefill(&args, &info) != BLASST_OK) {
    fprintf(stderr, "prefill failed: %s\n", blasst_last_error());
    return 1;
  }
  for (int d = 0; d < D; ++d) {
    if (fabsf(out[d] - (float)d) > 1e-4f) {
      fprintf(stderr, "out[0][%d] = %f, expected %d\n", d, out[d], d);
      return 1;
    }
  }
  printf("blasst %s: visited %lld skipped %lld\n", blasst_version(), (long long)info.visited, (long long)info.skipped);
  if (info.skipped == 0) return 1;

  args.num_kv_heads = 3; /* 1 is not a multiple of 3 */
  if (blasst_prefill(&args, &info) != BLASST_ERROR_INVALID_ARGUMENT || strstr(blasst_last_error(), "num_kv_heads") == NULL) {
    fprintf(stderr, "bad call not refused properly: %s\n", blasst_last_error());
    return 1;
  }
  return 0;
}
