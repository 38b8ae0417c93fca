// A convolution over a one-channel input (a grey-image network's first layer) whose input
// gradient is cheap.
//
// The first layer's input needs a gradient whenever its activation quantizer learns
// something (QSS mixture weights, PACT's clip, LSQ's step), and LibTorch's CPU path
// computes that gradient for one input channel at about ten times the cost of the forward
// convolution (lenet5's first layer at batch 128: 4-8 ms against 0.6 ms). NarrowConv2d
// leaves the weight and bias gradients to LibTorch and computes the input gradient
// itself: at stride 1 as a forward convolution with the flipped kernel, at other strides
// directly, one image per task; either way the same sums whatever the thread count.
// With 3 input channels (RGB) LibTorch's path was faster than the direct kernel (11 ms
// against 16 ms, 3 -> 16 channels at 32x32) and as fast as the flipped convolution, so
// wider inputs stay on it.
#ifndef QSEARCH_SEARCH_NARROW_CONV_H_
#define QSEARCH_SEARCH_NARROW_CONV_H_

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace qsearch::search {

// Input channels up to which UseNarrowConv says yes (NarrowConv2d itself takes any).
inline constexpr std::int64_t kNarrowInputChannels = 1;

// True when conv2d(x, w, ...) with these settings should go through NarrowConv2d: a CPU
// float or double input with at most kNarrowInputChannels channels that needs a gradient,
// one group.
bool UseNarrowConv(const at::Tensor& x, std::int64_t groups);

// On by default; off sends every convolution through LibTorch, for side-by-side
// measurements (search_step_bench).
void EnableNarrowConv(bool on);

// Calls of NarrowConv2d in this process so far (tests check which path a model takes).
std::int64_t NarrowConvCalls();

// conv2d(x, w, bias, stride, padding), dilation 1, one group; `bias` may be undefined.
at::Tensor NarrowConv2d(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, std::int64_t stride,
                        std::int64_t padding);

// A quantized layer's convolution (zoo layers and TorchScript sites alike): NarrowConv2d
// where UseNarrowConv says so and stride and padding are the same in both directions with
// dilation 1, LibTorch's conv2d otherwise. `bias` may be undefined.
at::Tensor LayerConv2d(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, std::int64_t groups);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_NARROW_CONV_H_
