// The current policy of a job.
#include "search/policy.h"

#include "absl/strings/str_cat.h"
#include "quantizers/spec.h"
#include "search/cost.h"

namespace qsearch::search {

v1::Policy CurrentPolicy(const JobContext& job) { return PolicyOf(job, job.layers, job.sensitivity); }

v1::Policy PolicyOf(const JobContext& job, const std::vector<NamedLayer>& layers, const std::vector<double>& sensitivity) {
  v1::Policy p;
  p.set_model(job.spec.model());
  *p.mutable_budget() = job.spec.budget();
  std::vector<double> wb, ab;
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto& [name, layer] = layers[l];
    v1::LayerPolicy* lp = p.add_layers();
    lp->set_name(name);
    lp->set_kind(layer->geometry().kind);
    lp->set_params(layer->geometry().params);
    lp->set_macs(layer->geometry().macs);
    lp->set_activation_elements(layer->geometry().act_elems);
    if (l < sensitivity.size()) lp->set_sensitivity(sensitivity[l]);
    if (job.selection.excluded[l]) {
      lp->set_excluded(true);
      lp->set_note(job.selection.notes[l]);
      lp->set_weight_bits(32);
      lp->set_activation_bits(32);
      continue;
    }
    std::string ws, as;
    double w = 0, a = 0;
    switch (layer->mode()) {
      case QuantMode::kSearch:
        ws = layer->weight_candidates()[layer->ChosenWeight()];
        as = layer->act_candidates()[layer->ChosenAct()];
        w = quantizers::ParseSpec(ws)->Real("bits");
        a = quantizers::ParseSpec(as)->Real("bits");
        break;
      case QuantMode::kPrecision:
        ws = job.qss_w[l];
        as = job.qss_a[l];
        w = layer->WeightBits().item<double>();
        a = layer->ActBits().item<double>();
        break;
      case QuantMode::kFixed:
      case QuantMode::kDeployed:
        ws = layer->weight_spec();
        as = layer->act_spec();
        w = quantizers::ParseSpec(ws)->Real("bits");
        a = quantizers::ParseSpec(as)->Real("bits");
        break;
      case QuantMode::kFloat:
        w = a = 32;
        break;
    }
    lp->mutable_weight()->set_spec(ws);
    lp->mutable_activation()->set_spec(as);
    for (auto [spec, proto] : {std::pair{ws, lp->mutable_weight()}, std::pair{as, lp->mutable_activation()}}) {
      auto v = quantizers::ParseSpec(spec);
      if (!v.ok()) continue;
      proto->set_scheme(v->scheme().name);
      for (const auto& param : v->scheme().params) (*proto->mutable_params())[param.key] = v->Text(param.key);
    }
    lp->set_weight_bits(w);
    lp->set_activation_bits(a);
    wb.push_back(w);
    ab.push_back(a);
  }
  for (const UnquantizedLayer& u : job.unquantized) {
    v1::LayerPolicy* lp = p.add_layers();
    lp->set_name(u.name);
    lp->set_kind(u.kind);
    lp->set_params(u.params);
    lp->set_excluded(true);
    lp->set_weight_bits(32);
    lp->set_activation_bits(32);
    lp->set_note(u.needs_exclusion ? absl::StrCat(u.kind, " is not quantized by qsearch (conv2d and linear only)")
                                   : u.reason);
  }
  const CostTotals cost = ComputeCost(job.selection.costs, wb, ab, job.spec.budget().activation_memory_peak());
  *p.mutable_cost() = ToProto(cost);
  *p.mutable_slack() = ToProto(Slack(cost, job.spec.budget()));
  for (double m : job.data.mean) p.add_input_mean(m);
  for (double s : job.data.std) p.add_input_std(s);
  return p;
}

}  // namespace qsearch::search
