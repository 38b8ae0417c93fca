// Scalar level functions of every scheme and the fused mixture kernels over them.
#include "quantizers/point_kernel.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>

namespace qsearch::quantizers {
namespace {

// Every function the block loops below call is inlined into each instruction-set copy of
// them (see ForwardBlocksAvx2). `flatten` alone is not enough: GCC 12 declined to inline
// Evaluate and FusedAffineBackward into the AVX2 copy ("function not inlinable"), which
// then called their baseline code for most of its work.
#define KERNEL_INLINE [[gnu::always_inline]] inline

constexpr std::int64_t kBlock = 4096;  // elements per work item; fits L1/L2 with buffers
// Blocks per parallel task: below ~64k elements a second thread costs more than it saves.
constexpr std::int64_t kGrainBlocks = 16;

// Round half to even for |v| < 2^22 (all callers clamp to the code range first). The
// magic-number form vectorises with plain SSE2, unlike std::nearbyint.
inline float RoundEven(float v) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  return (v + kMagic) - kMagic;
}
inline float Clamp(float v, float lo, float hi) { return std::min(std::max(v, lo), hi); }

// What an evaluation writes: the levels q (forward, and backward when the mixture weights
// need their gradient), the derivatives dq/dx and dq/d(learned) (backward), or both.
enum Outputs { kLevels = 1, kSlopes = 2, kBoth = 3 };

// Each Run* evaluates one segment run, writing what kOut asks for.
template <int kOut>
KERNEL_INLINE
void RunAffine(const float* p, const float* __restrict x, std::int64_t n, float* __restrict q,
               float* __restrict dx, float* __restrict dl) {
  const float s = p[0], z = p[1], lo = p[2], hi = p[3];
  const bool clip = p[4] != 0;
  const int learn = static_cast<int>(p[5]);
  for (std::int64_t i = 0; i < n; ++i) {
    const float v = x[i] / s + z;
    const float c = RoundEven(Clamp(v, lo, hi));
    if constexpr (kOut & kLevels) q[i] = (c - z) * s;
    if constexpr (kOut & kSlopes) {
      const float inside = static_cast<float>((v >= lo) & (v <= hi));
      dx[i] = clip ? inside : 1.0f;
    }
  }
  // The learned-parameter derivatives get loops of their own so each one vectorises.
  if constexpr (kOut & kSlopes) {
    if (learn == 1) {  // LSQ step: -Qn below, Qp above, round(v) - v inside (z = 0)
      for (std::int64_t i = 0; i < n; ++i) {
        const float v = x[i] / s;
        const float c = RoundEven(Clamp(v, lo, hi));  // lo / hi themselves when clipped
        const float inside = static_cast<float>((v >= lo) & (v <= hi));
        dl[i] = c - v * inside;
      }
    } else if (learn == 2) {  // PACT clip: 1 where the input reaches the clip
      for (std::int64_t i = 0; i < n; ++i) dl[i] = static_cast<float>(x[i] / s >= hi);
    }
  }
}

template <int kOut>
KERNEL_INLINE
void RunBinary(const float* p, const float* __restrict x, std::int64_t n, float* __restrict q,
               float* __restrict dx, float*) {
  const float a = p[0];
  for (std::int64_t i = 0; i < n; ++i) {
    if constexpr (kOut & kLevels) q[i] = x[i] >= 0 ? a : -a;
    if constexpr (kOut & kSlopes) dx[i] = 1.0f;
  }
}

template <int kOut>
KERNEL_INLINE
void RunTernary(const float* p, const float* __restrict x, std::int64_t n, float* __restrict q,
               float* __restrict dx, float*) {
  const float delta = p[0], a = p[1];
  for (std::int64_t i = 0; i < n; ++i) {
    if constexpr (kOut & kLevels) q[i] = x[i] > delta ? a : (x[i] < -delta ? -a : 0.0f);
    if constexpr (kOut & kSlopes) dx[i] = 1.0f;
  }
}

template <int kOut>
KERNEL_INLINE
void RunResidual(const float* p, const float* __restrict x, std::int64_t n, float* __restrict q,
               float* __restrict dx, float*) {
  const int count = static_cast<int>(p[0]);
  for (std::int64_t i = 0; i < n; ++i) {
    float r = x[i], out = 0.0f;
    for (int j = 0; j < count; ++j) {
      const float b = r >= 0 ? p[1 + j] : -p[1 + j];
      out += b;
      r -= b;
    }
    if constexpr (kOut & kLevels) q[i] = out;
    if constexpr (kOut & kSlopes) dx[i] = 1.0f;
  }
}

// Minifloat magnitudes with k fraction bits: {j / 2^k : j < 2^k} below 1, then
// 2^e * (1 + j / 2^k) up to max_level. Below 1 the spacing equals that of [1, 2), so
// one formula serves both: step = 2^(max(floor(log2 m), 0) - k). The exponent comes from
// the float's bits, which keeps the loop branch-free and vectorisable.
inline std::int32_t FloatBits(float f) {
  std::int32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}
inline float BitsFloat(std::int32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

template <int kOut>
KERNEL_INLINE
void RunLog(const float* p, const float* __restrict x, std::int64_t n, float* __restrict q,
            float* __restrict dx, float*) {
  const float a = p[0], max_level = p[3];
  const std::int32_t k = static_cast<std::int32_t>(p[1]);
  for (std::int64_t i = 0; i < n; ++i) {
    const float m = std::min(std::fabs(x[i]) / a, max_level);
    const std::int32_t biased = (FloatBits(std::max(m, 1.0f)) >> 23) & 0xff;  // >= 127
    const float step = BitsFloat((biased - k) << 23);
    const float inv_step = BitsFloat((254 - biased + k) << 23);
    const float v = std::min(RoundEven(m * inv_step) * step, max_level);
    if constexpr (kOut & kLevels) q[i] = std::copysign(v, x[i]) * a + 0.0f;  // + 0 turns -0 into +0
    if constexpr (kOut & kSlopes) dx[i] = 1.0f;
  }
}

template <int kOut>
KERNEL_INLINE
void RunHalfGrid(const float* p, const float* __restrict x, std::int64_t n, float* __restrict q,
               float* __restrict dx, float*) {
  const float a = p[0], mean = p[1], lo = p[2], hi = p[3], out_scale = p[4];
  const bool clip = p[5] != 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const float u = (x[i] - mean) / a - 0.5f;
    const float c = RoundEven(Clamp(u, lo, hi));
    if constexpr (kOut & kLevels) q[i] = ((c + 0.5f) * a + mean) * out_scale;
    if constexpr (kOut & kSlopes) {
      const float inside = static_cast<float>((u >= lo - 0.5f) & (u <= hi + 0.5f));
      dx[i] = clip ? inside : 1.0f;
    }
  }
}

template <int kOut>
KERNEL_INLINE
void RunDorefa(const float* p, const float* __restrict x, std::int64_t n, float* __restrict q,
               float* __restrict dx, float*) {
  const float m = p[0], levels = p[1];
  for (std::int64_t i = 0; i < n; ++i) {
    const float t = std::tanh(x[i]);
    const float v = t / (2.0f * m) + 0.5f;
    const float c = RoundEven(Clamp(v * levels, 0.0f, levels));
    if constexpr (kOut & kLevels) q[i] = 2.0f * c / levels - 1.0f;
    if constexpr (kOut & kSlopes) dx[i] = (1.0f - t * t) / m;  // STE through the rounding only
  }
}

template <int kOut>
KERNEL_INLINE
void RunIdentity(const float*, const float* __restrict x, std::int64_t n, float* __restrict q,
                 float* __restrict dx, float*) {
  for (std::int64_t i = 0; i < n; ++i) {
    if constexpr (kOut & kLevels) q[i] = x[i];
    if constexpr (kOut & kSlopes) dx[i] = 1.0f;
  }
}

// Evaluates form f on x[0, n), whose first element has flat index `begin`.
template <int kOut>
KERNEL_INLINE
void Evaluate(const PointForm& f, const float* table, const float* x, std::int64_t begin,
              std::int64_t n, float* q, float* dx, float* dl) {
  std::int64_t i = 0;
  while (i < n) {
    const std::int64_t idx = begin + i;
    const std::int64_t seg = idx / f.segment_size;
    const std::int64_t run = std::min(n - i, (seg + 1) * f.segment_size - idx);
    const float* p = table + seg * kPointTableWidth;
    float* qi = (kOut & kLevels) ? q + i : nullptr;
    float* dxi = (kOut & kSlopes) ? dx + i : nullptr;
    float* dli = (kOut & kSlopes) ? dl + i : nullptr;
    switch (f.kind) {
      case PointKind::kIdentity: RunIdentity<kOut>(p, x + i, run, qi, dxi, dli); break;
      case PointKind::kAffine: RunAffine<kOut>(p, x + i, run, qi, dxi, dli); break;
      case PointKind::kBinary: RunBinary<kOut>(p, x + i, run, qi, dxi, dli); break;
      case PointKind::kTernary: RunTernary<kOut>(p, x + i, run, qi, dxi, dli); break;
      case PointKind::kResidual: RunResidual<kOut>(p, x + i, run, qi, dxi, dli); break;
      case PointKind::kLog: RunLog<kOut>(p, x + i, run, qi, dxi, dli); break;
      case PointKind::kHalfGrid: RunHalfGrid<kOut>(p, x + i, run, qi, dxi, dli); break;
      case PointKind::kDorefa: RunDorefa<kOut>(p, x + i, run, qi, dxi, dli); break;
    }
    i += run;
  }
}

// sum a[i] * b[i] with eight independent partial sums, so the loop vectorises without
// reassociation flags; blocks are short (kBlock), so float partials are accurate enough.
KERNEL_INLINE
double Dot(const float* __restrict a, const float* __restrict b, std::int64_t n) {
  float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) lanes[j] += a[i + j] * b[i + j];
  }
  double total = 0;
  for (; i < n; ++i) total += static_cast<double>(a[i]) * b[i];
  for (float l : lanes) total += l;
  return total;
}


// The backward of one affine form over a block lying in a single segment, in one pass:
// acc += w * dq/dx, and sum(g * q) and sum(g * dq/d(learned)) summed exactly as Dot sums
// them, so the figures equal Evaluate + Dot's bit for bit at a third of the passes over
// the block. kLearn is the table's learned-parameter kind (0: none, 1: LSQ, 2: PACT);
// kLevels asks for sum(g * q), the mixture weight's gradient. kClip stays a template
// argument: as a run-time flag it stopped GCC vectorising the outer loop (QSS steps ~20%
// slower), hence the explicit dispatch below.
template <int kLearn, bool kLevels, bool kClip>
struct AffineSlope {
  float s, z, lo, hi;
  // For element x: the slope dq/dx, and (as asked) the level q and dq/d(learned).
  KERNEL_INLINE float operator()(float x, float* q, float* dl) const {
    const float v = x / s + z;
    if constexpr (kLevels) *q = (RoundEven(Clamp(v, lo, hi)) - z) * s;
    if constexpr (kLearn == 1) {
      const float u = x / s;
      *dl = RoundEven(Clamp(u, lo, hi)) - u * static_cast<float>((u >= lo) & (u <= hi));
    } else if constexpr (kLearn == 2) {
      *dl = static_cast<float>(x / s >= hi);
    }
    return kClip ? static_cast<float>((v >= lo) & (v <= hi)) : 1.0f;
  }
};

template <int kLearn, bool kLevels, bool kClip>
KERNEL_INLINE
void AffineBackwardBlock(const float* p, const float* __restrict x, const float* __restrict g,
                         std::int64_t n, float w, float* __restrict acc, double* dot_q,
                         double* dot_l) {
  const AffineSlope<kLearn, kLevels, kClip> slope{p[0], p[1], p[2], p[3]};
  float lq[8] = {0, 0, 0, 0, 0, 0, 0, 0}, ll[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) {
      float q = 0, dl = 0;
      acc[i + j] += w * slope(x[i + j], &q, &dl);
      lq[j] += g[i + j] * q;
      ll[j] += g[i + j] * dl;
    }
  }
  double tq = 0, tl = 0;  // the tail in double, then the lanes: Dot's order
  for (; i < n; ++i) {
    float q = 0, dl = 0;
    acc[i] += w * slope(x[i], &q, &dl);
    tq += static_cast<double>(g[i]) * q;
    tl += static_cast<double>(g[i]) * dl;
  }
  for (float l : lq) tq += l;
  for (float l : ll) tl += l;
  *dot_q = kLevels ? tq : 0.0;
  *dot_l = kLearn != 0 ? tl : 0.0;
}

// Dispatches the template above on a form's table; false when the form is not one
// affine segment covering the block (the caller then takes the general path).
KERNEL_INLINE
bool FusedAffineBackward(const PointForm& f, const float* p, const float* x, const float* g,
                         std::int64_t begin, std::int64_t n, float w, bool levels, bool learned,
                         float* acc, double* dot_q, double* dot_l) {
  if (f.kind != PointKind::kAffine || begin / f.segment_size != (begin + n - 1) / f.segment_size) {
    return false;
  }
  p += (begin / f.segment_size) * kPointTableWidth;
  const int learn = learned ? static_cast<int>(p[5]) : 0;
  const bool clip = p[4] != 0;
#define QSEARCH_AFFINE_CASE(L, V, C)                                          \
  if (learn == L && levels == V && clip == C) {                               \
    AffineBackwardBlock<L, V, C>(p, x, g, n, w, acc, dot_q, dot_l);           \
    return true;                                                              \
  }
  QSEARCH_AFFINE_CASE(0, true, true) QSEARCH_AFFINE_CASE(0, true, false)
  QSEARCH_AFFINE_CASE(0, false, true) QSEARCH_AFFINE_CASE(0, false, false)
  QSEARCH_AFFINE_CASE(1, true, true) QSEARCH_AFFINE_CASE(1, false, true)
  QSEARCH_AFFINE_CASE(2, true, true) QSEARCH_AFFINE_CASE(2, false, true)
#undef QSEARCH_AFFINE_CASE
  return false;
}

// The blocks [b0, b1) of MixtureForward: out = sum_i pi[i] * Q_i(x).
KERNEL_INLINE void ForwardBlocksBody(const float* xp, float* op, std::int64_t n,
                                     const std::vector<PointForm>& forms,
                                     const std::vector<const float*>& tables,
                                     const std::vector<float>& pi, std::int64_t b0, std::int64_t b1) {
  std::vector<float> q(kBlock);
  for (std::int64_t b = b0; b < b1; ++b) {
    const std::int64_t begin = b * kBlock;
    const std::int64_t len = std::min(kBlock, n - begin);
    float* o = op + begin;
    if (forms.size() == 1 && pi[0] == 1.0f) {  // one form (a fixed policy): no mixing
      Evaluate<kLevels>(forms[0], tables[0], xp + begin, begin, len, o, nullptr, nullptr);
      continue;
    }
    for (size_t i = 0; i < forms.size(); ++i) {
      Evaluate<kLevels>(forms[i], tables[i], xp + begin, begin, len, q.data(), nullptr, nullptr);
      const float w = pi[i];
      if (i == 0) {
        for (std::int64_t e = 0; e < len; ++e) o[e] = w * q[e];
      } else {
        for (std::int64_t e = 0; e < len; ++e) o[e] += w * q[e];
      }
    }
  }
}

// What MixtureBackward needs to know in every block.
struct BackwardArgs {
  const float* xp;
  const float* gp;
  float* gxp;  // null when dL/dx is not asked for
  std::int64_t n;
  const std::vector<PointForm>* forms;
  const std::vector<const float*>* tables;
  const std::vector<float>* pi;
  bool need_pi;
  double* partial;  // [blocks][2 * forms]: d/d(pi_i), then d/d(learned_i)
};

// The blocks [b0, b1) of MixtureBackward.
KERNEL_INLINE void BackwardBlocksBody(const BackwardArgs& a, std::int64_t b0, std::int64_t b1) {
  const std::vector<PointForm>& forms = *a.forms;
  const std::vector<const float*>& tables = *a.tables;
  const std::vector<float>& pi = *a.pi;
  const size_t k = forms.size();
  std::vector<float> q(kBlock), dx(kBlock), dl(kBlock), acc(kBlock);
  for (std::int64_t b = b0; b < b1; ++b) {
    const std::int64_t begin = b * kBlock;
    const std::int64_t len = std::min(kBlock, a.n - begin);
    const float* g = a.gp + begin;
    double* part = a.partial + b * 2 * k;
    if (k == 1 && !a.need_pi && !forms[0].learned.defined()) {  // a fixed policy's one form
      Evaluate<kSlopes>(forms[0], tables[0], a.xp + begin, begin, len, nullptr, dx.data(), dl.data());
      const float w = pi[0];
      if (a.gxp != nullptr) {
        for (std::int64_t e = 0; e < len; ++e) a.gxp[begin + e] = g[e] * (w * dx[e]);
      }
      continue;
    }
    std::fill(acc.begin(), acc.begin() + len, 0.0f);
    for (size_t i = 0; i < k; ++i) {
      const bool learned = forms[i].learned.defined();
      if (FusedAffineBackward(forms[i], tables[i], a.xp + begin, g, begin, len, pi[i], a.need_pi, learned,
                              acc.data(), &part[i], &part[k + i])) {
        continue;
      }
      // The levels are only needed for d/d(pi).
      if (a.need_pi) {
        Evaluate<kBoth>(forms[i], tables[i], a.xp + begin, begin, len, q.data(), dx.data(), dl.data());
        part[i] = Dot(g, q.data(), len);
      } else {
        Evaluate<kSlopes>(forms[i], tables[i], a.xp + begin, begin, len, nullptr, dx.data(), dl.data());
      }
      part[k + i] = learned ? Dot(g, dl.data(), len) : 0.0;
      const float w = pi[i];
      for (std::int64_t e = 0; e < len; ++e) acc[e] += w * dx[e];
    }
    if (a.gxp != nullptr) {
      for (std::int64_t e = 0; e < len; ++e) a.gxp[begin + e] = g[e] * acc[e];
    }
  }
}

// Each body twice: for the x86-64 baseline (SSE2, 4 floats a vector) and for AVX2 (8).
// `flatten` inlines every kernel above into each copy, so each is compiled for its own
// instruction set and no inline function shared with other files carries AVX2 code.
// Neither copy may contract a * b + c into an FMA (AVX2 alone does not enable FMA), and
// every sum runs in the same lanes and order, so both give the same values bit for bit
// (PointKernelIsaTest); the AVX2 copy only packs twice the elements per instruction.
[[gnu::flatten]] void ForwardBlocksBaseline(const float* xp, float* op, std::int64_t n,
                                            const std::vector<PointForm>& forms,
                                            const std::vector<const float*>& tables,
                                            const std::vector<float>& pi, std::int64_t b0, std::int64_t b1) {
  ForwardBlocksBody(xp, op, n, forms, tables, pi, b0, b1);
}
[[gnu::flatten]] void BackwardBlocksBaseline(const BackwardArgs& a, std::int64_t b0, std::int64_t b1) {
  BackwardBlocksBody(a, b0, b1);
}
#if defined(__x86_64__)
[[gnu::flatten, gnu::target("avx2")]] void ForwardBlocksAvx2(const float* xp, float* op, std::int64_t n,
                                                             const std::vector<PointForm>& forms,
                                                             const std::vector<const float*>& tables,
                                                             const std::vector<float>& pi, std::int64_t b0,
                                                             std::int64_t b1) {
  ForwardBlocksBody(xp, op, n, forms, tables, pi, b0, b1);
}
[[gnu::flatten, gnu::target("avx2")]] void BackwardBlocksAvx2(const BackwardArgs& a, std::int64_t b0,
                                                              std::int64_t b1) {
  BackwardBlocksBody(a, b0, b1);
}
#endif

bool CpuHasAvx2() {
#if defined(__x86_64__)
  __builtin_cpu_init();  // active_isa below is set by a static initializer: no ordering assumed
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

std::atomic<KernelIsa> active_isa{CpuHasAvx2() ? KernelIsa::kAvx2 : KernelIsa::kBaseline};

}  // namespace

KernelIsa ActiveKernelIsa() { return active_isa.load(std::memory_order_relaxed); }

void SetKernelIsaForTesting(KernelIsa isa) {
  active_isa.store(isa == KernelIsa::kAvx2 && !CpuHasAvx2() ? KernelIsa::kBaseline : isa);
}

namespace {
// The fused kernels read float32 on the CPU; anything else (a CUDA tensor, a float64
// job's) takes the ATen forms.
bool Fused(const at::Tensor& x) {
  return x.device().is_cpu() && x.scalar_type() == at::kFloat && ActiveKernelIsa() != KernelIsa::kAten;
}
}  // namespace

void MixtureForward(const at::Tensor& x, const std::vector<PointForm>& forms,
                    const std::vector<float>& pi, at::Tensor& out) {
  if (!Fused(x)) return MixtureForwardAten(x, forms, pi, out);
  const std::int64_t n = x.numel();
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  std::vector<const float*> tables;
  for (const auto& f : forms) tables.push_back(f.table.data_ptr<float>());
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
  const bool avx2 = ActiveKernelIsa() == KernelIsa::kAvx2;
  at::parallel_for(0, blocks, kGrainBlocks, [&](std::int64_t b0, std::int64_t b1) {
#if defined(__x86_64__)
    if (avx2) return ForwardBlocksAvx2(xp, op, n, forms, tables, pi, b0, b1);
#endif
    ForwardBlocksBaseline(xp, op, n, forms, tables, pi, b0, b1);
  });
}

MixtureGradients MixtureBackward(const at::Tensor& grad, const at::Tensor& x,
                                 const std::vector<PointForm>& forms,
                                 const std::vector<float>& pi, bool need_x, bool need_pi) {
  if (!Fused(x)) {
    return MixtureBackwardAten(grad, x, forms, pi, need_x, need_pi);
  }
  const std::int64_t n = x.numel();
  const size_t k = forms.size();
  MixtureGradients out;
  float* gxp = nullptr;
  if (need_x) {
    out.x = at::empty_like(x);
    gxp = out.x.data_ptr<float>();
  }
  std::vector<const float*> tables;
  for (const auto& f : forms) tables.push_back(f.table.data_ptr<float>());
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
  // Per-block partial sums, added in block order so results do not depend on threads.
  std::vector<double> partial(static_cast<size_t>(blocks) * 2 * k, 0.0);
  const BackwardArgs args{x.data_ptr<float>(), grad.data_ptr<float>(), gxp, n, &forms, &tables, &pi,
                          need_pi, partial.data()};
  const bool avx2 = ActiveKernelIsa() == KernelIsa::kAvx2;
  at::parallel_for(0, blocks, kGrainBlocks, [&](std::int64_t b0, std::int64_t b1) {
#if defined(__x86_64__)
    if (avx2) return BackwardBlocksAvx2(args, b0, b1);
#endif
    BackwardBlocksBaseline(args, b0, b1);
  });
  out.pi.assign(k, 0.0);
  out.learned.assign(k, 0.0);
  for (std::int64_t b = 0; b < blocks; ++b) {
    for (size_t i = 0; i < k; ++i) {
      out.pi[i] += partial[b * 2 * k + i];
      out.learned[i] += partial[b * 2 * k + k + i];
    }
  }
  for (size_t i = 0; i < k; ++i) out.learned[i] *= pi[i] * forms[i].learned_grad_scale;
  return out;
}

}  // namespace qsearch::quantizers
