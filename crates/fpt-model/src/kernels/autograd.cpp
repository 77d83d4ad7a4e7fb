// The autograd nodes of the CPU kernels whose backward passes recompute instead of keeping:
// attention with dropout (attention.rs) and dropout itself (dropout.rs); and the frozen linear
// layers whose backward GEMM uses another weight layout than their forward: the LSTM's
// (linear.rs) and the transformers' bf16 ones on weights packed once for oneDNN (packed.rs); and
// an elementwise function whose slope was computed with its value (the bf16 GELU, gelu.rs); and
// the residual add of a dropped-out branch (residual.rs).
//
// tch cannot define a backward pass in Rust, and libtorch's own autograd would keep every
// layer's T×T scores, probabilities and dropout masks alive until the backward pass (12 GB at
// 1,024 tokens), and every dropout's mask. This file is the glue only: torch::autograd::Function
// nodes that save their inputs and a seed and call back into Rust (autograd.rs) for the
// computation, forward (attention in tiles, nothing T×T kept) and backward (the same tiles
// recomputed, masks drawn again from the seed). Tensors cross as tch's handles (`torch::Tensor*`): those passed to a callback are
// borrowed, those a callback returns are owned by the receiver.

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <stdexcept>
#include <string>

namespace {

using Handle = torch::Tensor*;

// Forward: out = attention(q, k, v); returns an owned handle, or null on failure.
using ForwardFn = Handle (*)(Handle q, Handle k, Handle v, Handle allowed, double p, uint64_t seed, bool causal);
// Backward: fills *dq, *dk, *dv with owned handles; false on failure.
using BackwardFn = bool (*)(Handle q, Handle k, Handle v, Handle allowed, Handle grad_out, double p, uint64_t seed, bool causal,
                            Handle* dq, Handle* dk, Handle* dv);

torch::Tensor take(Handle h, const char* what) {
    if (h == nullptr) {
        throw std::runtime_error(std::string("fpt attention: the Rust ") + what + " failed (see the message above)");
    }
    torch::Tensor t = *h;
    delete h;
    return t;
}

struct FptAttention : public torch::autograd::Function<FptAttention> {
    static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                 std::optional<torch::Tensor> allowed_mask, double p, int64_t seed, bool causal, int64_t forward_fn,
                                 int64_t backward_fn) {
        // An undefined tensor argument has no device and breaks the node; a mask is optional.
        torch::Tensor allowed = allowed_mask.value_or(torch::Tensor());
        ctx->save_for_backward({q, k, v});
        ctx->saved_data["allowed"] = allowed;
        ctx->saved_data["p"] = p;
        ctx->saved_data["seed"] = seed;
        ctx->saved_data["causal"] = causal;
        ctx->saved_data["backward_fn"] = backward_fn;
        auto run = reinterpret_cast<ForwardFn>(forward_fn);
        return take(run(&q, &k, &v, allowed.defined() ? &allowed : nullptr, p, static_cast<uint64_t>(seed), causal), "forward");
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
        auto saved = ctx->get_saved_variables();
        torch::Tensor q = saved[0], k = saved[1], v = saved[2];
        torch::Tensor allowed = ctx->saved_data["allowed"].toTensor();
        torch::Tensor grad_out = grads[0].contiguous();
        auto run = reinterpret_cast<BackwardFn>(ctx->saved_data["backward_fn"].toInt());
        Handle dq = nullptr, dk = nullptr, dv = nullptr;
        bool ok = run(&q, &k, &v, allowed.defined() ? &allowed : nullptr, &grad_out, ctx->saved_data["p"].toDouble(),
                      static_cast<uint64_t>(ctx->saved_data["seed"].toInt()), ctx->saved_data["causal"].toBool(), &dq, &dk, &dv);
        if (!ok) {
            delete dq;
            delete dk;
            delete dv;
            dq = dk = dv = nullptr;
        }
        torch::Tensor gq = take(dq, "backward"), gk = take(dk, "backward"), gv = take(dv, "backward");
        // One gradient per input of forward: none for the mask and the plain values.
        return {gq, gk, gv, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
    }
};

// Multiplies by the dropout mask of (p, seed), drawn again in each call: y = mask(x), and the
// gradient is mask(grad_y). Returns an owned handle, or null on failure.
using MaskFn = Handle (*)(Handle x, double p, uint64_t seed);

// Dropout that keeps no mask between the passes: its seed is all it saves.
struct FptDropout : public torch::autograd::Function<FptDropout> {
    static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, double p, int64_t seed, int64_t mask_fn) {
        ctx->saved_data["p"] = p;
        ctx->saved_data["seed"] = seed;
        ctx->saved_data["mask_fn"] = mask_fn;
        return take(reinterpret_cast<MaskFn>(mask_fn)(&x, p, static_cast<uint64_t>(seed)), "dropout");
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
        auto run = reinterpret_cast<MaskFn>(ctx->saved_data["mask_fn"].toInt());
        torch::Tensor grad = grads[0].contiguous();
        torch::Tensor gx =
            take(run(&grad, ctx->saved_data["p"].toDouble(), static_cast<uint64_t>(ctx->saved_data["seed"].toInt())), "dropout backward");
        return {gx, torch::Tensor(), torch::Tensor(), torch::Tensor()};
    }
};

// out = x + dropout(a) for an fp32 residual stream x and a bf16 branch a, one pass each way in
// Rust (residual.rs): the mask is drawn from (p, seed) in both passes, nothing is kept. x's
// gradient is the incoming one; a's is dropout(bf16(grad)).
using ResidualFn = Handle (*)(Handle x, Handle a, double p, uint64_t seed);

struct FptResidualDropout : public torch::autograd::Function<FptResidualDropout> {
    static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, torch::Tensor a, double p, int64_t seed,
                                 int64_t forward_fn, int64_t backward_fn) {
        ctx->saved_data["p"] = p;
        ctx->saved_data["seed"] = seed;
        ctx->saved_data["backward_fn"] = backward_fn;
        return take(reinterpret_cast<ResidualFn>(forward_fn)(&x, &a, p, static_cast<uint64_t>(seed)), "residual dropout");
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
        torch::Tensor grad = grads[0].contiguous();
        torch::Tensor ga;
        if (ctx->needs_input_grad(1)) {
            auto run = reinterpret_cast<MaskFn>(ctx->saved_data["backward_fn"].toInt());
            ga = take(run(&grad, ctx->saved_data["p"].toDouble(), static_cast<uint64_t>(ctx->saved_data["seed"].toInt())),
                      "residual dropout backward");
        }
        return {grad, ga, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
    }
};

// y = f(x) for an elementwise f whose value and slope f'(x) the caller computed in one pass (the
// bf16 GELU): the node returns y and saves the slope; the gradient is grad_y · slope. y and the
// slope enter as inputs without gradients (autograd returns y as an alias of itself).
struct FptSlope : public torch::autograd::Function<FptSlope> {
    static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, torch::Tensor y, torch::Tensor slope) {
        ctx->save_for_backward({slope});
        return y;
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
        torch::Tensor slope = ctx->get_saved_variables()[0];
        return {grads[0] * slope, torch::Tensor(), torch::Tensor()};
    }
};

// y = x Wᵀ + b for a frozen W `[out, in]` (no gradient for W or b), with each pass's GEMM in the
// layout MKL runs fastest when x has few rows (the LSTM's step: 16 × 768 by 768 × 3,072): the
// forward pass as (W xᵀ)ᵀ, the backward pass as (Wt gᵀ)ᵀ with Wt = Wᵀ made contiguous once by the
// caller. libtorch's own linear picks the other layouts and spends the difference packing W.
struct FptFrozenLinear : public torch::autograd::Function<FptFrozenLinear> {
    static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, torch::Tensor weight,
                                 torch::Tensor weight_t, torch::Tensor bias) {
        ctx->saved_data["weight_t"] = weight_t;
        return at::addmm(bias.unsqueeze(1), weight, x.t()).t().contiguous();
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
        torch::Tensor weight_t = ctx->saved_data["weight_t"].toTensor();
        torch::Tensor gx = at::mm(weight_t, grads[0].t()).t().contiguous();
        return {gx, torch::Tensor(), torch::Tensor(), torch::Tensor()};
    }
};


// oneDNN's linear on a weight packed once into its blocked layout (`mkldnn::_reorder_linear_weight`,
// what torch.compile's CPU freezing uses): `mkldnn::_linear_pointwise(x, packed, bias)` is
// x Wᵀ + b without the per-call copy of W into that layout that `at::linear` makes. The ops are
// registered by libtorch_cpu under the `mkldnn` namespace and have no C++ function of their own,
// so they are called through the dispatcher (whose typed() checks these signatures).
// `_linear_pointwise` makes its input contiguous itself.
torch::Tensor onednn_pack(const torch::Tensor& weight) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("mkldnn::_reorder_linear_weight", "")
                         .typed<at::Tensor(const at::Tensor&, std::optional<int64_t>)>();
    return op.call(weight.contiguous(), std::nullopt);
}

torch::Tensor onednn_packed_linear(const torch::Tensor& x, const torch::Tensor& packed, const std::optional<torch::Tensor>& bias) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, std::string_view,
                                           c10::List<std::optional<at::Scalar>>, std::optional<std::string_view>)>();
    return op.call(x, packed, bias, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
}

// y = x Wᵀ + b for a frozen W (no gradient for W or b): the forward pass on W packed, the
// backward pass g W on Wᵀ packed (both made once by the caller).
struct FptPackedLinear : public torch::autograd::Function<FptPackedLinear> {
    static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, torch::Tensor packed,
                                 torch::Tensor packed_t, std::optional<torch::Tensor> bias) {
        ctx->saved_data["packed_t"] = packed_t;
        return onednn_packed_linear(x, packed, bias);
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
        torch::Tensor gx = onednn_packed_linear(grads[0], ctx->saved_data["packed_t"].toTensor(), std::nullopt);
        return {gx, torch::Tensor(), torch::Tensor(), torch::Tensor()};
    }
};

// Every entry point below returns an owned handle to what `make` computes, or null with *error
// set to the exception's message (a thread-local copy, valid until the next failing call of the
// same entry point on this thread).
template <typename Make>
Handle guarded(const char** error, Make make) {
    thread_local std::string message;
    try {
        return new torch::Tensor(make());
    } catch (const std::exception& e) {
        message = e.what();
        *error = message.c_str();
        return nullptr;
    }
}

std::optional<torch::Tensor> optional(Handle h) {
    return h == nullptr ? std::nullopt : std::optional<torch::Tensor>(*h);
}

}  // namespace

extern "C" Handle fpt_frozen_linear_apply(Handle x, Handle weight, Handle weight_t, Handle bias, const char** error) {
    return guarded(error, [&] { return FptFrozenLinear::apply(*x, *weight, *weight_t, *bias); });
}

// Packs a weight `[out, in]` for `fpt_packed_linear_apply`; fails where oneDNN cannot (no bf16
// support on this CPU, or a libtorch built without oneDNN).
extern "C" Handle fpt_mkldnn_pack(Handle weight, const char** error) {
    return guarded(error, [&] { return onednn_pack(*weight); });
}

// bias may be null.
extern "C" Handle fpt_packed_linear_apply(Handle x, Handle packed, Handle packed_t, Handle bias, const char** error) {
    return guarded(error, [&] { return FptPackedLinear::apply(*x, *packed, *packed_t, optional(bias)); });
}

extern "C" Handle fpt_residual_dropout_apply(Handle x, Handle a, double p, uint64_t seed, ResidualFn forward_fn, MaskFn backward_fn,
                                             const char** error) {
    return guarded(error, [&] {
        return FptResidualDropout::apply(*x, *a, p, static_cast<int64_t>(seed), reinterpret_cast<int64_t>(forward_fn),
                                         reinterpret_cast<int64_t>(backward_fn));
    });
}

extern "C" Handle fpt_slope_apply(Handle x, Handle y, Handle slope, const char** error) {
    return guarded(error, [&] { return FptSlope::apply(*x, *y, *slope); });
}

extern "C" Handle fpt_dropout_apply(Handle x, double p, uint64_t seed, MaskFn mask_fn, const char** error) {
    return guarded(error,
                   [&] { return FptDropout::apply(*x, p, static_cast<int64_t>(seed), reinterpret_cast<int64_t>(mask_fn)); });
}

// allowed may be null.
extern "C" Handle fpt_attention_apply(Handle q, Handle k, Handle v, Handle allowed, double p, uint64_t seed, bool causal,
                                      ForwardFn forward_fn, BackwardFn backward_fn, const char** error) {
    return guarded(error, [&] {
        return FptAttention::apply(*q, *k, *v, optional(allowed), p, static_cast<int64_t>(seed), causal,
                                   reinterpret_cast<int64_t>(forward_fn), reinterpret_cast<int64_t>(backward_fn));
    });
}
