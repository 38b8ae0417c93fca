// Scalar level functions of every scheme and the fused mixture kernels over them.
#include "quantizers/point_kernel.h"

#include <algorithm>
#include <cmath>

#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>

namespace qsearch::quantizers {
namespace {

constexpr std::int64_t kBlock = 4096;  // elements per work item; fits L1/L2 with buffers

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
void RunAffine(const float* p, const float* x, std::int64_t n, float* q, float* dx, float* dl) {
  const float s = p[0], z = p[1], lo = p[2], hi = p[3];
  const bool clip = p[4] != 0;
  const int learn = static_cast<int>(p[5]);
  for (std::int64_t i = 0; i < n; ++i) {
    const float v = x[i] / s + z;
    const float c = RoundEven(Clamp(v, lo, hi));
    q[i] = (c - z) * s;
    if constexpr (kGrad) {
      dx[i] = (!clip || (v >= lo && v <= hi)) ? 1.0f : 0.0f;
      if (learn == 1) {
        dl[i] = v < lo ? lo : (v > hi ? hi : c - v);  // LSQ step gradient
      } else if (learn == 2) {
        dl[i] = v >= hi ? 1.0f : 0.0f;  // PACT clip gradient
      }
    }
  }
}

template <bool kGrad>
void RunBinary(const float* p, const float* x, std::int64_t n, float* q, float* dx, float*) {
  const float a = p[0];
  for (std::int64_t i = 0; i < n; ++i) {
    q[i] = x[i] >= 0 ? a : -a;
    if constexpr (kGrad) dx[i] = 1.0f;
  }
}

template <bool kGrad>
void RunTernary(const float* p, const float* x, std::int64_t n, float* q, float* dx, float*) {
  const float delta = p[0], a = p[1];
  for (std::int64_t i = 0; i < n; ++i) {
    q[i] = x[i] > delta ? a : (x[i] < -delta ? -a : 0.0f);
    if constexpr (kGrad) dx[i] = 1.0f;
  }
}

template <bool kGrad>
void RunResidual(const float* p, const float* x, std::int64_t n, float* q, float* dx, float*) {
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
// 2^e * (1 + j / 2^k) up to max_level.
template <bool kGrad>
void RunLog(const float* p, const float* x, std::int64_t n, float* q, float* dx, float*) {
  const float a = p[0], max_level = p[3];
  const int k = static_cast<int>(p[1]);
  const float sub_step = std::ldexp(1.0f, -k);
  for (std::int64_t i = 0; i < n; ++i) {
    const float m = std::fabs(x[i]) / a;
    float v;
    if (!(m < max_level)) {
      v = std::isnan(m) ? m : max_level;
    } else if (m < 1.0f) {
      v = RoundEven(m / sub_step) * sub_step;
    } else {
      int e = 0;
      std::frexp(m, &e);  // m = f * 2^e, f in [0.5, 1): floor(log2 m) = e - 1
      const float step = std::ldexp(1.0f, e - 1 - k);
      v = std::min(RoundEven(m / step) * step, max_level);
    }
    q[i] = v == 0.0f ? 0.0f : (x[i] < 0 ? -v * a : v * a);
    if constexpr (kGrad) dx[i] = 1.0f;
  }
}

template <bool kGrad>
void RunHalfGrid(const float* p, const float* x, std::int64_t n, float* q, float* dx, float*) {
  const float a = p[0], mean = p[1], lo = p[2], hi = p[3], out_scale = p[4];
  const bool clip = p[5] != 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const float u = (x[i] - mean) / a - 0.5f;
    const float c = RoundEven(Clamp(u, lo, hi));
    q[i] = ((c + 0.5f) * a + mean) * out_scale;
    if constexpr (kGrad) dx[i] = (!clip || (u >= lo - 0.5f && u <= hi + 0.5f)) ? 1.0f : 0.0f;
  }
}

template <bool kGrad>
void RunDorefa(const float* p, const float* x, std::int64_t n, float* q, float* dx, float*) {
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
void RunIdentity(const float*, const float* x, std::int64_t n, float* q, float* dx, float*) {
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

}  // namespace

void MixtureForward(const at::Tensor& x, const std::vector<PointForm>& forms,
                    const std::vector<float>& pi, at::Tensor& out) {
  const std::int64_t n = x.numel();
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  std::vector<const float*> tables;
  for (const auto& f : forms) tables.push_back(f.table.data_ptr<float>());
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
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
  at::parallel_for(0, blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
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
        double gpi = 0, gl = 0;
        for (std::int64_t e = 0; e < len; ++e) gpi += static_cast<double>(g[e]) * q[e];
        if (learned) {
          for (std::int64_t e = 0; e < len; ++e) gl += static_cast<double>(g[e]) * dl[e];
        }
        part[i] = gpi;
        part[k + i] = gl;
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
