// The SAF neuron on CPU tensors: the multi-step scan and the one-step operation, forward and
// backward, as torch.library operators in the namespace saf_cpu. saf_plugin/kernels/cpu_scan.py
// compiles this file with g++ at first use and registers fake implementations and autograd.
//
// Symbols as in saf_plugin/core.py (docs/theory.md): decay λ, threshold θ, input scale ρ
// (`scale`: 1 − λ with SpikingJelly's decay_input, absent for 1). Per step, â[t−1] a constant:
//
//   z[t] = ρ Y[t] − (θλ) â[t−1] − θ,   s[t] = H(z[t]) = [z[t] >= 0],   â[t] = λ â[t−1] + s[t]
//
// Each product and sum is rounded on its own, in the order of PyTorch's element-wise operations
// in core.lif_spike and core.accumulate_step (scalars are rounded to the tensor's dtype first;
// the file is compiled with -ffp-contract=off, so no fused multiply-add): â, s and z are
// bit-identical to saf_plugin/core.py in float32 and float64.
//
// SAF-E backward, element-wise (s[t] carries the gradient of â[t]):
//   ∂L/∂Y[t] = ρ σ'(z[t]) (∂L/∂â[t] + ∂L/∂s[t])
// with σ' SpikingJelly's own formula in its operation order: Sigmoid (kind 0,
// σ' = α sg (1 − sg), sg = sigmoid(α z) from ATen) and ATan (kind 1, σ' = (α/2) / (1 + (π α z/2)²),
// the reciprocal taken first as torch's `a / x` does).
//
// SAF-F step (core.saf_f_step): the same forward plus the Spike Representation's zero,
// â[t] + (r − r) with r = min(max(ρY, 0)/θ, c[t]) (NaN stays NaN); backward
//   ∂L/∂Y = ρ [ρY > 0] m / θ,   m = g/2 if r = c, 0 if r > c, else g
// (the backward formulas of torch's clamp, division and minimum; older torch releases give
// clamp the gradient 1 at ρY = 0 as well: `grad_at_zero`, which Python reads from torch).
//
// The forward operators are registered with an Autograd kernel here (torch::autograd::Function:
// no Python on the way), calling the operators below autograd through the dispatcher, so
// cpu_scan.py's fake implementations serve torch.compile. The operators take what their backward
// needs (the surrogate's kind and α, the clamp rule) as arguments.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

namespace {

constexpr int64_t kBlock = 2048;  // elements of one step kept in cache across the T steps

// One step over n neurons; `prev` is â[t−1] (absent at t = 0 without a carried state).
template <typename T, bool SCALE, bool PREV, bool SAVEZ, bool SAVES>
void fire(const T* __restrict y, const T* __restrict prev, T* __restrict acc, T* __restrict z,
          T* __restrict spk, int64_t n, T lam, T theta_lam, T theta, T scale) {
  for (int64_t i = 0; i < n; ++i) {
    T u = SCALE ? y[i] * scale : y[i];
    if (PREV) u = u - theta_lam * prev[i];
    const T zz = u - theta;
    const T s = zz >= T(0) ? T(1) : T(0);
    acc[i] = PREV ? lam * prev[i] + s : s;
    if (SAVEZ) z[i] = zz;
    if (SAVES) spk[i] = s;
  }
}

template <typename T, bool SCALE, bool SAVEZ, bool SAVES>
void scan_loop(const T* y, const T* a0, T* acc, T* z, T* spk, int64_t steps, int64_t n, T lam,
               T theta_lam, T theta, T scale) {
  at::parallel_for(0, n, kBlock, [&](int64_t b0, int64_t b1) {
    for (int64_t c0 = b0; c0 < b1; c0 += kBlock) {
      const int64_t len = std::min(kBlock, b1 - c0);
      for (int64_t t = 0; t < steps; ++t) {
        const int64_t o = t * n + c0;
        T* zt = SAVEZ ? z + o : nullptr;
        T* st = SAVES ? spk + o : nullptr;
        const T* prev = t > 0 ? acc + o - n : (a0 ? a0 + c0 : nullptr);
        if (prev)
          fire<T, SCALE, true, SAVEZ, SAVES>(y + o, prev, acc + o, zt, st, len, lam, theta_lam,
                                             theta, scale);
        else
          fire<T, SCALE, false, SAVEZ, SAVES>(y + o, nullptr, acc + o, zt, st, len, lam,
                                              theta_lam, theta, scale);
      }
    }
  });
}

template <typename T, bool SCALE>
void scan_saving(const T* y, const T* a0, T* acc, T* z, T* spk, int64_t steps, int64_t n, T lam,
                 T theta_lam, T theta, T scale) {
  if (z && spk) scan_loop<T, SCALE, true, true>(y, a0, acc, z, spk, steps, n, lam, theta_lam, theta, scale);
  else if (z) scan_loop<T, SCALE, true, false>(y, a0, acc, z, spk, steps, n, lam, theta_lam, theta, scale);
  else if (spk) scan_loop<T, SCALE, false, true>(y, a0, acc, z, spk, steps, n, lam, theta_lam, theta, scale);
  else scan_loop<T, SCALE, false, false>(y, a0, acc, z, spk, steps, n, lam, theta_lam, theta, scale);
}

// The scan of `steps` rows of n elements each (memory order); a0 is â before the first row.
template <typename T>
void run(const at::Tensor& y, const at::Tensor& a0, at::Tensor& acc, at::Tensor& z,
         at::Tensor& spk, int64_t steps, double lam, double theta, c10::optional<double> scale) {
  const int64_t n = steps ? y.numel() / steps : 0;
  const T* a0p = a0.defined() ? a0.data_ptr<T>() : nullptr;
  T* zp = z.numel() ? z.data_ptr<T>() : nullptr;
  T* sp = spk.numel() ? spk.data_ptr<T>() : nullptr;
  const T l = static_cast<T>(lam), tl = static_cast<T>(theta * lam), th = static_cast<T>(theta);
  const T rho = static_cast<T>(scale.value_or(1.0));
  if (scale.has_value())
    scan_saving<T, true>(y.data_ptr<T>(), a0p, acc.data_ptr<T>(), zp, sp, steps, n, l, tl, th, rho);
  else
    scan_saving<T, false>(y.data_ptr<T>(), a0p, acc.data_ptr<T>(), zp, sp, steps, n, l, tl, th, rho);
}

void check_input(const at::Tensor& y, const char* op) {
  TORCH_CHECK(y.device().is_cpu(), "saf_cpu.", op, ": CPU tensors only");
  TORCH_CHECK(y.scalar_type() == at::kFloat || y.scalar_type() == at::kDouble,
              "saf_cpu.", op, ": float32 or float64 input, not ", y.scalar_type());
}

// ----------------------------------------------------------------------------- the scan

std::tuple<at::Tensor, at::Tensor, at::Tensor> scan(
    const at::Tensor& y_in, const c10::optional<at::Tensor>& acc0, double lam, double theta,
    c10::optional<double> scale, int64_t kind, double alpha, bool save_z, bool save_s) {
  check_input(y_in, "scan");
  TORCH_CHECK(y_in.dim() >= 1, "saf_cpu.scan: input [T, ...]");
  const at::Tensor y = y_in.contiguous();
  const int64_t steps = y.size(0);
  at::Tensor a0;
  if (acc0.has_value() && acc0->defined()) {
    a0 = acc0->to(y.scalar_type()).contiguous();
    TORCH_CHECK(steps == 0 || a0.numel() * steps == y.numel(),
                "saf_cpu.scan: the carried state has ", a0.numel(), " elements, one step has ",
                steps ? y.numel() / steps : 0);
  }
  at::Tensor acc = at::empty_like(y);
  at::Tensor z = save_z ? at::empty_like(y) : at::empty({0}, y.options());
  at::Tensor spk = save_s ? at::empty_like(y) : at::empty({0}, y.options());
  if (y.scalar_type() == at::kFloat) run<float>(y, a0, acc, z, spk, steps, lam, theta, scale);
  else run<double>(y, a0, acc, z, spk, steps, lam, theta, scale);
  return {acc, z, spk};
}

// ----------------------------------------------------------------------------- the step

// `t` laid out element for element as `like` (non-overlapping and dense): the kernels walk
// memory order, and the results take y's strides, as PyTorch's element-wise operations give.
at::Tensor as_layout(const at::Tensor& t, const at::Tensor& like) {
  if (t.sizes() == like.sizes() && t.strides() == like.strides() &&
      t.scalar_type() == like.scalar_type())
    return t;
  TORCH_CHECK(t.numel() == like.numel(), "saf_cpu: a tensor of ", t.numel(),
              " elements where ", like.numel(), " were expected");
  return at::empty_like(like).copy_(t.view_as(like));
}

at::Tensor dense(const at::Tensor& y) {
  return y.is_non_overlapping_and_dense() ? y : at::empty_like(y).copy_(y);
}

// SAF-E: (â[t], s[t], z[t]); s is 0-element without a carried state (then s[t] = â[t]), z
// unless save_z. kind and α name the surrogate for the backward (registered in Python).
std::tuple<at::Tensor, at::Tensor, at::Tensor> step(
    const at::Tensor& y_in, const c10::optional<at::Tensor>& acc0, double lam, double theta,
    c10::optional<double> scale, int64_t kind, double alpha, bool save_z) {
  check_input(y_in, "step");
  const at::Tensor y = dense(y_in);
  const bool has_prev = acc0.has_value() && acc0->defined();
  const at::Tensor a0 = has_prev ? as_layout(*acc0, y) : at::Tensor();
  at::Tensor acc = at::empty_like(y);
  at::Tensor spk = has_prev ? at::empty_like(y) : at::empty({0}, y.options());
  at::Tensor z = save_z ? at::empty_like(y) : at::empty({0}, y.options());
  if (y.scalar_type() == at::kFloat) run<float>(y, a0, acc, z, spk, 1, lam, theta, scale);
  else run<double>(y, a0, acc, z, spk, 1, lam, theta, scale);
  return {acc, spk, z};
}

template <typename T>
void add_representation_zero(const T* __restrict y, T* __restrict acc, int64_t n, T theta, T c,
                             bool has_scale, T scale) {
  at::parallel_for(0, n, 8 * kBlock, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T s = has_scale ? y[i] * scale : y[i];
      T r = s < T(0) ? T(0) : s;  // clamp(min=0): NaN stays NaN
      r = r / theta;
      r = r > c ? c : r;  // minimum(r, c): NaN stays NaN
      acc[i] = acc[i] + (r - r);
    }
  });
}

// What SAF-F's backward needs of a step, one byte per neuron instead of its input Y: the factor
// of ∂L/∂â in ∂L/∂Y, coded 0 (outside 0 < ρY < θ c[t]: 0), 1 (ρY/θ == c[t] exactly: minimum's
// 1/2) or 2 (inside: 1), in the operation order of the representation's forward.
template <typename T>
void f_code_loop(const T* __restrict y, uint8_t* __restrict code, int64_t n, T theta, T c,
                 bool has_scale, T scale, bool grad_at_zero) {
  at::parallel_for(0, n, 8 * kBlock, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T s = has_scale ? y[i] * scale : y[i];
      T r = s < T(0) ? T(0) : s;
      r = r / theta;
      const bool pass = s > T(0) || (grad_at_zero && s == T(0));  // clamp's
      code[i] = !pass || r > c ? 0 : (r == c ? 1 : 2);
    }
  });
}

at::Tensor f_code(const at::Tensor& y_in, const at::Tensor& c, double theta,
                  c10::optional<double> scale, bool grad_at_zero) {
  const at::Tensor y = dense(y_in);
  at::Tensor code = at::empty_like(y, y.options().dtype(at::kByte));
  const at::Tensor cv = c.to(y.scalar_type());
  if (y.scalar_type() == at::kFloat)
    f_code_loop<float>(y.data_ptr<float>(), code.data_ptr<uint8_t>(), y.numel(),
                       static_cast<float>(theta), cv.item<float>(), scale.has_value(),
                       static_cast<float>(scale.value_or(1.0)), grad_at_zero);
  else
    f_code_loop<double>(y.data_ptr<double>(), code.data_ptr<uint8_t>(), y.numel(), theta,
                        cv.item<double>(), scale.has_value(), scale.value_or(1.0),
                        grad_at_zero);
  return code;
}

// SAF-F: â[t] (the same forward) + (r − r), r the Spike Representation; c is c[t], 0-d. With
// save_code, also what the backward needs (f_code), in the same call: one operator forward.
std::tuple<at::Tensor, at::Tensor> step_f(const at::Tensor& y_in,
                                          const c10::optional<at::Tensor>& acc0, double lam,
                                          double theta, c10::optional<double> scale,
                                          const at::Tensor& c, bool grad_at_zero,
                                          bool save_code) {
  check_input(y_in, "step_f");
  const at::Tensor y = dense(y_in);
  const bool has_prev = acc0.has_value() && acc0->defined();
  const at::Tensor a0 = has_prev ? as_layout(*acc0, y) : at::Tensor();
  at::Tensor acc = at::empty_like(y);
  at::Tensor none = at::empty({0}, y.options());
  const at::Tensor cv = c.to(y.scalar_type());
  if (y.scalar_type() == at::kFloat) {
    run<float>(y, a0, acc, none, none, 1, lam, theta, scale);
    add_representation_zero<float>(y.data_ptr<float>(), acc.data_ptr<float>(), y.numel(),
                                   static_cast<float>(theta), cv.item<float>(),
                                   scale.has_value(), static_cast<float>(scale.value_or(1.0)));
  } else {
    run<double>(y, a0, acc, none, none, 1, lam, theta, scale);
    add_representation_zero<double>(y.data_ptr<double>(), acc.data_ptr<double>(), y.numel(),
                                    theta, cv.item<double>(), scale.has_value(),
                                    scale.value_or(1.0));
  }
  at::Tensor code = save_code ? f_code(y, c, theta, scale, grad_at_zero)
                              : at::empty({0}, y.options().dtype(at::kByte));
  return {acc, code};
}

// ----------------------------------------------------------------------------- backward

template <typename T>
void e_backward_loop(const T* __restrict z, const T* ga, const T* gs, const T* sg, T* out,
                     int64_t n, int64_t kind, double alpha, c10::optional<double> scale) {
  const T rho = static_cast<T>(scale.value_or(1.0));
  const bool has_scale = scale.has_value();
  if (kind == 0) {
    const T a = static_cast<T>(alpha);
    at::parallel_for(0, n, 8 * kBlock, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const T g = ga && gs ? ga[i] + gs[i] : (ga ? ga[i] : gs[i]);
        T r = g * (T(1) - sg[i]);
        r = r * sg[i];
        r = r * a;
        out[i] = has_scale ? r * rho : r;
      }
    });
  } else {
    const double half = alpha / 2;
    const T a = static_cast<T>(half), pa = static_cast<T>(M_PI * half);
    at::parallel_for(0, n, 8 * kBlock, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const T g = ga && gs ? ga[i] + gs[i] : (ga ? ga[i] : gs[i]);
        const T ax = pa * z[i];
        const T d = T(1) / (ax * ax + T(1));
        T r = d * a;
        r = r * g;
        out[i] = has_scale ? r * rho : r;
      }
    });
  }
}

// ∂L/∂Y = ρ σ'(z) (∂L/∂â + ∂L/∂s), element-wise over z (one step or [T, ...]); either gradient
// may be absent.
at::Tensor e_backward(const at::Tensor& z_in, const c10::optional<at::Tensor>& grad_acc,
                      const c10::optional<at::Tensor>& grad_spk, c10::optional<double> scale,
                      int64_t kind, double alpha) {
  TORCH_CHECK(kind == 0 || kind == 1, "saf_cpu.e_backward: unknown surrogate kind ", kind);
  const bool has_a = grad_acc.has_value() && grad_acc->defined();
  const bool has_s = grad_spk.has_value() && grad_spk->defined();
  TORCH_CHECK(has_a || has_s, "saf_cpu.e_backward: no gradient");
  const at::Tensor z = dense(z_in);
  const at::Tensor ga = has_a ? as_layout(*grad_acc, z) : at::Tensor();
  const at::Tensor gs = has_s ? as_layout(*grad_spk, z) : at::Tensor();
  at::Tensor sg = kind == 0 ? at::mul(z, alpha).sigmoid_() : z;  // ATen's own sigmoid
  at::Tensor out = kind == 0 ? sg : at::empty_like(z);  // Sigmoid: in place, element by element
  if (z.scalar_type() == at::kFloat)
    e_backward_loop<float>(z.data_ptr<float>(), has_a ? ga.data_ptr<float>() : nullptr,
                           has_s ? gs.data_ptr<float>() : nullptr, sg.data_ptr<float>(),
                           out.data_ptr<float>(), z.numel(), kind, alpha, scale);
  else
    e_backward_loop<double>(z.data_ptr<double>(), has_a ? ga.data_ptr<double>() : nullptr,
                            has_s ? gs.data_ptr<double>() : nullptr, sg.data_ptr<double>(),
                            out.data_ptr<double>(), z.numel(), kind, alpha, scale);
  return out;
}

template <typename T>
void f_backward_loop(const T* __restrict g, const uint8_t* __restrict code, T* __restrict out,
                     int64_t n, T theta, bool has_scale, T scale) {
  at::parallel_for(0, n, 8 * kBlock, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      T m = code[i] == 2 ? g[i] : (code[i] == 1 ? g[i] / T(2) : T(0));  // minimum's, clamp's
      m = m / theta;  // the division's
      out[i] = has_scale ? m * scale : m;
    }
  });
}

// SAF-F step backward: ∂L/∂Y from ∂L/∂â[t] and the step's code (f_code).
at::Tensor f_backward(const at::Tensor& grad, const at::Tensor& code, double theta,
                      c10::optional<double> scale, int64_t dtype) {
  const at::Tensor g = grad.to(static_cast<at::ScalarType>(dtype)).contiguous().view(code.sizes());
  const at::Tensor k = code.contiguous();
  at::Tensor out = at::empty_like(g);
  if (g.scalar_type() == at::kFloat)
    f_backward_loop<float>(g.data_ptr<float>(), k.data_ptr<uint8_t>(), out.data_ptr<float>(),
                           g.numel(), static_cast<float>(theta), scale.has_value(),
                           static_cast<float>(scale.value_or(1.0)));
  else
    f_backward_loop<double>(g.data_ptr<double>(), k.data_ptr<uint8_t>(),
                            out.data_ptr<double>(), g.numel(), theta, scale.has_value(),
                            scale.value_or(1.0));
  return out;
}


// ----------------------------------------------------------------------------- autograd

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = c10::optional<at::Tensor>;

template <typename F>
c10::TypedOperatorHandle<F> handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<F>();
}

OptTensor maybe(const at::Tensor& t) { return t.defined() ? OptTensor(t) : c10::nullopt; }

variable_list e_grads(AutogradContext* ctx, const at::Tensor& g_acc, const at::Tensor& g_spk,
                      size_t n_inputs) {
  variable_list out(n_inputs);
  const bool has_spk = ctx->saved_data["has_spk"].toBool();
  const OptTensor ga = maybe(g_acc), gs = has_spk ? maybe(g_spk) : c10::nullopt;
  if (!ga && !gs) return out;
  TORCH_CHECK(ctx->saved_data["has_z"].toBool(),
              "saf_cpu: backward through a call with save_z=False");
  static auto op = handle<decltype(e_backward)>("saf_cpu::e_backward");
  out[0] = op.call(ctx->get_saved_variables()[0], ga, gs, ctx->saved_data["scale"].toOptional<double>(),
                   ctx->saved_data["kind"].toInt(), ctx->saved_data["alpha"].toDouble());
  return out;
}

void keep_e(AutogradContext* ctx, const at::Tensor& z, bool has_z, bool has_spk,
            c10::optional<double> scale, int64_t kind, double alpha) {
  ctx->save_for_backward({z});
  ctx->saved_data["has_z"] = has_z;
  ctx->saved_data["has_spk"] = has_spk;
  ctx->saved_data["scale"] = scale;
  ctx->saved_data["kind"] = kind;
  ctx->saved_data["alpha"] = alpha;
  ctx->set_materialize_grads(false);
}

struct ScanFn : public torch::autograd::Function<ScanFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& y, const OptTensor& acc0,
                               double lam, double theta, c10::optional<double> scale,
                               int64_t kind, double alpha, bool save_z, bool save_s) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = handle<decltype(scan)>("saf_cpu::scan");
    auto [acc, z, spk] = op.call(y, acc0, lam, theta, scale, kind, alpha, save_z, save_s);
    keep_e(ctx, z, save_z, save_s, scale, kind, alpha);
    ctx->mark_non_differentiable({z});
    return {acc, z, spk};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return e_grads(ctx, grads[0], grads[2], 9);
  }
};

struct StepFn : public torch::autograd::Function<StepFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& y, const OptTensor& acc0,
                               double lam, double theta, c10::optional<double> scale,
                               int64_t kind, double alpha, bool save_z) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = handle<decltype(step)>("saf_cpu::step");
    auto [acc, spk, z] = op.call(y, acc0, lam, theta, scale, kind, alpha, save_z);
    keep_e(ctx, z, save_z, acc0.has_value() && acc0->defined(), scale, kind, alpha);
    ctx->mark_non_differentiable({z});
    return {acc, spk, z};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return e_grads(ctx, grads[0], grads[1], 8);
  }
};

struct StepFFn : public torch::autograd::Function<StepFFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& y, const OptTensor& acc0,
                               double lam, double theta, c10::optional<double> scale,
                               const at::Tensor& c, bool grad_at_zero, bool save_code) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = handle<decltype(step_f)>("saf_cpu::step_f");
    auto [acc, code] = op.call(y, acc0, lam, theta, scale, c, grad_at_zero, true);
    ctx->save_for_backward({code});  // one byte per neuron, not the input Y
    ctx->mark_non_differentiable({code});
    ctx->set_materialize_grads(false);
    ctx->saved_data["theta"] = theta;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["dtype"] = static_cast<int64_t>(y.scalar_type());
    return {acc, code};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(8);
    if (!grads[0].defined()) return out;
    static auto op = handle<decltype(f_backward)>("saf_cpu::f_backward");
    const auto saved = ctx->get_saved_variables();
    out[0] = op.call(grads[0], saved[0], ctx->saved_data["theta"].toDouble(),
                     ctx->saved_data["scale"].toOptional<double>(),
                     ctx->saved_data["dtype"].toInt());
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> scan_autograd(
    const at::Tensor& y, const OptTensor& acc0, double lam, double theta,
    c10::optional<double> scale, int64_t kind, double alpha, bool save_z, bool save_s) {
  auto r = ScanFn::apply(y, acc0, lam, theta, scale, kind, alpha, save_z, save_s);
  return {r[0], r[1], r[2]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> step_autograd(
    const at::Tensor& y, const OptTensor& acc0, double lam, double theta,
    c10::optional<double> scale, int64_t kind, double alpha, bool save_z) {
  auto r = StepFn::apply(y, acc0, lam, theta, scale, kind, alpha, save_z);
  return {r[0], r[1], r[2]};
}

std::tuple<at::Tensor, at::Tensor> step_f_autograd(
    const at::Tensor& y, const OptTensor& acc0, double lam, double theta,
    c10::optional<double> scale, const at::Tensor& c, bool grad_at_zero, bool save_code) {
  auto r = StepFFn::apply(y, acc0, lam, theta, scale, c, grad_at_zero, save_code);
  return {r[0], r[1]};
}

}  // namespace

TORCH_LIBRARY(saf_cpu, m) {
  m.def("scan(Tensor y, Tensor? acc0, float lam, float theta, float? scale, int kind, "
        "float alpha, bool save_z, bool save_s) -> (Tensor, Tensor, Tensor)");
  m.def("step(Tensor y, Tensor? acc0, float lam, float theta, float? scale, int kind, "
        "float alpha, bool save_z) -> (Tensor, Tensor, Tensor)");
  m.def("step_f(Tensor y, Tensor? acc0, float lam, float theta, float? scale, Tensor c, "
        "bool grad_at_zero, bool save_code) -> (Tensor, Tensor)");
  m.def("e_backward(Tensor z, Tensor? grad_acc, Tensor? grad_spk, float? scale, int kind, "
        "float alpha) -> Tensor");
  m.def("f_backward(Tensor grad, Tensor code, float theta, float? scale, int dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(saf_cpu, CPU, m) {
  m.impl("scan", &scan);
  m.impl("step", &step);
  m.impl("step_f", &step_f);
  m.impl("e_backward", &e_backward);
  m.impl("f_backward", &f_backward);
}

TORCH_LIBRARY_IMPL(saf_cpu, Autograd, m) {
  m.impl("scan", &scan_autograd);
  m.impl("step", &step_autograd);
  m.impl("step_f", &step_f_autograd);
}
