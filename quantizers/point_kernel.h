// The element-wise half of every quantizer, in a form one fused CPU kernel can evaluate.
//
// A quantizer works in two steps: Prepare() reduces the input to a few statistics per
// segment (scale, threshold, mean, ...) with ATen ops, producing a PointForm; the kernel
// then maps every element through the scheme's level function using those statistics.
// Splitting it this way lets the QSS mixture sum_i pi_i * Q_i(x) read x once and evaluate
// all K candidates per element (see composite.h), instead of K full passes plus K-1 adds.
//
// Statistics are treated as constants by the gradient (the usual STE practice); the
// per-element derivative dq/dx and the derivative with respect to one learned scalar
// (LSQ step, PACT clip) come from the kernel.
#ifndef QSEARCH_QUANTIZERS_POINT_KERNEL_H_
#define QSEARCH_QUANTIZERS_POINT_KERNEL_H_

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

namespace qsearch::quantizers {

enum class PointKind : std::uint8_t {
  kIdentity,  // q = x
  kAffine,    // table: scale, zero, qmin, qmax, clip_grad, learn (0 none, 1 LSQ, 2 PACT)
  kBinary,    // table: alpha
  kTernary,   // table: delta, alpha
  kResidual,  // table: count, a_0 .. a_7
  kLog,       // table: alpha, k, unused, max_level   (pot and esb: minifloat levels)
  kHalfGrid,  // table: alpha, mean, lo, hi, out_scale, clip_grad
  kDorefa,    // table: max|tanh|, n
};

inline constexpr int kPointTableWidth = 9;

struct PointForm {
  PointKind kind = PointKind::kIdentity;
  // float32 [segments, kPointTableWidth], contiguous; row s applies to elements
  // [s * segment_size, (s + 1) * segment_size) of the flattened input.
  at::Tensor table;
  std::int64_t segment_size = 1;
  // The learned scalar this form differentiates (undefined when none) and the factor
  // its gradient is multiplied by (LSQ's 1/sqrt(N * Qp)).
  at::Tensor learned;
  double learned_grad_scale = 1.0;
};

// The instruction set the kernels below run with: AVX2 where the CPU has it (the QSS
// mixture's several candidates per element are arithmetic-bound), else the x86-64
// baseline. Both give the same values bit for bit. kAten is the same arithmetic in ATen
// ops (point_aten.cc), which read a tensor on any device: tensors not on the CPU (CUDA)
// always take it, whatever is set here.
enum class KernelIsa { kBaseline, kAvx2, kAten };
KernelIsa ActiveKernelIsa();
// Tests and benchmarks: run the kernels with `isa` from now on (the baseline where AVX2
// is asked for and the CPU has none).
void SetKernelIsaForTesting(KernelIsa isa);

// out = sum_i pi[i] * Q_i(x). x float32 contiguous; pi has forms.size() entries.
void MixtureForward(const at::Tensor& x, const std::vector<PointForm>& forms,
                    const std::vector<float>& pi, at::Tensor& out);

struct MixtureGradients {
  at::Tensor x;                      // undefined unless requested
  std::vector<double> pi;            // d loss / d pi_i
  std::vector<double> learned;       // d loss / d learned_i (0 when the form has none)
};

// Gradients of sum(grad * out) for the mixture above, recomputing Q_i(x) on the fly
// (nothing per-candidate is stored between forward and backward). Without need_pi,
// out.pi is all zeros and the levels are not evaluated at all.
MixtureGradients MixtureBackward(const at::Tensor& grad, const at::Tensor& x,
                                 const std::vector<PointForm>& forms,
                                 const std::vector<float>& pi, bool need_x, bool need_pi);

// The two functions above in ATen ops, on x's device; what they dispatch to for kAten.
void MixtureForwardAten(const at::Tensor& x, const std::vector<PointForm>& forms,
                        const std::vector<float>& pi, at::Tensor& out);
MixtureGradients MixtureBackwardAten(const at::Tensor& grad, const at::Tensor& x,
                                     const std::vector<PointForm>& forms,
                                     const std::vector<float>& pi, bool need_x, bool need_pi);

}  // namespace qsearch::quantizers

#endif  // QSEARCH_QUANTIZERS_POINT_KERNEL_H_
