// Scalar level functions of every scheme and the fused mixture kernels over them.
#include "quantizers/point_kernel.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>

namespace qsearch::quantizers {
namespace {

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

// Each Run* evaluates one segment run: q always, and when kGrad also dq/dx and
// dq/d(learned).
template <bool kGrad>
void RunAffine(const float* p, const float* __restrict x, std::int64_t n, float* __restrict q,
               float* __restrict dx, float* __restrict dl) {
  const float s = p[0], z = p[1], lo = p[2], hi = p[3];
  const bool clip = p[4] != 0;
  const int learn = static_cast<int>(p[5]);
  for (std::int64_t i = 0; i < n; ++i) {
    const float v = x[i] / s + z;
    const float c = RoundEven(Clamp(v, lo, hi));
    q[i] = (c - z) * s;
    if constexpr (kGrad) {
      const float inside = static_cast<float>((v >= lo) & (v <= hi));
      dx[i] = clip ? inside : 1.0f;
    }
  }
  // The learned-parameter derivatives get loops of their own so each one vectorises.
  if constexpr (kGrad) {
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

template <bool kGrad>
void RunBinary(const float* p, const float* __restrict x, std::int64_t n, float* __restrict q,
               float* __restrict dx, float*) {
  const float a = p[0];
  for (std::int64_t i = 0; i < n; ++i) {
    q[i] = x[i] >= 0 ? a : -a;
    if constexpr (kGrad) dx[i] = 1.0f;
  }
}

template <bool kGrad>
void RunTernary(const float* p, const float* __restrict x, std::int64_t n, float* __restrict q,
               float* __restrict dx, float*) {
  const float delta = p[0], a = p[1];
  for (std::int64_t i = 0; i < n; ++i) {
    q[i] = x[i] > delta ? a : (x[i] < -delta ? -a : 0.0f);
    if constexpr (kGrad) dx[i] = 1.0f;
  }
}

template <bool kGrad>
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
    q[i] = out;
    if constexpr (kGrad) dx[i] = 1.0f;
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

template <bool kGrad>
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
    q[i] = std::copysign(v, x[i]) * a + 0.0f;  // + 0 turns -0 into +0
    if constexpr (kGrad) dx[i] = 1.0f;
  }
}

template <bool kGrad>
void RunHalfGrid(const float* p, const float* __restrict x, std::int64_t n, float* __restrict q,
               float* __restrict dx, float*) {
  const float a = p[0], mean = p[1], lo = p[2], hi = p[3], out_scale = p[4];
  const bool clip = p[5] != 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const float u = (x[i] - mean) / a - 0.5f;
    const float c = RoundEven(Clamp(u, lo, hi));
    q[i] = ((c + 0.5f) * a + mean) * out_scale;
    if constexpr (kGrad) {
      const float inside = static_cast<float>((u >= lo - 0.5f) & (u <= hi + 0.5f));
      dx[i] = clip ? inside : 1.0f;
    }
  }
}

template <bool kGrad>
void RunDorefa(const float* p, const float* __restrict x, std::int64_t n, float* __restrict q,
               float* __restrict dx, float*) {
  const float m = p[0], levels = p[1];
  for (std::int64_t i = 0; i < n; ++i) {
    const float t = std::tanh(x[i]);
    const float v = t / (2.0f * m) + 0.5f;
    const float c = RoundEven(Clamp(v * levels, 0.0f, levels));
    q[i] = 2.0f * c / levels - 1.0f;
    if constexpr (kGrad) dx[i] = (1.0f - t * t) / m;  // STE through the rounding only
  }
}

template <bool kGrad>
void RunIdentity(const float*, const float* __restrict x, std::int64_t n, float* __restrict q,
                 float* __restrict dx, float*) {
  for (std::int64_t i = 0; i < n; ++i) {
    q[i] = x[i];
    if constexpr (kGrad) dx[i] = 1.0f;
  }
}

// Evaluates form f on x[0, n), whose first element has flat index `begin`.
template <bool kGrad>
void Evaluate(const PointForm& f, const float* table, const float* x, std::int64_t begin,
              std::int64_t n, float* q, float* dx, float* dl) {
  std::int64_t i = 0;
  while (i < n) {
    const std::int64_t idx = begin + i;
    const std::int64_t seg = idx / f.segment_size;
    const std::int64_t run = std::min(n - i, (seg + 1) * f.segment_size - idx);
    const float* p = table + seg * kPointTableWidth;
    float* dxi = kGrad ? dx + i : nullptr;
    float* dli = kGrad ? dl + i : nullptr;
    switch (f.kind) {
      case PointKind::kIdentity: RunIdentity<kGrad>(p, x + i, run, q + i, dxi, dli); break;
      case PointKind::kAffine: RunAffine<kGrad>(p, x + i, run, q + i, dxi, dli); break;
      case PointKind::kBinary: RunBinary<kGrad>(p, x + i, run, q + i, dxi, dli); break;
      case PointKind::kTernary: RunTernary<kGrad>(p, x + i, run, q + i, dxi, dli); break;
      case PointKind::kResidual: RunResidual<kGrad>(p, x + i, run, q + i, dxi, dli); break;
      case PointKind::kLog: RunLog<kGrad>(p, x + i, run, q + i, dxi, dli); break;
      case PointKind::kHalfGrid: RunHalfGrid<kGrad>(p, x + i, run, q + i, dxi, dli); break;
      case PointKind::kDorefa: RunDorefa<kGrad>(p, x + i, run, q + i, dxi, dli); break;
    }
    i += run;
  }
}

// sum a[i] * b[i] with eight independent partial sums, so the loop vectorises without
// reassociation flags; blocks are short (kBlock), so float partials are accurate enough.
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

}  // namespace

void MixtureForward(const at::Tensor& x, const std::vector<PointForm>& forms,
                    const std::vector<float>& pi, at::Tensor& out) {
  const std::int64_t n = x.numel();
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  std::vector<const float*> tables;
  for (const auto& f : forms) tables.push_back(f.table.data_ptr<float>());
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, kGrainBlocks, [&](std::int64_t b0, std::int64_t b1) {
    std::vector<float> q(kBlock);
    for (std::int64_t b = b0; b < b1; ++b) {
      const std::int64_t begin = b * kBlock;
      const std::int64_t len = std::min(kBlock, n - begin);
      float* o = op + begin;
      for (size_t i = 0; i < forms.size(); ++i) {
        Evaluate<false>(forms[i], tables[i], xp + begin, begin, len, q.data(), nullptr, nullptr);
        const float w = pi[i];
        if (i == 0) {
          for (std::int64_t e = 0; e < len; ++e) o[e] = w * q[e];
        } else {
          for (std::int64_t e = 0; e < len; ++e) o[e] += w * q[e];
        }
      }
    }
  });
}

MixtureGradients MixtureBackward(const at::Tensor& grad, const at::Tensor& x,
                                 const std::vector<PointForm>& forms,
                                 const std::vector<float>& pi, bool need_x) {
  const std::int64_t n = x.numel();
  const size_t k = forms.size();
  const float* xp = x.data_ptr<float>();
  const float* gp = grad.data_ptr<float>();
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
  at::parallel_for(0, blocks, kGrainBlocks, [&](std::int64_t b0, std::int64_t b1) {
    std::vector<float> q(kBlock), dx(kBlock), dl(kBlock), acc(kBlock);
    for (std::int64_t b = b0; b < b1; ++b) {
      const std::int64_t begin = b * kBlock;
      const std::int64_t len = std::min(kBlock, n - begin);
      const float* g = gp + begin;
      double* part = partial.data() + b * 2 * k;
      std::fill(acc.begin(), acc.begin() + len, 0.0f);
      for (size_t i = 0; i < k; ++i) {
        const bool learned = forms[i].learned.defined();
        Evaluate<true>(forms[i], tables[i], xp + begin, begin, len, q.data(), dx.data(),
                       dl.data());
        part[i] = Dot(g, q.data(), len);
        part[k + i] = learned ? Dot(g, dl.data(), len) : 0.0;
        const float w = pi[i];
        for (std::int64_t e = 0; e < len; ++e) acc[e] += w * dx[e];
      }
      if (gxp != nullptr) {
        for (std::int64_t e = 0; e < len; ++e) gxp[begin + e] = g[e] * acc[e];
      }
    }
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
