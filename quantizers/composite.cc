// The autograd function behind MixForms and the checked CompositeQuantize.
#include "quantizers/composite.h"

#include <torch/autograd.h>
#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quantizers/row_stats.h"
#include "quantizers/torch_status.h"

namespace qsearch::quantizers {
namespace {

struct MixturePlan : torch::CustomClassHolder {
  std::vector<PointForm> forms;
  std::vector<float> pi;
  at::TensorOptions pi_options;  // its gradient goes back as pi is: device and dtype
  std::vector<int> learned_form;  // form index of each learned tensor, in argument order
};

class MixtureFunction : public torch::autograd::Function<MixtureFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& pi, at::TensorList learned,
                            c10::intrusive_ptr<MixturePlan> plan) {
    at::Tensor out = at::empty_like(x);
    MixtureForward(x, plan->forms, plan->pi, out);
    ctx->save_for_backward({x});
    ctx->saved_data["plan"] = c10::IValue::make_capsule(std::move(plan));
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor x = ctx->get_saved_variables()[0];
    auto plan = c10::static_intrusive_pointer_cast<MixturePlan>(
        ctx->saved_data["plan"].toCapsule());
    const bool need_x = ctx->needs_input_grad(0);
    const bool need_pi = ctx->needs_input_grad(1);
    MixtureGradients g =
        MixtureBackward(grads[0].contiguous(), x, plan->forms, plan->pi, need_x, need_pi);
    torch::autograd::variable_list out;
    out.push_back(need_x ? g.x : at::Tensor());
    out.push_back(need_pi ? at::tensor(g.pi, at::kDouble).to(plan->pi_options) : at::Tensor());
    for (int form : plan->learned_form) {
      const at::Tensor& p = plan->forms[form].learned;
      out.push_back(at::full_like(p, g.learned[form]));
    }
    out.push_back(at::Tensor());  // plan
    return out;
  }
};

}  // namespace

at::Tensor MixForms(const at::Tensor& x, std::vector<PointForm> forms, const at::Tensor& pi) {
  auto plan = c10::make_intrusive<MixturePlan>();
  const at::Tensor pi_values = pi.detach().to(at::kCPU, at::kFloat).contiguous();
  plan->pi.assign(pi_values.data_ptr<float>(), pi_values.data_ptr<float>() + pi_values.numel());
  plan->pi_options = pi.options();
  std::vector<at::Tensor> learned;
  for (size_t i = 0; i < forms.size(); ++i) {
    forms[i].table = forms[i].table.contiguous();
    if (forms[i].learned.defined()) {
      plan->learned_form.push_back(static_cast<int>(i));
      learned.push_back(forms[i].learned);
    }
  }
  plan->forms = std::move(forms);
  return MixtureFunction::apply(x.contiguous(), pi, at::TensorList(learned), std::move(plan));
}

absl::StatusOr<at::Tensor> CompositeQuantize(
    const at::Tensor& x, const std::vector<std::shared_ptr<Quantizer>>& candidates,
    const at::Tensor& pi) {
  if (candidates.empty()) {
    return absl::InvalidArgumentError("composite quantization needs at least one candidate");
  }
  if (!pi.defined() || pi.dim() != 1 || pi.size(0) != static_cast<int64_t>(candidates.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "mixture weights must be a 1-D tensor with one entry per candidate (",
        candidates.size(), " candidates)"));
  }
  if (!at::isfinite(pi.detach()).all().item<bool>()) {
    return absl::InvalidArgumentError("mixture weights contain NaN or Inf");
  }
  RETURN_IF_ERROR(CheckFinite(x, "composite quantization"));
  std::vector<PointForm> forms;
  for (const auto& q : candidates) {
    RETURN_IF_ERROR(q->ValidateShape(x));
    if (q->bits() != std::floor(q->bits())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "composite candidates need integer bits; '", q->ToSpec(),
          "' is fractional (use FracBits outside the scheme mixture)"));
    }
  }
  return CatchTorch("composite quantization", [&]() -> at::Tensor {
    RowStatsScope shared_stats;
    for (const auto& q : candidates) forms.push_back(q->Prepare(x));
    return MixForms(x, std::move(forms), pi);
  });
}

}  // namespace qsearch::quantizers
