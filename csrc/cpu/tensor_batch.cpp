#include "tensor_batch.h"

#include <ATen/Parallel.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>

namespace sassha {
namespace cpu {
namespace {

// The flattened list is cut into chunks that threads take as they come free, so a core
// slowed by other load holds no one up. Chunks are whole cache lines in fp32, big enough
// that each streams at full speed and a parallel region pays for itself, and small enough
// that every thread gets several.
constexpr int64_t kMinChunk = 16384;
constexpr int64_t kMaxChunk = 262144;
constexpr int64_t kChunksWanted = 32;
constexpr int64_t kChunkAlignment = 64;

int64_t chunk_elements(int64_t total) {
  const int64_t even = (total / kChunksWanted + kChunkAlignment - 1) / kChunkAlignment *
                       kChunkAlignment;
  return std::min(kMaxChunk, std::max(kMinChunk, even));
}

Dtype kernel_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return Dtype::kF32;
    case at::kBFloat16:
      return Dtype::kBF16;
    case at::kDouble:
      return Dtype::kF64;
    default:
      return Dtype::kF16;
  }
}

bool dense(const at::Tensor& t) { return t.is_non_overlapping_and_dense(); }

// Whether element j of a's memory is the same logical element as element j of layout's.
bool laid_out_like(const at::Tensor& a, const at::Tensor& layout) {
  if (!dense(a)) return false;
  for (int64_t dim = 0; dim < a.dim(); ++dim)
    if (a.size(dim) != 1 && a.stride(dim) != layout.stride(dim)) return false;
  return true;
}

Partial run_range(RangeKernel kernel, const Scalars& scalars, const std::vector<Span>& spans,
                  const std::vector<int64_t>& offsets, int64_t begin, int64_t end) {
  Partial sum;
  // The last span starting at or before begin (empty spans share their successor's offset).
  size_t s = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
  for (int64_t pos = begin; pos < end; ++s) {
    const int64_t stop = std::min(end, offsets[s + 1]);
    if (stop > pos) sum += kernel(scalars, spans[s], pos - offsets[s], stop - offsets[s]);
    pos = std::max(pos, stop);
  }
  return sum;
}

}  // namespace

void TensorBatch::add(const char* name, at::TensorList tensors, Kind kind, Access access) {
  TORCH_CHECK(operands_ < kMaxOperands, op_, ": too many operand lists");
  TORCH_CHECK(tensors.size() == spans_.size(), op_, ": ", name, " has ", tensors.size(),
              " tensors, expected ", spans_.size(), " (one per parameter)");
  const int k = operands_++;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.device().is_cpu(), op_, ": ", name, "[", i, "] is on ", t.device(),
                "; every tensor of one op must be on one device");
    const at::ScalarType type = t.scalar_type();
    if (k == 0 && i == 0) fp64_ = type == at::kDouble;
    if (fp64_) {
      TORCH_CHECK(type == at::kDouble, op_, ": ", name, "[", i, "] is ", type,
                  "; the op's first tensor is float64, so every tensor (state included) "
                  "must be float64");
    } else if (kind == Kind::kState) {
      TORCH_CHECK(type == at::kFloat, op_, ": ", name, "[", i, "] is ", type,
                  "; optimizer state must be float32 (float64 for float64 parameters)");
    } else {
      TORCH_CHECK(type == at::kFloat || type == at::kBFloat16 || type == at::kHalf, op_, ": ",
                  name, "[", i, "] is ", type, "; expected float32, bfloat16 or float16 (or "
                  "float64, when the op's first tensor is float64)");
      TORCH_CHECK(type == tensors[0].scalar_type(), op_, ": ", name, " mixes dtypes (", type,
                  " at ", i, ", ", tensors[0].scalar_type(), " at 0)");
    }
    at::Tensor memory = t;
    if (k == 0) {
      if (!dense(t)) memory = t.contiguous();
      layouts_[i] = memory;
      spans_[i].numel = t.numel();
    } else {
      TORCH_CHECK(t.sizes() == layouts_[i].sizes(), op_, ": ", name, "[", i, "] has shape ",
                  t.sizes(), ", expected ", layouts_[i].sizes());
      if (!laid_out_like(t, layouts_[i]))
        memory = at::empty_strided(layouts_[i].sizes(), layouts_[i].strides(), t.options())
                     .copy_(t);
    }
    if (!memory.is_same(t)) staged_.push_back({t, memory, access == Access::kWrite});
    spans_[i].data[k] = memory.data_ptr();
    spans_[i].dtype[k] = kernel_dtype(type);
  }
}

void TensorBatch::finish() {
  for (const Staged& s : staged_)
    if (s.written) s.tensor.copy_(s.copy);
  staged_.clear();
}

Partial run(RangeKernel kernel, const Scalars& scalars, const std::vector<Span>& spans) {
  std::vector<int64_t> offsets(spans.size() + 1, 0);
  for (size_t s = 0; s < spans.size(); ++s) offsets[s + 1] = offsets[s] + spans[s].numel;
  const int64_t total = offsets.back();
  if (total == 0) return {};
  const int64_t chunk = chunk_elements(total);
  const int64_t chunks = (total + chunk - 1) / chunk;
  // One sum per chunk, added in chunk order: a reduction gives the same bits whatever the
  // thread count and whichever thread ran which chunk.
  std::vector<Partial> sums(chunks);
  int64_t threads = 1;
#ifdef _OPENMP
  if (!omp_in_parallel()) threads = std::min<int64_t>(at::get_num_threads(), chunks);
#pragma omp parallel for num_threads(static_cast<int>(threads)) schedule(dynamic, 1) \
    if (threads > 1)
#endif
  for (int64_t c = 0; c < chunks; ++c)
    sums[c] = run_range(kernel, scalars, spans, offsets, c * chunk,
                        std::min(total, (c + 1) * chunk));
  Partial sum;
  for (const Partial& s : sums) sum += s;
  return sum;
}

}  // namespace cpu
}  // namespace sassha
