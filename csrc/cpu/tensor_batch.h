// Checks the tensor lists of one op call and flattens them into spans for the kernels.
#pragma once
#include <torch/extension.h>

#include <vector>

#include "kernels.h"

namespace sassha {
namespace cpu {

// values: fp32, bf16 or fp16; state: fp32. In an op whose first list is float64, every
// list is float64 and the kernels compute in double.
enum class Kind { kValues, kState };
enum class Access { kRead, kWrite };

class TensorBatch {
 public:
  TensorBatch(const char* op, size_t count) : op_(op), spans_(count), layouts_(count) {}

  // Adds one operand list (operand k = the k-th list added). Every list holds `count`
  // CPU tensors of one dtype (see Kind); tensor i of every list has the shape of tensor i of
  // the first list. A tensor whose memory is not laid out like that first tensor's (dense, same
  // strides) is staged through a copy that is, written back by finish() when written.
  void add(const char* name, at::TensorList tensors, Kind kind, Access access);

  const std::vector<Span>& spans() const { return spans_; }

  // Whether the op's lists are float64 (then its kernels compute in double).
  bool fp64() const { return fp64_; }

  // Writes the staged copies of written tensors back into them.
  void finish();

 private:
  const char* op_;
  int operands_ = 0;
  bool fp64_ = false;
  std::vector<Span> spans_;
  std::vector<at::Tensor> layouts_;  // per index: the tensor whose memory layout all follow
  struct Staged {
    at::Tensor tensor, copy;  // the copy is what the spans point into
    bool written;
  };
  std::vector<Staged> staged_;
};

// Runs kernel over every element of every span. The spans are one index space, cut into
// chunks that cross tensor boundaries (so one huge tensor and thousands of small ones both
// use every thread) and that threads take dynamically; small totals run on the calling
// thread. Returns the kernel's results combined, the sums added in a fixed order.
Partial run(RangeKernel kernel, const Scalars& scalars, const std::vector<Span>& spans);

}  // namespace cpu
}  // namespace sassha
