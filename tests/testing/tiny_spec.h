// The small job every suite starts from: a zoo model on a slice of the real Fashion-MNIST
// (600 training, 200 validation, 300 test images), budget 3 average weight bits with
// 4-bit activations, `epochs` epochs of every phase, batches of 100. Seconds to run; tests
// change what they are about.
#ifndef QSEARCH_TESTS_TESTING_TINY_SPEC_H_
#define QSEARCH_TESTS_TESTING_TINY_SPEC_H_

#include <string>

#include "qsearch/v1/job.pb.h"

namespace qsearch::testing {

inline v1::JobSpec TinySpec(const std::string& model = "mlp", int epochs = 1) {
  v1::JobSpec s;
  s.set_model(model);
  s.mutable_dataset()->set_kind("fashion_mnist");
  s.mutable_dataset()->set_train_size(600);
  s.mutable_dataset()->set_val_size(200);
  s.mutable_dataset()->set_test_size(300);
  s.mutable_budget()->set_average_weight_bits(3);
  s.mutable_qpl()->set_activation_bits(4);
  s.set_pretrain_epochs(epochs);
  s.mutable_qss()->set_epochs(epochs);
  s.mutable_qpl()->set_epochs(epochs);
  s.set_finetune_epochs(epochs);
  s.set_batch_size(100);
  s.set_seed(1);
  return s;
}

}  // namespace qsearch::testing

#endif  // QSEARCH_TESTS_TESTING_TINY_SPEC_H_
