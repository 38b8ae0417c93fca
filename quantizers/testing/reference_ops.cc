// ATen reference level functions (see reference_ops.h).
#include "quantizers/testing/reference_ops.h"

#include <ATen/ATen.h>

namespace qsearch::quantizers::testing {
namespace {

// Straight-through rounding: forward round(v), gradient 1.
at::Tensor RoundSte(const at::Tensor& v) { return v + (at::round(v) - v).detach(); }
// Forward value q, gradient identity to x.
at::Tensor Ste(const at::Tensor& q, const at::Tensor& x) { return q.detach() + (x - x.detach()); }

}  // namespace

at::Tensor ReferenceQuantize(const PointForm& form, const at::Tensor& x_in) {
  const std::int64_t seg = form.segment_size;
  const at::Tensor x = x_in.reshape({-1, seg});
  // Column j of the table as a [segments, 1] tensor broadcasting over each segment.
  auto col = [&](int j) { return form.table.select(1, j).unsqueeze(1); };
  auto scalar = [&](int j) { return form.table[0][j].item<float>(); };
  at::Tensor q;
  switch (form.kind) {
    case PointKind::kIdentity:
      q = x;
      break;
    case PointKind::kAffine: {
      const int learn = static_cast<int>(scalar(5));
      at::Tensor s = col(0);
      if (learn == 1) {  // LSQ: gradient scale trick on the step
        at::Tensor step = form.learned.reshape({1, 1});
        const double g = form.learned_grad_scale;
        s = (step - step * g).detach() + step * g;
      } else if (learn == 2) {  // PACT: s = alpha / n
        s = form.learned.reshape({1, 1}) / scalar(3);
      }
      const at::Tensor z = col(1);
      at::Tensor v = x / s + z;
      if (scalar(4) == 0) {  // weights: pure STE, no clipping of the gradient
        at::Tensor c = at::round(at::clamp(v.detach(), scalar(2), scalar(3)));
        q = Ste((c - z) * s, x);
      } else {
        at::Tensor c = RoundSte(at::clamp(v, scalar(2), scalar(3)));
        q = (c - z) * s;
      }
      break;
    }
    case PointKind::kBinary:
      q = Ste(at::where(x.detach() >= 0, col(0), -col(0)), x);
      break;
    case PointKind::kTernary: {
      const at::Tensor d = x.detach();
      q = Ste(at::where(d > col(0), col(1), at::where(d < -col(0), -col(1), at::zeros_like(d))), x);
      break;
    }
    case PointKind::kResidual: {
      at::Tensor r = x.detach();
      at::Tensor out = at::zeros_like(r);
      const int count = static_cast<int>(scalar(0));
      for (int j = 0; j < count; ++j) {
        at::Tensor b = at::where(r >= 0, col(1 + j), -col(1 + j));
        out = out + b;
        r = r - b;
      }
      q = Ste(out, x);
      break;
    }
    case PointKind::kLog: {
      const at::Tensor a = col(0);
      const float k = scalar(1), max_level = scalar(3);
      at::Tensor m = at::clamp_max(x.detach().abs() / a, max_level);
      at::Tensor e = at::floor(at::log2(at::clamp_min(m, 1.0f)));
      at::Tensor step = at::pow(2.0, e - k);
      at::Tensor v = at::clamp_max(at::round(m / step) * step, max_level);
      q = Ste(at::where(x.detach() < 0, -v, v) * a + 0.0, x);
      break;
    }
    case PointKind::kHalfGrid: {
      const at::Tensor a = col(0), mean = col(1);
      at::Tensor u = (x.detach() - mean) / a - 0.5;
      at::Tensor c = at::round(at::clamp(u, scalar(2), scalar(3)));
      q = Ste(((c + 0.5) * a + mean) * col(4), x);
      break;
    }
    case PointKind::kDorefa: {
      const float n = scalar(1);
      at::Tensor t = at::tanh(x);
      at::Tensor v = t / (2 * col(0)) + 0.5;
      q = 2 * RoundSte(at::clamp(v * n, 0, n)) / n - 1;
      break;
    }
  }
  return q.reshape(x_in.sizes());
}

}  // namespace qsearch::quantizers::testing
