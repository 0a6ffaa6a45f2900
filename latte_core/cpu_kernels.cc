// CPU kernels for the Latte step and the SD VAE, loaded by MindSpore as "aot" custom ops
// (latte_core/kernels.py builds this file with g++ on first use and caches the library).
//
// Every entry point has MindSpore's AOT signature:
//   int f(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream, void *extra)
// params holds the inputs, then the outputs; all tensors are contiguous float32. A non-zero return makes
// MindSpore raise. Products call sgemm(): oneDNN's dnnl_sgemm once latte_use_onednn has loaded it (the
// default, kernels.py), else the BLAS named at build time (numpy's OpenBLAS, LATTE_SGEMM); everything else
// is plain loops the compiler vectorises (-O3 -march=native, omp simd).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>

namespace {

int available_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

const int kCores = available_cores();

// kCores - 1 worker threads that stay for the process: a parallel_for hands them its chunks instead of
// starting a std::thread per chunk (32-37 us for a start and join on the 2-core machines, ~450 times in
// a Latte-S/2 training step). One caller at a time: a second, concurrent one (MindSpore may run two
// kernels at once) gets false and starts its own threads. Workers sleep between calls (no spinning on a
// core that MindSpore's own threads need). A forked child starts a new team (pthread_atfork below).
class Team {
 public:
  // Runs task(i) for every i in [0, count) on the caller and the workers; false (nothing run) if busy
  bool run(int64_t count, const std::function<void(int64_t)> &task) {
    if (in_team_task) return false;  // a task's own parallel_for (more than 2 cores): not the team again
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    in_team_task = true;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = &task;
      count_ = count;
      next_.store(0);
      checked_in_ = 0;
      ++generation_;
    }
    wake_.notify_all();
    for (int64_t i = next_.fetch_add(1); i < count; i = next_.fetch_add(1)) task(i);
    in_team_task = false;
    std::unique_lock<std::mutex> lock(mutex_);  // every worker has seen this call before the next one starts
    done_.wait(lock, [&] { return checked_in_ == workers_; });
    return true;
  }

  static Team *instance() {
    static std::once_flag at_fork;
    std::call_once(at_fork, [] { pthread_atfork(nullptr, nullptr, [] { team_ = nullptr; }); });
    Team *team = team_.load();
    if (!team) {
      static std::mutex creating;
      std::lock_guard<std::mutex> lock(creating);
      if (!(team = team_.load())) team_.store(team = new Team(kCores - 1));  // kept for the process's life
    }
    return team;
  }

 private:
  explicit Team(int workers) : workers_(workers) {
    for (int i = 0; i < workers; ++i) std::thread([this] { work(); }).detach();
  }

  void work() {
    in_team_task = true;
    uint64_t seen = 0;
    for (;;) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      const std::function<void(int64_t)> &task = *task_;
      const int64_t count = count_;
      lock.unlock();
      for (int64_t i = next_.fetch_add(1); i < count; i = next_.fetch_add(1)) task(i);
      lock.lock();
      if (++checked_in_ == workers_) done_.notify_one();
    }
  }

  static std::atomic<Team *> team_;
  static thread_local bool in_team_task;
  const int workers_;
  std::mutex busy_, mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t)> *task_ = nullptr;
  int64_t count_ = 0;
  std::atomic<int64_t> next_{0};
  int checked_in_ = 0;
  uint64_t generation_ = 0;
};
std::atomic<Team *> Team::team_{nullptr};
thread_local bool Team::in_team_task = false;

// task(i) for i in [0, count) on `count` threads at once: the team's, or started threads when it is busy
void run_in_parallel(int64_t count, const std::function<void(int64_t)> &task) {
  if (count <= 1) {
    if (count == 1) task(0);
    return;
  }
  if (count <= kCores && Team::instance()->run(count, task)) return;
  std::vector<std::thread> workers;
  for (int64_t i = 1; i < count; ++i) workers.emplace_back(task, i);
  task(0);
  for (auto &worker : workers) worker.join();
}

// Runs body(begin, end) over [0, n) in contiguous chunks, one per thread (at most `threads`, the cores by
// default), when the work (n · cost_per_item elements) is large enough to pay for waking threads;
// otherwise on the calling thread. The chunks depend on n and the thread count only, not on which
// thread runs which.
template <class Body>
void parallel_for(int64_t n, int64_t cost_per_item, Body body, int64_t max_threads = kCores) {
  const int64_t threads = std::min<int64_t>(max_threads, n);
  if (threads <= 1 || n * cost_per_item < (int64_t{1} << 17)) {
    body(int64_t{0}, n);
    return;
  }
  const int64_t chunk = (n + threads - 1) / threads, chunks = (n + chunk - 1) / chunk;
  run_in_parallel(chunks, [&](int64_t i) { body(i * chunk, std::min(n, (i + 1) * chunk)); });
}

bool all_float32(int nparam, const char **dtypes) {
  for (int i = 0; i < nparam; ++i)
    if (std::strcmp(dtypes[i], "float32") != 0 && std::strcmp(dtypes[i], "float") != 0) return false;
  return true;
}

int64_t elements(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

// rows of a (..., last) tensor, i.e. the product of all but its last dimension
int64_t leading(int ndim, const int64_t *shape) { return elements(ndim - 1, shape); }

// exp(x) for float32 to ~1 ulp, in arithmetic the compiler vectorises (std::exp stays scalar without
// -ffast-math): x = k·ln2 + r, exp(r) by a degree-7 polynomial, 2^k through the exponent bits. The round
// to nearest integer adds and subtracts 1.5·2²³ (floor() blocks vectorisation under trapping math).
inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * __builtin_bit_cast(float, (static_cast<int32_t>(k) + 127) << 23);
}

inline float sigmoid(float v) { return 1.0f / (1.0f + fast_exp(-v)); }

// d/dv of v·sigmoid(v)
inline float silu_slope(float v) {
  const float s = sigmoid(v);
  return s * (1.0f + v * (1.0f - s));
}

constexpr float kGeluA = 1.5957691216057308f;   // 2·sqrt(2/π)
constexpr float kGeluB = 0.0713548162726009f;   // 2·sqrt(2/π)·0.044715

// Per-kernel counters (calls, nanoseconds, floating-point operations of the BLAS calls), read by
// `latte bench` through latte_kernel_stats: the matmul rate inside a training step is measured, not guessed.
enum Kernel {
  kDenseForward, kDenseBackward, kNormModulateForward, kNormModulateBackward, kGatedResidualForward,
  kGatedResidualBackward, kGeluForward, kGeluBackward, kSquaredSum, kGroupNormForward, kGroupNormBackward,
  kAttentionForward, kAttentionBackward, kConv2dForward, kNumKernels
};
const char *const kKernelNames[kNumKernels] = {
  "dense_forward", "dense_backward", "norm_modulate_forward", "norm_modulate_backward", "gated_residual_forward",
  "gated_residual_backward", "gelu_tanh_forward", "gelu_tanh_backward", "squared_sum", "group_norm_forward",
  "group_norm_backward", "attention_forward", "attention_backward", "conv2d_forward"};
std::atomic<int64_t> g_calls[kNumKernels], g_nanoseconds[kNumKernels], g_flops[kNumKernels];

class Timed {
 public:
  explicit Timed(Kernel kernel, int64_t flops = 0) : kernel_(kernel), start_(std::chrono::steady_clock::now()) {
    g_calls[kernel] += 1;
    g_flops[kernel] += flops;
  }
  ~Timed() {
    g_nanoseconds[kernel_] += std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::steady_clock::now() - start_).count();
  }

 private:
  Kernel kernel_;
  std::chrono::steady_clock::time_point start_;
};

// The distinct (m, n, k, transposes) of the dense layers' sgemm calls and how often each ran, so that a
// benchmark can time the BLAS alone on exactly the step's matmuls.
struct GemmShape {
  int64_t m, n, k;
  int trans_a, trans_b;
  int64_t calls;
};
std::mutex g_shapes_mutex;
std::vector<GemmShape> g_shapes;

#define F32(i) static_cast<float *>(params[i])
#define CF32(i) static_cast<const float *>(params[i])
#define AOT_ARGS int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *
#define REQUIRE_F32 \
  if (!all_float32(nparam, dtypes)) return 1

}  // namespace

extern "C" {

// name, calls, nanoseconds and flops of kernel i; returns 0, or 1 past the last kernel
int latte_kernel_stats(int i, const char **name, int64_t *calls, int64_t *nanoseconds, int64_t *flops) {
  if (i < 0 || i >= kNumKernels) return 1;
  *name = kKernelNames[i];
  *calls = g_calls[i];
  *nanoseconds = g_nanoseconds[i];
  *flops = g_flops[i];
  return 0;
}

void latte_kernel_stats_reset() {
  for (int i = 0; i < kNumKernels; ++i) g_calls[i] = g_nanoseconds[i] = g_flops[i] = 0;
  std::lock_guard<std::mutex> lock(g_shapes_mutex);
  g_shapes.clear();
}

// ------------------------------------------------------------------------------------------- dense
#ifdef LATTE_SGEMM
void LATTE_SGEMM(int order, int trans_a, int trans_b, LATTE_BLAS_INT m, LATTE_BLAS_INT n, LATTE_BLAS_INT k,
                 float alpha, const float *a, LATTE_BLAS_INT lda, const float *b, LATTE_BLAS_INT ldb, float beta,
                 float *c, LATTE_BLAS_INT ldc);

// oneDNN's row-major sgemm, once latte_use_onednn has loaded it; until then (or if it cannot) the BLAS's
using OnednnSgemm = int (*)(char, char, int64_t, int64_t, int64_t, float, const float *, int64_t, const float *,
                            int64_t, float, float *, int64_t);
OnednnSgemm g_onednn_sgemm = nullptr;

// Products of at most this many multiply-adds stay on OpenBLAS even with oneDNN loaded: the attention's
// per-head products (64³ for 64 tokens, 8·8·64 for 8 frames) ran faster on OpenBLAS's small-matrix kernels
// (one Zen 4 core, the step's attention: 8-frame forward 0.54 ms against 0.87-0.93, backward 1.5 against
// 3.0-3.6; 64-token backward 4.4-4.9 against 5.5-5.9), the dense layers' and convolutions' (>= 64 rows ×
// 384 × 384) on oneDNN's.
constexpr int64_t kOnednnMinProduct = int64_t{64} * 64 * 64;

// Row-major c = alpha·op(a)·op(b) + beta·c on the calling thread (oneDNN without a threadpool runs on it)
inline void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                  const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
  if (g_onednn_sgemm && m * n * k > kOnednnMinProduct) {
    g_onednn_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112 };
  LATTE_SGEMM(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, m, n, k, alpha, a, lda, b, ldb, beta,
              c, ldc);
}
#ifdef LATTE_BLAS_SET_THREADS
void LATTE_BLAS_SET_THREADS(int threads);
int LATTE_BLAS_GET_THREADS(void);
#endif

// Every kernel's BLAS calls run inside one of these, one kernel at a time (MindSpore may run independent
// kernels at once), with OpenBLAS set to one thread for the section (then restored): the kernels split
// their products over the cores themselves. OpenBLAS's own threads spin for ~0.1 s after each call
// (THREAD_TIMEOUT) on a core the next kernel needs: with them, the forward's attention, GELU and residual
// kernels, which run between dense layers, took 1.9x as long on a 2-core Xeon, and on a loaded 2-core
// AVX2 machine OpenBLAS threads under the attention's own ones made it 7x slower. One-thread sgemm
// everywhere also keeps results independent of the thread count a job pins.
class BlasSection {
 public:
  BlasSection() : lock_(mutex()) {
#ifdef LATTE_BLAS_SET_THREADS
    previous_ = LATTE_BLAS_GET_THREADS();
    if (previous_ != 1) LATTE_BLAS_SET_THREADS(1);
#endif
  }
  ~BlasSection() {
#ifdef LATTE_BLAS_SET_THREADS
    if (previous_ != 1) LATTE_BLAS_SET_THREADS(previous_);
#endif
  }

 private:
  static std::mutex &mutex() {
    static std::mutex blas_mutex;
    return blas_mutex;
  }
  std::lock_guard<std::mutex> lock_;
  int previous_ = 1;
};

// Row-major c = op(a)·op(b), plus bias (n) on every row if given, recorded in g_shapes, inside a
// BlasSection. The rows of c are cut into one block per thread (at most `threads`; multiples of 64 rows,
// whole register tiles), each block a one-thread sgemm on its own thread, which first writes the bias
// into its rows (while they are in its cache). Results depend on the core count only: with oneDNN, and
// OpenBLAS's AVX-512 kernels, 1 and 2 cores give the same bits but for long K (~4000: float32 rounding),
// on OpenBLAS's Haswell kernels they differ by float32 rounding.
void dense_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, const float *a, const float *b,
                const float *bias, float *c, int64_t threads = kCores) {
  {
    std::lock_guard<std::mutex> lock(g_shapes_mutex);
    auto found = std::find_if(g_shapes.begin(), g_shapes.end(), [&](const GemmShape &s) {
      return s.m == m && s.n == n && s.k == k && s.trans_a == trans_a && s.trans_b == trans_b;
    });
    if (found == g_shapes.end()) g_shapes.push_back({m, n, k, trans_a, trans_b, 1});
    else found->calls += 1;
  }
  const int64_t lda = trans_a ? m : k, ldb = trans_b ? k : n;
  constexpr int64_t kRowTile = 64;
  const int64_t tiles = (m + kRowTile - 1) / kRowTile;
  // a block's first row of op(a): row r of a, or column r of a stored transposed
  parallel_for(tiles, kRowTile * n * k, [=](int64_t begin, int64_t end) {
    const int64_t first = begin * kRowTile, rows = std::min(m, end * kRowTile) - first;
    if (bias)
      for (int64_t i = first; i < first + rows; ++i) std::memcpy(c + i * n, bias, n * sizeof(float));
    sgemm(trans_a, trans_b, rows, n, k, 1.0f, a + (trans_a ? first : first * lda), lda, b, ldb, bias ? 1.0f : 0.0f,
          c + first * n, n);
  }, threads);
}

int latte_gemm_shape(int i, int64_t *m, int64_t *n, int64_t *k, int *trans_a, int *trans_b, int64_t *calls) {
  std::lock_guard<std::mutex> lock(g_shapes_mutex);
  if (i < 0 || i >= static_cast<int>(g_shapes.size())) return 1;
  const GemmShape &s = g_shapes[i];
  *m = s.m, *n = s.n, *k = s.k, *trans_a = s.trans_a, *trans_b = s.trans_b, *calls = s.calls;
  return 0;
}

int latte_has_blas() { return 1; }

// Route every sgemm of the kernels to dnnl_sgemm of the oneDNN library at `path`, capped at oneDNN ISA
// `max_isa` (0: the CPU's best). `path` must be a private copy of MindSpore's libdnnl: loaded with
// RTLD_DEEPBIND it keeps its own settings, so MindSpore's own oneDNN stays capped at AVX2 for its
// convolutions (runtime.prefer_avx2_onednn) while these products run the CPU's widest kernels.
// Returns 0, or non-zero (and the BLAS stays in use) when the library or its symbols cannot be loaded.
int latte_use_onednn(const char *path, int max_isa) {
  if (g_onednn_sgemm) return 0;
  void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  if (!handle) return 1;
  auto set_max_isa = reinterpret_cast<int (*)(int)>(dlsym(handle, "dnnl_set_max_cpu_isa"));
  auto onednn_sgemm = reinterpret_cast<OnednnSgemm>(dlsym(handle, "dnnl_sgemm"));
  if (!set_max_isa || !onednn_sgemm) return 2;
  if (set_max_isa(max_isa) != 0) return 3;  // dnnl_success is 0; fails once its ISA has been read
  g_onednn_sgemm = onednn_sgemm;
  return 0;
}

// y = x·wᵀ + b.   x (..., K), w (N, K), b (N) -> y (..., N)
int latte_dense_forward(AOT_ARGS) {
  REQUIRE_F32;
  const float *x = CF32(0), *w = CF32(1), *b = CF32(2);
  float *y = F32(3);
  const int64_t m = leading(ndims[0], shapes[0]), k = shapes[0][ndims[0] - 1], n = shapes[1][0];
  Timed timed(kDenseForward, 2 * m * n * k);
  BlasSection blas;
  dense_gemm(0, 1, m, n, k, x, w, b, y);
  return 0;
}

// dx = dy·w, dw = dyᵀ·x, db = Σ_rows dy.   dy (..., N), x (..., K), w (N, K) -> dx, dw, db
int latte_dense_backward(AOT_ARGS) {
  REQUIRE_F32;
  const float *dy = CF32(0), *x = CF32(1), *w = CF32(2);
  float *dx = F32(3), *dw = F32(4), *db = F32(5);
  const int64_t m = leading(ndims[1], shapes[1]), k = shapes[1][ndims[1] - 1], n = shapes[2][0];
  Timed timed(kDenseBackward, 4 * m * n * k);
  {
    // dx and dw (the same multiply-adds) side by side, each on half the cores: two whole products pack
    // their operands once each, where row blocks of each would pack the shared one on every core
    BlasSection blas;
    const int64_t dx_threads = std::max<int64_t>(1, kCores / 2), dw_threads = std::max<int64_t>(1, kCores - dx_threads);
    if (kCores > 1) {
      run_in_parallel(2, [=](int64_t i) {
        if (i == 0) dense_gemm(1, 0, n, k, m, dy, x, nullptr, dw, dw_threads);
        else dense_gemm(0, 0, m, k, n, dy, w, nullptr, dx, dx_threads);
      });
    } else {
      dense_gemm(0, 0, m, k, n, dy, w, nullptr, dx);
      dense_gemm(1, 0, n, k, m, dy, x, nullptr, dw);
    }
  }
  // db: each thread sums all rows over its own slice of the columns
  parallel_for((n + 63) / 64, 64 * m, [=](int64_t begin, int64_t end) {
    const int64_t first = begin * 64, last = std::min(n, end * 64);
    std::fill(db + first, db + last, 0.0f);
    for (int64_t i = 0; i < m; ++i) {
      const float *row = dy + i * n;
#pragma omp simd
      for (int64_t j = first; j < last; ++j) db[j] += row[j];
    }
  });
  return 0;
}
#else
int latte_has_blas() { return 0; }
#endif

// ------------------------------------------------------------------- adaLN modulation by group
// The modulation (shift, scale, gate) has G rows for x's N = G·R: one per sample, x's rows being the
// sample's R frames or token positions (or one per row, G = N). Row i of x uses modulation row i / R,
// so the model never materialises the (N, D) broadcast, nor MindSpore the reduction of its gradient.

// (N, D) per-row sums -> (G, D) sums over each group's R consecutive rows, in row order (the same bits
// whatever the thread count)
static void sum_row_groups(const float *rows, int64_t n, int64_t groups, int64_t d, float *out) {
  const int64_t per_group = n / groups;
  parallel_for(groups, per_group * d, [=](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      float *o = out + g * d;
      std::copy(rows + g * per_group * d, rows + (g * per_group + 1) * d, o);
      for (int64_t i = g * per_group + 1; i < (g + 1) * per_group; ++i) {
        const float *r = rows + i * d;
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) o[c] += r[c];
      }
    }
  });
}

// A (G, D) gradient of the modulation: the kernel writes one sum per row of x into rows (the output
// itself when every group is one row, else scratch), then finish() sums each group's rows into it
struct GroupedGradient {
  GroupedGradient(float *out, int64_t n, int64_t groups, int64_t d)
      : scratch(groups == n ? 0 : n * d), rows(groups == n ? out : scratch.data()), out(out), n(n), groups(groups),
        d(d) {}
  void finish() const {
    if (rows != out) sum_row_groups(rows, n, groups, d, out);
  }
  std::vector<float> scratch;
  float *rows, *out;
  int64_t n, groups, d;
};

// ------------------------------------------------------------------- LayerNorm + adaLN modulation
// y = LN(x)·(1 + scale) + shift, LN without affine parameters.
// x (N, T, D), shift and scale (G, D), eps (1) -> y (N, T, D), stats (N, T, 2) = (mean, 1/std)
int latte_norm_modulate_forward(AOT_ARGS) {
  REQUIRE_F32;
  Timed timed(kNormModulateForward);
  const float *x = CF32(0), *shift = CF32(1), *scale = CF32(2);
  const float eps = CF32(3)[0];
  float *y = F32(4), *stats = F32(5);
  const int64_t n = shapes[0][0], t = shapes[0][1], d = shapes[0][2], groups = shapes[1][0];
  if (groups <= 0 || n % groups) return 1;
  const int64_t per_group = n / groups;
  parallel_for(n, t * d, [=](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float *sh = shift + i / per_group * d, *sc = scale + i / per_group * d;
      for (int64_t j = 0; j < t; ++j) {
        const int64_t row = i * t + j;
        const float *xr = x + row * d;
        float *yr = y + row * d;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t c = 0; c < d; ++c) sum += xr[c];
        const float mean = sum / d;
        float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
        for (int64_t c = 0; c < d; ++c) sq += (xr[c] - mean) * (xr[c] - mean);
        const float rstd = 1.0f / std::sqrt(sq / d + eps);
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) yr[c] = (xr[c] - mean) * rstd * (1.0f + sc[c]) + sh[c];
        stats[2 * row] = mean;
        stats[2 * row + 1] = rstd;
      }
    }
  });
  return 0;
}

// dy, x, scale, stats -> dx (N, T, D), dshift (G, D), dscale (G, D)
int latte_norm_modulate_backward(AOT_ARGS) {
  REQUIRE_F32;
  Timed timed(kNormModulateBackward);
  const float *dy = CF32(0), *x = CF32(1), *scale = CF32(2), *stats = CF32(3);
  float *dx = F32(4), *dshift = F32(5), *dscale = F32(6);
  const int64_t n = shapes[1][0], t = shapes[1][1], d = shapes[1][2], groups = shapes[2][0];
  if (groups <= 0 || n % groups) return 1;
  const int64_t per_group = n / groups;
  const GroupedGradient dshift_grad(dshift, n, groups, d), dscale_grad(dscale, n, groups, d);
  float *dshift_rows = dshift_grad.rows, *dscale_rows = dscale_grad.rows;
  parallel_for(n, t * d, [=](int64_t begin, int64_t end) {
    std::vector<float> g(d), xhat(d);
    for (int64_t i = begin; i < end; ++i) {
      const float *sc = scale + i / per_group * d;
      float *dsh = dshift_rows + i * d, *dsc = dscale_rows + i * d;
      std::fill(dsh, dsh + d, 0.0f);
      std::fill(dsc, dsc + d, 0.0f);
      for (int64_t j = 0; j < t; ++j) {
        const int64_t row = i * t + j;
        const float *xr = x + row * d, *dyr = dy + row * d;
        const float mean = stats[2 * row], rstd = stats[2 * row + 1];
        float sum_g = 0.0f, sum_gx = 0.0f;
#pragma omp simd reduction(+ : sum_g, sum_gx)
        for (int64_t c = 0; c < d; ++c) {
          xhat[c] = (xr[c] - mean) * rstd;
          g[c] = dyr[c] * (1.0f + sc[c]);
          dsh[c] += dyr[c];
          dsc[c] += dyr[c] * xhat[c];
          sum_g += g[c];
          sum_gx += g[c] * xhat[c];
        }
        const float mean_g = sum_g / d, mean_gx = sum_gx / d;
        float *dxr = dx + row * d;
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) dxr[c] = rstd * (g[c] - mean_g - xhat[c] * mean_gx);
      }
    }
  });
  dshift_grad.finish();
  dscale_grad.finish();
  return 0;
}

// -------------------------------------------------------------------------------- gated residual
// out = x + gate·h.   x, h (N, T, D), gate (G, D) -> out (N, T, D)
int latte_gated_residual_forward(AOT_ARGS) {
  REQUIRE_F32;
  Timed timed(kGatedResidualForward);
  const float *x = CF32(0), *gate = CF32(1), *h = CF32(2);
  float *out = F32(3);
  const int64_t n = shapes[0][0], t = shapes[0][1], d = shapes[0][2], groups = shapes[1][0];
  if (groups <= 0 || n % groups) return 1;
  const int64_t per_group = n / groups;
  parallel_for(n, t * d, [=](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float *gr = gate + i / per_group * d;
      for (int64_t j = 0; j < t; ++j) {
        const int64_t offset = (i * t + j) * d;
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) out[offset + c] = x[offset + c] + gr[c] * h[offset + c];
      }
    }
  });
  return 0;
}

// dy, gate, h -> dgate (G, D) = Σ over the group's rows and t of dy·h, dh (N, T, D) = gate·dy
// (dx = dy needs no kernel)
int latte_gated_residual_backward(AOT_ARGS) {
  REQUIRE_F32;
  Timed timed(kGatedResidualBackward);
  const float *dy = CF32(0), *gate = CF32(1), *h = CF32(2);
  float *dgate = F32(3), *dh = F32(4);
  const int64_t n = shapes[2][0], t = shapes[2][1], d = shapes[2][2], groups = shapes[1][0];
  if (groups <= 0 || n % groups) return 1;
  const int64_t per_group = n / groups;
  const GroupedGradient dgate_grad(dgate, n, groups, d);
  float *dgate_rows = dgate_grad.rows;
  parallel_for(n, t * d, [=](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float *gr = gate + i / per_group * d;
      float *dg = dgate_rows + i * d;
      std::fill(dg, dg + d, 0.0f);
      for (int64_t j = 0; j < t; ++j) {
        const int64_t offset = (i * t + j) * d;
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) {
          dg[c] += dy[offset + c] * h[offset + c];
          dh[offset + c] = gr[c] * dy[offset + c];
        }
      }
    }
  });
  dgate_grad.finish();
  return 0;
}

// -------------------------------------------------------------------------------------- tanh-GELU
// GELU with the tanh approximation written as x·sigmoid(2u), u = sqrt(2/π)·(x + 0.044715·x³)
int latte_gelu_tanh_forward(AOT_ARGS) {
  REQUIRE_F32;
  Timed timed(kGeluForward);
  const float *x = CF32(0);
  float *y = F32(1);
  const int64_t size = elements(ndims[0], shapes[0]);
  parallel_for(size, 1, [=](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const float v = x[i];
      y[i] = v * sigmoid(v * (kGeluA + kGeluB * v * v));
    }
  });
  return 0;
}

// dy, x -> dx = dy·(s + x·s·(1 − s)·2u'), s = sigmoid(2u)
int latte_gelu_tanh_backward(AOT_ARGS) {
  REQUIRE_F32;
  Timed timed(kGeluBackward);
  const float *dy = CF32(0), *x = CF32(1);
  float *dx = F32(2);
  const int64_t size = elements(ndims[1], shapes[1]);
  parallel_for(size, 1, [=](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const float v = x[i];
      const float s = sigmoid(v * (kGeluA + kGeluB * v * v));
      dx[i] = dy[i] * (s + v * s * (1.0f - s) * (kGeluA + 3.0f * kGeluB * v * v));
    }
  });
  return 0;
}

// ------------------------------------------------------------------------------------ squared sum
// x_1, ..., x_k (any shapes) -> out (1) = Σ_i Σ x_i², accumulated in double: a model's squared
// gradient norm in one op
int latte_squared_sum(AOT_ARGS) {
  REQUIRE_F32;
  Timed timed(kSquaredSum);
  constexpr int64_t kBlock = 4096;
  struct Block {
    const float *data;
    int64_t size;
  };
  std::vector<Block> blocks;
  for (int t = 0; t < nparam - 1; ++t) {
    const float *x = CF32(t);
    const int64_t size = elements(ndims[t], shapes[t]);
    for (int64_t start = 0; start < size; start += kBlock) blocks.push_back({x + start, std::min(kBlock, size - start)});
  }
  std::vector<double> partial(blocks.size());
  parallel_for(static_cast<int64_t>(blocks.size()), kBlock, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float *x = blocks[b].data;
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < blocks[b].size; ++i) sum += x[i] * x[i];
      partial[b] = sum;
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  F32(nparam - 1)[0] = static_cast<float>(total);
  return 0;
}

// ---------------------------------------------------------------------------------- attention
// Multi-head softmax attention straight from the fused qkv projection, one (sequence, head) pair at a
// time with BLAS calls on strided views of qkv: no (B, H, N, d) transposes and no (B, H, N, N) score
// tensor (one N×N buffer per thread).
//   qkv (B, N, 3C): one sequence per sample, over its N rows (tokens);
//   qkv (B, N, P, 3C): one sequence per (sample, position p), over rows p of the sample's N groups: the
//   temporal blocks' attention across N frames for each of P token positions, read in the spatial
//   blocks' (B·N, P, ·) layout, so that x is never transposed to (B·P, N, ·) and back.
#ifdef LATTE_SGEMM
namespace {

struct Heads {
  int64_t samples, tokens, positions, channels, heads, head_dim;
  float scale;
  Heads(int ndim, const int64_t *qkv_shape, int64_t num_heads)
      : samples(qkv_shape[0]), tokens(qkv_shape[1]), positions(ndim == 4 ? qkv_shape[2] : 1),
        channels(qkv_shape[ndim - 1] / 3), heads(num_heads), head_dim(channels / num_heads),
        scale(1.0f / std::sqrt(static_cast<float>(channels / num_heads))) {}
  int64_t sequences() const { return samples * positions; }
  // distance between a sequence's consecutive rows in qkv, and in the output (C wide)
  int64_t qkv_ld() const { return positions * 3 * channels; }
  int64_t out_ld() const { return positions * channels; }
  // head h of part (0 q, 1 k, 2 v) of sequence s in qkv; in the output (and its gradient)
  int64_t offset(int64_t s, int64_t h, int part) const {
    return (s / positions) * tokens * qkv_ld() + (s % positions) * 3 * channels + part * channels + h * head_dim;
  }
  int64_t out_offset(int64_t s, int64_t h) const {
    return (s / positions) * tokens * out_ld() + (s % positions) * channels + h * head_dim;
  }
};

}  // namespace

// qkv (B, N, 3C) or (B, N, P, 3C), heads (H) -> out (B, N, C) or (B, N, P, C), logsumexp (B, H, N) or
// (B, P, H, N); the heads input only carries H in its shape
int latte_attention_forward(AOT_ARGS) {
  REQUIRE_F32;
  Timed timed(kAttentionForward);
  const float *qkv = CF32(0);
  float *out = F32(2), *lse = F32(3);
  const Heads g(ndims[0], shapes[0], shapes[1][0]);
  const int64_t n = g.tokens, d = g.head_dim, ld = g.qkv_ld();
  BlasSection blas;
  parallel_for(g.sequences() * g.heads, n * n * d, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(n * n);
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t s = pair / g.heads, h = pair % g.heads;
      sgemm(false, true, n, n, d, g.scale, qkv + g.offset(s, h, 0), ld, qkv + g.offset(s, h, 1),
                  ld, 0.0f, scores.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        float *row = scores.data() + i * n;
        float top = row[0];
        for (int64_t j = 1; j < n; ++j) top = std::max(top, row[j]);
        float total = 0.0f;
#pragma omp simd reduction(+ : total)
        for (int64_t j = 0; j < n; ++j) {
          row[j] = fast_exp(row[j] - top);
          total += row[j];
        }
        const float inverse = 1.0f / total;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) row[j] *= inverse;
        lse[pair * n + i] = top + std::log(total);
      }
      sgemm(false, false, n, d, n, 1.0f, scores.data(), n, qkv + g.offset(s, h, 2), ld, 0.0f,
                  out + g.out_offset(s, h), g.out_ld());
    }
  });
  return 0;
}

// dout (as out), qkv, out, logsumexp -> dqkv (as qkv)
int latte_attention_backward(AOT_ARGS) {
  REQUIRE_F32;
  Timed timed(kAttentionBackward);
  const float *dout = CF32(0), *qkv = CF32(1), *out = CF32(2), *lse = CF32(3);
  float *dqkv = F32(4);
  const Heads g(ndims[1], shapes[1], shapes[3][ndims[3] - 2]);
  const int64_t n = g.tokens, d = g.head_dim, ld = g.qkv_ld(), c = g.out_ld();
  BlasSection blas;
  parallel_for(g.sequences() * g.heads, 2 * n * n * d, [&](int64_t begin, int64_t end) {
    std::vector<float> probs(n * n), dscores(n * n);
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t s = pair / g.heads, h = pair % g.heads;
      const float *q = qkv + g.offset(s, h, 0), *k = qkv + g.offset(s, h, 1), *v = qkv + g.offset(s, h, 2);
      const float *dor = dout + g.out_offset(s, h), *orow = out + g.out_offset(s, h);
      sgemm(false, true, n, n, d, g.scale, q, ld, k, ld, 0.0f, probs.data(), n);
      sgemm(false, true, n, n, d, 1.0f, dor, c, v, ld, 0.0f, dscores.data(), n);  // dP
      for (int64_t i = 0; i < n; ++i) {
        float *p = probs.data() + i * n, *ds = dscores.data() + i * n;
        const float row_lse = lse[pair * n + i];
        float delta = 0.0f;
#pragma omp simd reduction(+ : delta)
        for (int64_t e = 0; e < d; ++e) delta += dor[i * c + e] * orow[i * c + e];
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          p[j] = fast_exp(p[j] - row_lse);
          ds[j] = p[j] * (ds[j] - delta) * g.scale;  // dS, with the score scale folded in
        }
      }
      float *dq = dqkv + g.offset(s, h, 0), *dk = dqkv + g.offset(s, h, 1), *dv = dqkv + g.offset(s, h, 2);
      sgemm(false, false, n, d, n, 1.0f, dscores.data(), n, k, ld, 0.0f, dq, ld);
      sgemm(true, false, n, d, n, 1.0f, dscores.data(), n, q, ld, 0.0f, dk, ld);
      sgemm(true, false, n, d, n, 1.0f, probs.data(), n, dor, c, 0.0f, dv, ld);
    }
  });
  return 0;
}

// ----------------------------------------------------------------------------------- convolution
// Inference Conv2d (NCHW, one group, no dilation) as sgemm over blocks of output rows, for the VAE:
// MindSpore's CPU convolutions run oneDNN capped at AVX2 on AVX-512 CPUs (runtime.prefer_avx2_onednn),
// while the sgemm runs the CPU's own kernels. 3×3 stride 1 with at least kWinogradMinChannels inputs
// (nearly all the VAE's multiply-adds): Winograd F(2×2, 3×3), below. 1×1 stride 1 unpadded: the input
// plane already is the (C × pixels) matrix, one product on it. Every other convolution: im2col of a block
// of output rows, one product.
namespace {

// output pixels per block (about: blocks are balanced): one block of the widest layers (128 channels at 256²)
// keeps its operands in L2; 1024-2048 measured within 4 % of one another
constexpr int64_t kConvBlockPixels = 1536;
// fewer input channels than this (a VAE's first convolution: 3 or 4): Winograd's 16 products would have
// K = C; one im2col product with K = 9·C is faster
constexpr int64_t kWinogradMinChannels = 16;

// rows per block: blocks of about kConvBlockPixels pixels, all but the last the same size
int64_t balanced_rows(int64_t height, int64_t width) {
  const int64_t blocks = std::max<int64_t>(1, (height * width + kConvBlockPixels - 1) / kConvBlockPixels);
  return (height + blocks - 1) / blocks;
}

struct ConvGeometry {
  int64_t n, c, h, w, o, kh, kw, stride, top, bottom, left, right, ho, wo;
  ConvGeometry(int64_t **shapes, const float *geometry)
      : n(shapes[0][0]), c(shapes[0][1]), h(shapes[0][2]), w(shapes[0][3]), o(shapes[1][0]), kh(shapes[1][2]),
        kw(shapes[1][3]), stride(static_cast<int64_t>(geometry[0])), top(static_cast<int64_t>(geometry[1])),
        bottom(static_cast<int64_t>(geometry[2])), left(static_cast<int64_t>(geometry[3])),
        right(static_cast<int64_t>(geometry[4])), ho((h + top + bottom - kh) / stride + 1),
        wo((w + left + right - kw) / stride + 1) {}
};

// rows [first, first + count) of the zero-padded input of channel plane `in` (h × w) into out (count ×
// width, at least the padded width; zeros beyond it)
void padded_rows(const float *in, const ConvGeometry &g, int64_t first, int64_t count, float *out, int64_t width) {
  for (int64_t r = 0; r < count; ++r) {
    float *row = out + r * width;
    const int64_t source = first + r - g.top;
    if (source < 0 || source >= g.h) {
      std::fill(row, row + width, 0.0f);
      continue;
    }
    std::fill(row, row + g.left, 0.0f);
    std::memcpy(row + g.left, in + source * g.w, g.w * sizeof(float));
    std::fill(row + g.left + g.w, row + width, 0.0f);
  }
}

// Winograd F(2×2, 3×3) (Lavin and Gray, 2016) for 3×3 stride-1 convolutions: each 2×2 output tile from a
// 4×4 input tile in 16 products instead of 36 multiply-adds per channel pair, i.e. 16 (O × C)·(C × tiles)
// sgemms on transformed weights U = G·w·Gᵀ and inputs V = Bᵀ·d·B, then Y = Aᵀ·M·A: 2.25x fewer
// multiply-adds than the direct convolution, for a few additions per value.
constexpr int64_t kWinogradTiles = 256;  // tiles (4 output pixels each) per block: 64-512 measured within 12 %

void conv_winograd(const float *x, const float *weight, const float *bias, const ConvGeometry &g, float *y) {
  const int64_t tiles_y = (g.ho + 1) / 2, tiles_x = (g.wo + 1) / 2, oc = g.o * g.c;
  std::vector<float> u(16 * oc);  // u[(ξ · O + o) · C + c], ξ = 4·i + j
  parallel_for(g.o, g.c * 64, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o)
      for (int64_t c = 0; c < g.c; ++c) {
        const float *w = weight + (o * g.c + c) * 9;
        float t[4][3];
        for (int j = 0; j < 3; ++j) {
          t[0][j] = w[j];
          t[1][j] = 0.5f * (w[j] + w[3 + j] + w[6 + j]);
          t[2][j] = 0.5f * (w[j] - w[3 + j] + w[6 + j]);
          t[3][j] = w[6 + j];
        }
        for (int i = 0; i < 4; ++i) {
          const float row[4] = {t[i][0], 0.5f * (t[i][0] + t[i][1] + t[i][2]), 0.5f * (t[i][0] - t[i][1] + t[i][2]),
                                t[i][2]};
          for (int j = 0; j < 4; ++j) u[((4 * i + j) * g.o + o) * g.c + c] = row[j];
        }
      }
  });
  const int64_t block_rows = std::max<int64_t>(1, std::min(tiles_y, kWinogradTiles / tiles_x));
  const int64_t blocks = (tiles_y + block_rows - 1) / block_rows;
  const int64_t wide = 2 * tiles_x + 2;  // padded input row: every tile's 4 columns inside it
  parallel_for(g.n * blocks, 16 * oc * block_rows * tiles_x, [&](int64_t begin, int64_t end) {
    const int64_t max_tiles = block_rows * tiles_x, in_rows = 2 * block_rows + 2;
    std::vector<float> input(in_rows * wide), v(16 * g.c * max_tiles), m(16 * g.o * max_tiles), e(4 * wide);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t sample = item / blocks, first = (item % blocks) * block_rows;
      const int64_t rows = std::min(block_rows, tiles_y - first), tiles = rows * tiles_x;
      const float *xs = x + sample * g.c * g.h * g.w;
      for (int64_t c = 0; c < g.c; ++c) {
        padded_rows(xs + c * g.h * g.w, g, 2 * first, 2 * rows + 2, input.data(), wide);
        for (int64_t r = 0; r < rows; ++r) {
          const float *d0 = input.data() + 2 * r * wide, *d1 = d0 + wide, *d2 = d1 + wide, *d3 = d2 + wide;
          float *e0 = e.data(), *e1 = e0 + wide, *e2 = e1 + wide, *e3 = e2 + wide;
#pragma omp simd
          for (int64_t q = 0; q < wide; ++q) {  // Bᵀ·d down the columns
            e0[q] = d0[q] - d2[q];
            e1[q] = d1[q] + d2[q];
            e2[q] = d2[q] - d1[q];
            e3[q] = d1[q] - d3[q];
          }
          const float *es[4] = {e0, e1, e2, e3};
          for (int i = 0; i < 4; ++i) {  // then ·B along the rows
            const float *ei = es[i];
            float *v0 = v.data() + ((4 * i + 0) * g.c + c) * tiles + r * tiles_x, *v1 = v0 + g.c * tiles,
                  *v2 = v1 + g.c * tiles, *v3 = v2 + g.c * tiles;
#pragma omp simd
            for (int64_t t = 0; t < tiles_x; ++t) {
              const float a = ei[2 * t], b = ei[2 * t + 1], cc = ei[2 * t + 2], dd = ei[2 * t + 3];
              v0[t] = a - cc;
              v1[t] = b + cc;
              v2[t] = cc - b;
              v3[t] = b - dd;
            }
          }
        }
      }
      for (int64_t xi = 0; xi < 16; ++xi)
        sgemm(false, false, g.o, tiles, g.c, 1.0f, u.data() + xi * oc, g.c,
                    v.data() + xi * g.c * tiles, tiles, 0.0f, m.data() + xi * g.o * tiles, tiles);
      for (int64_t o = 0; o < g.o; ++o) {
        const float b = bias[o];
        const float *ms[16];
        for (int xi = 0; xi < 16; ++xi) ms[xi] = m.data() + (xi * g.o + o) * tiles;
        float *yo = y + (sample * g.o + o) * g.ho * g.wo;
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t oy = 2 * (first + r);
          float *top = yo + oy * g.wo, *bottom = top + g.wo;
          const bool two_rows = oy + 1 < g.ho;
          for (int64_t t = 0; t < tiles_x; ++t) {
            const int64_t at = r * tiles_x + t;
            float p[4][2];
            for (int i = 0; i < 4; ++i) {  // ·A along the rows
              const float m0 = ms[4 * i][at], m1 = ms[4 * i + 1][at], m2 = ms[4 * i + 2][at], m3 = ms[4 * i + 3][at];
              p[i][0] = m0 + m1 + m2;
              p[i][1] = m1 - m2 - m3;
            }
            const int64_t ox = 2 * t;
            for (int j = 0; j < 2; ++j) {  // then Aᵀ· down the columns
              if (ox + j >= g.wo) break;
              top[ox + j] = p[0][j] + p[1][j] + p[2][j] + b;
              if (two_rows) bottom[ox + j] = p[1][j] - p[2][j] - p[3][j] + b;
            }
          }
        }
      }
    }
  });
}

void conv_im2col(const float *x, const float *weight, const float *bias, const ConvGeometry &g, float *y) {
  const int64_t depth = g.c * g.kh * g.kw;
  const bool pointwise = g.kh == 1 && g.kw == 1 && g.stride == 1 && g.top + g.bottom + g.left + g.right == 0;
  const int64_t rows = balanced_rows(g.ho, g.wo);
  const int64_t blocks = (g.ho + rows - 1) / rows;
  parallel_for(g.n * blocks, g.o * depth * rows * g.wo, [&](int64_t begin, int64_t end) {
    std::vector<float> columns(pointwise ? 0 : depth * rows * g.wo);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t sample = item / blocks, first = (item % blocks) * rows, count = std::min(rows, g.ho - first);
      const int64_t pixels = count * g.wo;
      const float *xs = x + sample * g.c * g.h * g.w;
      if (!pointwise)
        for (int64_t ci = 0; ci < g.c; ++ci)
          for (int64_t i = 0; i < g.kh; ++i)
            for (int64_t j = 0; j < g.kw; ++j) {
              float *column = columns.data() + ((ci * g.kh + i) * g.kw + j) * pixels;
              for (int64_t r = 0; r < count; ++r) {
                const int64_t source = (first + r) * g.stride + i - g.top;
                for (int64_t q = 0; q < g.wo; ++q) {
                  const int64_t at = q * g.stride + j - g.left;
                  column[r * g.wo + q] = (source < 0 || source >= g.h || at < 0 || at >= g.w)
                                             ? 0.0f : xs[(ci * g.h + source) * g.w + at];
                }
              }
            }
      // a 1x1 convolution's columns are the input's own rows (depth = C), read in place
      const float *columns_of_block = pointwise ? xs + first * g.w : columns.data();
      float *ys = y + sample * g.o * g.ho * g.wo + first * g.wo;
      for (int64_t o = 0; o < g.o; ++o) std::fill(ys + o * g.ho * g.wo, ys + o * g.ho * g.wo + pixels, bias[o]);
      sgemm(false, false, g.o, pixels, depth, 1.0f, weight, depth, columns_of_block,
                  pointwise ? g.h * g.w : pixels, 1.0f, ys, g.ho * g.wo);
    }
  });
}

}  // namespace

// x (N, C, H, W), weight (O, C, kh, kw), bias (O), geometry (5) = (stride, pad top, bottom, left, right)
// -> y (N, O, Ho, Wo)
int latte_conv2d_forward(AOT_ARGS) {
  REQUIRE_F32;
  const ConvGeometry g(shapes, CF32(3));
  Timed timed(kConv2dForward, 2 * g.n * g.o * g.ho * g.wo * g.c * g.kh * g.kw);
  BlasSection blas;
  if (g.stride == 1 && g.kh == 3 && g.kw == 3 && g.c >= kWinogradMinChannels)
    conv_winograd(CF32(0), CF32(1), CF32(2), g, F32(4));
  else conv_im2col(CF32(0), CF32(1), CF32(2), g, F32(4));
  return 0;
}
#endif

// ---------------------------------------------------------------------------- GroupNorm (+ SiLU)
namespace {

// x (N, C, H, W), gamma, beta (C), eps (1), groups (G) -> y (N, C, H, W), stats (N, G, 2) = (mean, 1/std);
// the groups input only carries the group count in its shape. With silu, y = v·sigmoid(v) of the
// normalised v.
int group_norm_forward(void **params, int *ndims, int64_t **shapes, bool silu) {
  const float *x = CF32(0), *gamma = CF32(1), *beta = CF32(2);
  const float eps = CF32(3)[0];
  float *y = F32(5), *stats = F32(6);
  const int64_t n = shapes[0][0], c = shapes[0][1], groups = shapes[4][0];
  const int64_t hw = elements(ndims[0], shapes[0]) / (n * c), per_group = c / groups;
  const int64_t group_size = per_group * hw;
  parallel_for(n * groups, group_size, [=](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const float *xg = x + item * group_size;
      double sum = 0.0;
      for (int64_t ch = 0; ch < per_group; ++ch) {
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < hw; ++i) s += xg[ch * hw + i];
        sum += s;
      }
      const float mean = static_cast<float>(sum / group_size);
      double sq = 0.0;
      for (int64_t ch = 0; ch < per_group; ++ch) {
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < hw; ++i) s += (xg[ch * hw + i] - mean) * (xg[ch * hw + i] - mean);
        sq += s;
      }
      const float rstd = static_cast<float>(1.0 / std::sqrt(sq / group_size + eps));
      const int64_t first_channel = (item % groups) * per_group;
      float *yg = y + item * group_size;
      for (int64_t ch = 0; ch < per_group; ++ch) {
        // (x − mean)·a + b rather than x·a + (b − mean·a): the latter cancels badly when 1/std is large
        const float a = rstd * gamma[first_channel + ch], b = beta[first_channel + ch];
        const float *xc = xg + ch * hw;
        float *yc = yg + ch * hw;
        if (silu) {
#pragma omp simd
          for (int64_t i = 0; i < hw; ++i) {
            const float v = (xc[i] - mean) * a + b;
            yc[i] = v * sigmoid(v);
          }
        } else {
#pragma omp simd
          for (int64_t i = 0; i < hw; ++i) yc[i] = (xc[i] - mean) * a + b;
        }
      }
      stats[2 * item] = mean;
      stats[2 * item + 1] = rstd;
    }
  });
  return 0;
}

// dy, x, gamma, beta, stats -> dx (N, C, H, W), dgamma (C), dbeta (C)
int group_norm_backward(void **params, int *ndims, int64_t **shapes, bool silu) {
  const float *dy = CF32(0), *x = CF32(1), *gamma = CF32(2), *beta = CF32(3), *stats = CF32(4);
  float *dx = F32(5), *dgamma = F32(6), *dbeta = F32(7);
  const int64_t n = shapes[1][0], c = shapes[1][1], groups = shapes[4][1];
  const int64_t hw = elements(ndims[1], shapes[1]) / (n * c), per_group = c / groups;
  const int64_t group_size = per_group * hw;
  // per-sample sums of the affine gradients, reduced over samples at the end (threads split samples)
  std::vector<float> dgamma_n(n * c), dbeta_n(n * c);
  parallel_for(n * groups, group_size, [&](int64_t begin, int64_t end) {
    std::vector<float> dv(hw);
    for (int64_t item = begin; item < end; ++item) {
      const float mean = stats[2 * item], rstd = stats[2 * item + 1];
      const int64_t sample = item / groups, first_channel = (item % groups) * per_group;
      const float *xg = x + item * group_size, *dyg = dy + item * group_size;
      double sum_g = 0.0, sum_gx = 0.0;
      for (int64_t ch = 0; ch < per_group; ++ch) {
        const int64_t channel = first_channel + ch;
        const float *xc = xg + ch * hw, *dyc = dyg + ch * hw;
        float dgam = 0.0f, dbet = 0.0f, sg = 0.0f, sgx = 0.0f;
        const float gam = gamma[channel], bet = beta[channel];
#pragma omp simd reduction(+ : dgam, dbet, sg, sgx)
        for (int64_t i = 0; i < hw; ++i) {
          const float xhat = (xc[i] - mean) * rstd;
          float d = dyc[i];
          if (silu) d *= silu_slope(xhat * gam + bet);
          dgam += d * xhat;
          dbet += d;
          sg += d * gam;
          sgx += d * gam * xhat;
        }
        dgamma_n[sample * c + channel] = dgam;
        dbeta_n[sample * c + channel] = dbet;
        sum_g += sg;
        sum_gx += sgx;
      }
      const float mean_g = static_cast<float>(sum_g / group_size), mean_gx = static_cast<float>(sum_gx / group_size);
      float *dxg = dx + item * group_size;
      for (int64_t ch = 0; ch < per_group; ++ch) {
        const int64_t channel = first_channel + ch;
        const float *xc = xg + ch * hw, *dyc = dyg + ch * hw;
        float *dxc = dxg + ch * hw;
        const float gam = gamma[channel], bet = beta[channel];
#pragma omp simd
        for (int64_t i = 0; i < hw; ++i) {
          const float xhat = (xc[i] - mean) * rstd;
          float d = dyc[i];
          if (silu) d *= silu_slope(xhat * gam + bet);
          dxc[i] = rstd * (d * gam - mean_g - xhat * mean_gx);
        }
      }
    }
  });
  for (int64_t ch = 0; ch < c; ++ch) {
    float g = 0.0f, b = 0.0f;
    for (int64_t s = 0; s < n; ++s) {
      g += dgamma_n[s * c + ch];
      b += dbeta_n[s * c + ch];
    }
    dgamma[ch] = g;
    dbeta[ch] = b;
  }
  return 0;
}

}  // namespace

int latte_group_norm_forward(AOT_ARGS) {
  REQUIRE_F32;
  Timed timed(kGroupNormForward);
  return group_norm_forward(params, ndims, shapes, false);
}

int latte_group_norm_silu_forward(AOT_ARGS) {
  REQUIRE_F32;
  Timed timed(kGroupNormForward);
  return group_norm_forward(params, ndims, shapes, true);
}

int latte_group_norm_backward(AOT_ARGS) {
  REQUIRE_F32;
  Timed timed(kGroupNormBackward);
  return group_norm_backward(params, ndims, shapes, false);
}

int latte_group_norm_silu_backward(AOT_ARGS) {
  REQUIRE_F32;
  Timed timed(kGroupNormBackward);
  return group_norm_backward(params, ndims, shapes, true);
}

}  // extern "C"
