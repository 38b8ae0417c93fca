// The mixture kernels of point_kernel.h in ATen ops: the path for tensors the fused CPU
// kernels cannot read (a CUDA tensor). Unlike testing/reference_ops.h (autograd through
// straight-through tricks, an independent check), it produces what the kernels produce
// (levels, dq/dx, dq/d(learned)) and sits behind MixtureForward / MixtureBackward. Each
// level function follows its scalar twin in point_kernel.cc operation for operation
// (round half to even, no fused multiply-add), so on the CPU both give the same levels.
#include <ATen/ATen.h>

#include "quantizers/point_kernel.h"

namespace qsearch::quantizers {
namespace {

// A form's per-segment table column j, shaped to broadcast over x viewed as
// [segments, segment_size].
struct FormView {
  at::Tensor x;      // [segments, segment_size]
  at::Tensor table;  // [segments, kPointTableWidth] on x's device
  at::Tensor col(int j) const { return table.select(1, j).unsqueeze(1); }
};

FormView View(const PointForm& f, const at::Tensor& x) {
  const std::int64_t segments = f.table.size(0);
  TORCH_CHECK(segments * f.segment_size == x.numel(), "a point form's segments do not cover its input");
  return {x.reshape({segments, f.segment_size}), f.table.to(x.device())};
}

// Column j of segment 0 (a flag or count Prepare sets alike in every segment), read from
// the table itself, which stays on the CPU.
float Scalar(const PointForm& f, int j) { return f.table.data_ptr<float>()[j]; }

at::Tensor Inside(const at::Tensor& v, const at::Tensor& lo, const at::Tensor& hi) {
  return at::logical_and(v >= lo, v <= hi).to(at::kFloat);
}

struct Evaluated {
  // Levels (when asked for); dq/dx and dq/d(learned) (when slopes are asked for; dl
  // stays undefined for a form without a learned parameter).
  at::Tensor q, dx, dl;
};

// ATen ops are eager: each output is computed only when asked for (the forward pass
// needs levels alone, the backward pass levels only for the mixture weights' gradient).
Evaluated Evaluate(const PointForm& f, const at::Tensor& flat, bool levels, bool slopes) {
  const FormView v = View(f, flat);
  const at::Tensor& x = v.x;
  Evaluated e;
  if (slopes) e.dx = at::ones_like(x);  // the straight-through slope of most forms
  switch (f.kind) {
    case PointKind::kIdentity:
      if (levels) e.q = x;
      break;
    case PointKind::kAffine: {
      const at::Tensor s = v.col(0), z = v.col(1), lo = v.col(2), hi = v.col(3);
      const at::Tensor u = x / s + z;
      const int learn = static_cast<int>(Scalar(f, 5));
      const bool need_code = levels || (slopes && learn == 1);
      const at::Tensor code = need_code ? at::round(at::clamp(u, lo, hi)) : at::Tensor();
      if (levels) e.q = (code - z) * s;
      if (!slopes) break;
      const bool clip = Scalar(f, 4) != 0;
      const at::Tensor inside = clip || learn == 1 ? Inside(u, lo, hi) : at::Tensor();
      if (clip) e.dx = inside;
      // Both learned forms have z = 0, so u is x / s.
      if (learn == 1) {  // LSQ step
        e.dl = code - u * inside;
      } else if (learn == 2) {  // PACT clip
        e.dl = (u >= hi).to(at::kFloat);
      }
      break;
    }
    case PointKind::kBinary:
      if (levels) e.q = at::where(x >= 0, v.col(0), -v.col(0));
      break;
    case PointKind::kTernary: {
      const at::Tensor delta = v.col(0), a = v.col(1);
      if (levels) e.q = at::where(x > delta, a, at::where(x < -delta, -a, at::zeros_like(a)));
      break;
    }
    case PointKind::kResidual: {
      if (!levels) break;
      at::Tensor r = x, out = at::zeros_like(x);
      const int count = static_cast<int>(f.table.select(1, 0).max().item<float>());
      for (int j = 0; j < count; ++j) {
        // Segments with fewer binarisations than the most add nothing past their own.
        const at::Tensor a = v.col(1 + j) * (v.col(0) > j).to(at::kFloat);
        const at::Tensor b = at::where(r >= 0, a, -a);
        out = out + b;
        r = r - b;
      }
      e.q = out;
      break;
    }
    case PointKind::kLog: {
      if (!levels) break;
      const at::Tensor a = v.col(0), k = v.col(1), max_level = v.col(3);
      const at::Tensor m = at::minimum(x.abs() / a, max_level);
      // floor(log2(max(m, 1))) from the float's exponent, as the kernel reads it.
      const at::Tensor exponent = std::get<1>(at::frexp(at::clamp_min(m, 1.0f))).to(at::kFloat) - 1;
      const at::Tensor step = at::pow(2.0f, exponent - k), inv_step = at::pow(2.0f, k - exponent);
      const at::Tensor level = at::minimum(at::round(m * inv_step) * step, max_level);
      e.q = at::copysign(level, x) * a + 0.0f;
      break;
    }
    case PointKind::kHalfGrid: {
      const at::Tensor a = v.col(0), mean = v.col(1), lo = v.col(2), hi = v.col(3), out_scale = v.col(4);
      const at::Tensor u = (x - mean) / a - 0.5f;
      if (levels) e.q = ((at::round(at::clamp(u, lo, hi)) + 0.5f) * a + mean) * out_scale;
      if (slopes && Scalar(f, 5) != 0) e.dx = Inside(u, lo - 0.5f, hi + 0.5f);
      break;
    }
    case PointKind::kDorefa: {
      const at::Tensor m = v.col(0), n = v.col(1);
      const at::Tensor t = at::tanh(x);
      if (levels) e.q = 2.0f * at::round(at::clamp((t / (2.0f * m) + 0.5f) * n, at::zeros_like(n), n)) / n - 1.0f;
      if (slopes) e.dx = (1.0f - t * t) / m;  // straight through the rounding only
      break;
    }
  }
  return e;
}

}  // namespace

void MixtureForwardAten(const at::Tensor& x, const std::vector<PointForm>& forms, const std::vector<float>& pi,
                        at::Tensor& out) {
  const at::Tensor flat = x.reshape({-1});
  auto levels = [&](size_t i) { return Evaluate(forms[i], flat, /*levels=*/true, /*slopes=*/false).q.reshape({-1}); };
  if (forms.size() == 1 && pi[0] == 1.0f) {  // one form (a fixed policy): no mixing
    out.copy_(levels(0).view_as(out));
    return;
  }
  at::Tensor sum = pi[0] * levels(0);
  for (size_t i = 1; i < forms.size(); ++i) sum = sum + pi[i] * levels(i);
  out.copy_(sum.view_as(out));
}

MixtureGradients MixtureBackwardAten(const at::Tensor& grad, const at::Tensor& x, const std::vector<PointForm>& forms,
                                     const std::vector<float>& pi, bool need_x, bool need_pi) {
  const at::Tensor flat = x.reshape({-1});
  const at::Tensor g = grad.reshape({-1});
  const at::Tensor g64 = g.to(at::kDouble);  // sums of g * q and g * dl, in double
  const size_t k = forms.size();
  MixtureGradients out;
  out.pi.assign(k, 0.0);
  out.learned.assign(k, 0.0);
  at::Tensor acc = at::zeros_like(flat);
  for (size_t i = 0; i < k; ++i) {
    const Evaluated e = Evaluate(forms[i], flat, /*levels=*/need_pi, /*slopes=*/true);
    acc = acc + pi[i] * e.dx.reshape({-1});
    if (need_pi) out.pi[i] = at::dot(g64, e.q.reshape({-1}).to(at::kDouble)).item<double>();
    if (forms[i].learned.defined() && e.dl.defined()) {
      out.learned[i] = at::dot(g64, e.dl.reshape({-1}).to(at::kDouble)).item<double>() * pi[i] *
                       forms[i].learned_grad_scale;
    }
  }
  if (need_x) out.x = (g * acc).view_as(x);
  return out;
}

}  // namespace qsearch::quantizers
