// The SASSHA ops as functors over the multi-tensor launcher (multi_tensor.cuh). Every value is
// computed in fp32 and a low-precision tensor is rounded once, when it is stored.
#include <type_traits>

#include "fused_ops.h"
#include "multi_tensor.cuh"

namespace sassha {
inline namespace SASSHA_CUDA_BUILD {
namespace cuda {
namespace {

// Calls f(T{}) with T the element type of dtype (fp32, bf16 or fp16).
template <typename F>
void dispatch_float(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat:
      return f(float{});
    case at::kBFloat16:
      return f(at::BFloat16{});
    case at::kHalf:
      return f(at::Half{});
    default:
      TORCH_CHECK(false, "sassha_fast: unsupported dtype ", dtype);
  }
}

// Sum over all elements of (|w| * x)^2, or x^2 without weights (W = void).
template <typename T, typename W>
struct SumOfSquares {
  using Lists = std::conditional_t<std::is_void_v<W>, cuda::Lists<T>, cuda::Lists<T, W>>;
  static constexpr bool kReduces = true;

  __device__ NoCoeffs coeffs() const { return {}; }

  template <int V>
  __device__ void apply(NoCoeffs, void* const* ptrs, int64_t i, float& sum) const {
    float x[V];
    load<T>(ptrs[0], i, x);
    if constexpr (!std::is_void_v<W>) {
      float w[V];
      load<W>(ptrs[1], i, w);
#pragma unroll
      for (int k = 0; k < V; ++k) x[k] *= fabsf(w[k]);
    }
#pragma unroll
    for (int k = 0; k < V; ++k) sum += x[k] * x[k];
  }
};

// e = scale * g (times p*p when adaptive) stored into g, then p += e as stored. Skipped:
// e = 0 is stored and p is not written.
template <typename P>
struct Perturb {
  using Lists = cuda::Lists<P, P>;  // params, grads (which receive the perturbation)
  static constexpr bool kReduces = false;
  DeviceScalar scale;
  const float* found_inf;
  bool adaptive;

  struct Coeffs {
    float scale;
    bool skip;
  };

  __device__ Coeffs coeffs() const { return {value_of(scale), skipped(found_inf)}; }

  template <int W>
  __device__ void apply(const Coeffs& c, void* const* ptrs, int64_t i, float&) const {
    float p[W], e[W];
    if (c.skip) {
#pragma unroll
      for (int k = 0; k < W; ++k) e[k] = 0.f;
      store<P>(ptrs[1], i, e);
      return;
    }
    load<P>(ptrs[0], i, p);
    load<P>(ptrs[1], i, e);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      e[k] *= c.scale;
      if (adaptive) e[k] *= p[k] * p[k];
      // p moves by e as stored, so that leaving the perturbed point subtracts what was added.
      e[k] = rounded<P>(e[k]);
      p[k] += e[k];
    }
    store<P>(ptrs[1], i, e);
    store<P>(ptrs[0], i, p);
  }
};

// The magnitude from which an fp32 value stored as P is not finite there (rounded to
// nearest even: fp16 from 65520, bf16 from 0x7f7f8000); NaN fails every bound.
template <typename P>
__device__ __forceinline__ float stored_limit() {
  if constexpr (std::is_same_v<P, at::Half>) {
    return 65520.f;
  } else if constexpr (std::is_same_v<P, at::BFloat16>) {
    return 3.3961776e38f;
  } else {
    return INFINITY;
  }
}

// Sets the op's wrote_nonfinite flag when one of the W values it stores as T is not finite
// there. Every thread that finds one writes the same 1: no ordering is needed.
template <typename T, int W>
__device__ __forceinline__ void flag_nonfinite(float* wrote_nonfinite, const float (&v)[W]) {
  bool nonfinite = false;
#pragma unroll
  for (int k = 0; k < W; ++k) nonfinite |= !(fabsf(v[k]) < stored_limit<T>());
  if (nonfinite && wrote_nonfinite != nullptr) *wrote_nonfinite = 1.f;
}

struct StepCoeffs {
  float decay, beta1, one_minus_beta1, step_size, bias_correction2, hessian_power, eps;
  bool skip;  // found_inf is set: the step leaves p, m and D as they are
};

__device__ __forceinline__ StepCoeffs step_coeffs(const StepHyper& h, const float* found_inf) {
  const float lr = value_of(h.lr);
  return {1.f - lr * h.weight_decay,
          h.beta1,
          h.one_minus_beta1,
          lr / value_of(h.bias_correction1),
          value_of(h.bias_correction2),
          h.hessian_power,
          h.eps,
          skipped(found_inf)};
}

// Decoupled decay, momentum and preconditioned step of the fp32 parameter x (already off
// the perturbed point): x *= 1 - lr*wd; m = b1*m + (1-b1)*g; x -= (lr/bc1) * m / denom with
// denom = d^hp / bc2 + eps. m is updated in place.
template <int W>
__device__ __forceinline__ void adaptive_step(const StepCoeffs& c, float (&x)[W],
                                              const float (&g)[W], float (&m)[W],
                                              const float (&d)[W]) {
#pragma unroll
  for (int k = 0; k < W; ++k) {
    x[k] *= c.decay;
    m[k] = c.beta1 * m[k] + c.one_minus_beta1 * g[k];
    // sqrtf is exact where powf(d, 0.5) may be off by an ulp (torch's pow takes sqrt too).
    const float power = c.hessian_power == 0.5f ? sqrtf(d[k]) : powf(d[k], c.hessian_power);
    x[k] -= c.step_size * (m[k] / (power / c.bias_correction2 + c.eps));
  }
}

// SASSHA's step, first leaving the perturbed point (p -= e) when kPerturbed. Skipped: m is
// untouched and p only leaves the perturbed point.
template <typename P, bool kPerturbed>
struct SasshaUpdate {
  // params, grads, exp_avgs, exp_hessians[, perturbations]
  using Lists = std::conditional_t<kPerturbed, cuda::Lists<P, P, float, float, P>,
                                   cuda::Lists<P, P, float, float>>;
  static constexpr bool kReduces = false;
  StepHyper hyper;
  const float* found_inf;
  float* wrote_nonfinite;

  __device__ StepCoeffs coeffs() const { return step_coeffs(hyper, found_inf); }

  template <int W>
  __device__ void apply(const StepCoeffs& c, void* const* ptrs, int64_t i, float&) const {
    float x[W], g[W], m[W], d[W];
    if (c.skip && !kPerturbed) return;
    load<P>(ptrs[0], i, x);
    if constexpr (kPerturbed) {
      float e[W];
      load<P>(ptrs[4], i, e);
#pragma unroll
      for (int k = 0; k < W; ++k) x[k] -= e[k];
      if (c.skip) {
        store<P>(ptrs[0], i, x);
        return;
      }
    }
    load<P>(ptrs[1], i, g);
    load<float>(ptrs[2], i, m);
    load<float>(ptrs[3], i, d);
    adaptive_step(c, x, g, m, d);
    flag_nonfinite<float>(wrote_nonfinite, m);
    flag_nonfinite<P>(wrote_nonfinite, x);
    store<float>(ptrs[2], i, m);
    store<P>(ptrs[0], i, x);
  }
};

// D = b2*D + (1-b2)*|h|; skipped: D untouched.
template <typename H>
struct HessianEma {
  using Lists = cuda::Lists<float, H>;  // exp_hessians, hessians
  static constexpr bool kReduces = false;
  float beta2;
  float one_minus_beta2;
  const float* found_inf;
  float* wrote_nonfinite;

  __device__ bool coeffs() const { return skipped(found_inf); }

  template <int W>
  __device__ void apply(bool skip, void* const* ptrs, int64_t i, float&) const {
    if (skip) return;
    float d[W], h[W];
    load<float>(ptrs[0], i, d);
    load<H>(ptrs[1], i, h);
#pragma unroll
    for (int k = 0; k < W; ++k) d[k] = beta2 * d[k] + one_minus_beta2 * fabsf(h[k]);
    flag_nonfinite<float>(wrote_nonfinite, d);
    store<float>(ptrs[0], i, d);
  }
};

// M-SASSHA's step: leave the perturbed point (p += nf * m_old), SASSHA's step, and sum
// m_new^2 for the next perturbation's norm. Skipped: p, m and D untouched, and the sum is
// that of the unchanged m.
template <typename P>
struct MsasshaUpdate {
  using Lists = cuda::Lists<P, P, float, float>;  // params, grads, exp_avgs, exp_hessians
  static constexpr bool kReduces = true;
  StepHyper hyper;
  DeviceScalar norm_factor;
  const float* found_inf;
  float* wrote_nonfinite;

  struct Coeffs {
    StepCoeffs step;
    float norm_factor;
  };

  __device__ Coeffs coeffs() const {
    return {step_coeffs(hyper, found_inf), value_of(norm_factor)};
  }

  template <int W>
  __device__ void apply(const Coeffs& c, void* const* ptrs, int64_t i, float& sum) const {
    float x[W], g[W], m[W], d[W];
    load<float>(ptrs[2], i, m);
    if (c.step.skip) {
#pragma unroll
      for (int k = 0; k < W; ++k) sum += m[k] * m[k];
      return;
    }
    load<P>(ptrs[0], i, x);
    load<P>(ptrs[1], i, g);
    load<float>(ptrs[3], i, d);
#pragma unroll
    for (int k = 0; k < W; ++k) x[k] += c.norm_factor * m[k];
    adaptive_step(c.step, x, g, m, d);
    flag_nonfinite<float>(wrote_nonfinite, m);
    flag_nonfinite<P>(wrote_nonfinite, x);
#pragma unroll
    for (int k = 0; k < W; ++k) sum += m[k] * m[k];
    store<float>(ptrs[2], i, m);
    store<P>(ptrs[0], i, x);
  }
};

// p += alpha * t.
template <typename P, typename T>
struct AddScaled {
  using Lists = cuda::Lists<P, T>;  // params, tensors
  static constexpr bool kReduces = false;
  DeviceScalar alpha;

  __device__ float coeffs() const { return value_of(alpha); }

  template <int W>
  __device__ void apply(float a, void* const* ptrs, int64_t i, float&) const {
    float p[W], t[W];
    load<P>(ptrs[0], i, p);
    load<T>(ptrs[1], i, t);
#pragma unroll
    for (int k = 0; k < W; ++k) p[k] += a * t[k];
    store<P>(ptrs[0], i, p);
  }
};

}  // namespace

at::Tensor global_norm(const TensorList& tensors, const TensorList* weights) {
  at::Tensor norm;
  dispatch_float(tensors.at(0).scalar_type(), [&](auto t_tag) {
    using T = decltype(t_tag);
    if (weights == nullptr) {
      norm = launch_multi_tensor_sum<1>({&tensors}, SumOfSquares<T, void>{}, true);
      return;
    }
    dispatch_float(weights->at(0).scalar_type(), [&](auto w_tag) {
      using W = decltype(w_tag);
      norm = launch_multi_tensor_sum<2>({&tensors, weights}, SumOfSquares<T, W>{}, true);
    });
  });
  return norm;
}

void perturb(const TensorList& params, const TensorList& grads, DeviceScalar scale,
             bool adaptive, const float* found_inf) {
  if (params.empty()) return;
  dispatch_float(params[0].scalar_type(), [&](auto p_tag) {
    using P = decltype(p_tag);
    launch_multi_tensor<2>({&params, &grads}, Perturb<P>{scale, found_inf, adaptive});
  });
}

void sassha_update(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
                   const TensorList& exp_hessians, const TensorList* perturbations,
                   const StepHyper& hyper, const float* found_inf, float* wrote_nonfinite) {
  if (params.empty()) return;
  dispatch_float(params[0].scalar_type(), [&](auto p_tag) {
    using P = decltype(p_tag);
    if (perturbations == nullptr) {
      launch_multi_tensor<4>({&params, &grads, &exp_avgs, &exp_hessians},
                             SasshaUpdate<P, false>{hyper, found_inf, wrote_nonfinite});
    } else {
      launch_multi_tensor<5>({&params, &grads, &exp_avgs, &exp_hessians, perturbations},
                             SasshaUpdate<P, true>{hyper, found_inf, wrote_nonfinite});
    }
  });
}

void hessian_ema(const TensorList& exp_hessians, const TensorList& hessians, float beta2,
                 float one_minus_beta2, const float* found_inf, float* wrote_nonfinite) {
  if (exp_hessians.empty()) return;
  dispatch_float(hessians[0].scalar_type(), [&](auto h_tag) {
    using H = decltype(h_tag);
    launch_multi_tensor<2>({&exp_hessians, &hessians},
                           HessianEma<H>{beta2, one_minus_beta2, found_inf, wrote_nonfinite});
  });
}

at::Tensor msassha_update(const TensorList& params, const TensorList& grads,
                          const TensorList& exp_avgs, const TensorList& exp_hessians,
                          DeviceScalar norm_factor, const StepHyper& hyper,
                          const float* found_inf, float* wrote_nonfinite) {
  at::Tensor sum_of_squares;
  dispatch_float(params.at(0).scalar_type(), [&](auto p_tag) {
    using P = decltype(p_tag);
    sum_of_squares = launch_multi_tensor_sum<4>({&params, &grads, &exp_avgs, &exp_hessians},
                                                MsasshaUpdate<P>{hyper, norm_factor, found_inf,
                                                                 wrote_nonfinite},
                                                false);
  });
  return sum_of_squares;
}

void add_scaled(const TensorList& params, const TensorList& tensors, DeviceScalar alpha) {
  if (params.empty()) return;
  dispatch_float(params[0].scalar_type(), [&](auto p_tag) {
    dispatch_float(tensors[0].scalar_type(), [&](auto t_tag) {
      using P = decltype(p_tag);
      using T = decltype(t_tag);
      launch_multi_tensor<2>({&params, &tensors}, AddScaled<P, T>{alpha});
    });
  });
}

}  // namespace cuda
}  // namespace SASSHA_CUDA_BUILD
}  // namespace sassha
