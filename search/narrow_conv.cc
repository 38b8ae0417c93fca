// NarrowConv2d: LibTorch's forward, weight and bias gradients; a direct input gradient.
#include "search/narrow_conv.h"

#include <algorithm>
#include <atomic>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

namespace qsearch::search {
namespace {

std::atomic<bool> narrow_enabled{true};
std::atomic<std::int64_t> narrow_calls{0};

std::int64_t FloorDiv(std::int64_t a, std::int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// grad_x[n, ci] = sum over (i, j) of the plane t_ij = sum over co of w[co, ci, i, j] *
// go[n, co], shifted by (i, j): the adjoint of the convolution. t_ij is summed over whole
// output planes in blocks of kBlock elements held in registers; only the shifted add works
// row by row. One (image, input channel) plane per task, each summed in one fixed order,
// so the result does not depend on the thread count.
constexpr std::int64_t kBlock = 16;

template <typename T>
void InputGradient(const at::Tensor& go, const at::Tensor& w, std::int64_t stride, std::int64_t padding,
                   at::Tensor& gx) {
  const std::int64_t n = gx.size(0), cin = gx.size(1), h = gx.size(2), wd = gx.size(3);
  const std::int64_t cout = go.size(1), ho = go.size(2), wo = go.size(3), k = w.size(2), kw = w.size(3);
  const std::int64_t area = ho * wo, padded = (area + kBlock - 1) / kBlock * kBlock;
  const T* g = go.data_ptr<T>();
  const T* wt = w.data_ptr<T>();
  T* out = gx.data_ptr<T>();
  at::parallel_for(0, n * cin, 1, [&](std::int64_t begin, std::int64_t end) {
    std::vector<T> t(padded), src(cout * padded, T(0)), coef(cout);
    std::int64_t loaded = -1;
    for (std::int64_t task = begin; task < end; ++task) {
      const std::int64_t img = task / cin, ci = task % cin;
      if (img != loaded) {  // the image's output planes, each in a zero-padded run of whole blocks
        for (std::int64_t co = 0; co < cout; ++co) {
          std::copy(g + (img * cout + co) * area, g + (img * cout + co + 1) * area, src.data() + co * padded);
        }
        loaded = img;
      }
      T* plane = out + task * h * wd;
      std::fill(plane, plane + h * wd, T(0));
      for (std::int64_t i = 0; i < k; ++i) {
        for (std::int64_t j = 0; j < kw; ++j) {
          // Output column x lands on input column x * stride - padding + j.
          const std::int64_t x_lo = std::max<std::int64_t>(0, -FloorDiv(j - padding, stride));
          const std::int64_t x_hi = std::min<std::int64_t>(wo, FloorDiv(wd - 1 + padding - j, stride) + 1);
          if (x_lo >= x_hi) continue;
          for (std::int64_t co = 0; co < cout; ++co) coef[co] = wt[((co * cin + ci) * k + i) * kw + j];
          for (std::int64_t e0 = 0; e0 < padded; e0 += kBlock) {
            T acc[kBlock] = {};
            for (std::int64_t co = 0; co < cout; ++co) {
              const T c = coef[co];
              const T* s = src.data() + co * padded + e0;
              for (std::int64_t e = 0; e < kBlock; ++e) acc[e] += c * s[e];
            }
            std::copy(acc, acc + kBlock, t.data() + e0);
          }
          for (std::int64_t y = 0; y < ho; ++y) {
            const std::int64_t row = y * stride - padding + i;
            if (row < 0 || row >= h) continue;
            const T* tp = t.data() + y * wo;
            const std::int64_t base = row * wd - padding + j;  // + x * stride is in the row
            if (stride == 1) {
              T* dst = plane + base + x_lo;
              for (std::int64_t x = 0; x < x_hi - x_lo; ++x) dst[x] += tp[x_lo + x];
            } else {
              for (std::int64_t x = x_lo; x < x_hi; ++x) plane[base + x * stride] += tp[x];
            }
          }
        }
      }
    }
  });
}

// At stride 1 the adjoint is itself a convolution: of the output gradient with the kernel
// flipped in both axes and its channel axes swapped, padded by k - 1 - padding (a
// negative amount crops). That runs as LibTorch's forward convolution, which for a
// one-channel result is several times faster than its input-gradient path and than
// InputGradient above. Each result element is one thread's sum, so it too does not depend
// on the thread count (checked in narrow_conv_test).
at::Tensor FlippedConvolution(const at::Tensor& go, const at::Tensor& w, std::int64_t padding) {
  const std::int64_t ph = w.size(2) - 1 - padding, pw = w.size(3) - 1 - padding;
  at::Tensor g = go;
  if (ph < 0) g = g.slice(2, -ph, g.size(2) + ph);
  if (pw < 0) g = g.slice(3, -pw, g.size(3) + pw);
  const at::Tensor flipped = w.flip({2, 3}).transpose(0, 1).contiguous();
  return at::conv2d(g.contiguous(), flipped, {}, 1, {std::max<std::int64_t>(ph, 0), std::max<std::int64_t>(pw, 0)});
}

class NarrowConvFunction : public torch::autograd::Function<NarrowConvFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& bias, std::int64_t stride, std::int64_t padding) {
    ctx->save_for_backward({x, w});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    const bool has_bias = bias.numel() > 0;  // an empty tensor stands for none
    ctx->saved_data["bias"] = has_bias;
    return at::conv2d(x, w, has_bias ? bias : at::Tensor(), stride, padding);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& w = saved[1];
    const std::int64_t stride = ctx->saved_data["stride"].toInt();
    const std::int64_t padding = ctx->saved_data["padding"].toInt();
    const bool has_bias = ctx->saved_data["bias"].toBool();
    const at::Tensor go = grads[0].contiguous();
    const bool need_w = ctx->needs_input_grad(1), need_b = has_bias && ctx->needs_input_grad(2);
    at::Tensor gw, gb;
    if (need_w || need_b) {
      const std::vector<std::int64_t> bias_sizes = {w.size(0)};
      auto r = at::convolution_backward(go, x, w, has_bias ? at::OptionalIntArrayRef(bias_sizes) : c10::nullopt,
                                        {stride, stride}, {padding, padding}, {1, 1}, false, {0, 0}, 1,
                                        {false, need_w, need_b});
      gw = std::get<1>(r);
      gb = std::get<2>(r);
    }
    at::Tensor gx;
    if (ctx->needs_input_grad(0) && stride == 1) {
      gx = FlippedConvolution(go, w, padding);
    } else if (ctx->needs_input_grad(0)) {
      gx = at::empty(x.sizes(), x.options());
      const at::Tensor wc = w.contiguous();
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "narrow_conv_input_gradient",
                                 [&] { InputGradient<scalar_t>(go, wc, stride, padding, gx); });
    }
    return {gx, gw, gb, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

void EnableNarrowConv(bool on) { narrow_enabled = on; }

std::int64_t NarrowConvCalls() { return narrow_calls; }

bool UseNarrowConv(const at::Tensor& x, std::int64_t groups) {
  return narrow_enabled && groups == 1 && x.dim() == 4 && x.size(1) <= kNarrowInputChannels && x.device().is_cpu() &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) && x.requires_grad() &&
         at::GradMode::is_enabled();
}

at::Tensor NarrowConv2d(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, std::int64_t stride,
                        std::int64_t padding) {
  ++narrow_calls;
  // Function::apply takes defined tensors only: no bias goes in as an empty one.
  return NarrowConvFunction::apply(x.contiguous(), w, bias.defined() ? bias : at::empty({0}, w.options()), stride,
                                   padding);
}

at::Tensor LayerConv2d(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, std::int64_t groups) {
  const bool square = stride.size() == 2 && stride[0] == stride[1] && padding.size() == 2 &&
                      padding[0] == padding[1] && dilation.size() == 2 && dilation[0] == 1 && dilation[1] == 1;
  if (square && w.dim() == 4 && UseNarrowConv(x, groups)) return NarrowConv2d(x, w, bias, stride[0], padding[0]);
  return at::conv2d(x, w, bias, stride, padding, dilation, groups);
}

}  // namespace qsearch::search
