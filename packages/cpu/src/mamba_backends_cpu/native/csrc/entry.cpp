/* Torch-op entries for the decode kernels (mamba_backends_cpu.native.entry).

   A decode step is a few tens of microseconds of kernel; checking its arguments in Python
   and packing a ctypes block cost as much again. These entries take the tensors themselves
   (one dispatcher call, about 2.5 microseconds), accept only the common form of a call, build
   the kernel's argument block from sizes and strides read in C++, and run the kernel whose
   address the caller passes (the ISA build that Python loaded). Anything else returns
   MB_ENTRY_DECLINED before touching memory, and the Python op then takes its own path: the
   contract's checks run there and name the argument. So every form accepted here is one the
   contract accepts, and no error message is written twice.

   Slot values are checked by the kernel (check_slots): a bad slot writes nothing and returns
   MB_EINDEX, after which Python runs the contract to name the argument. */
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>

extern "C" {
#include "mb_args.h"
}

namespace {

/* The call is not in the form handled here; nothing was read or written. */
constexpr int64_t MB_ENTRY_DECLINED = 1;

/* The kernels' dtype code (mb_args.h), -1 for a dtype they do not read. */
int64_t dtype_code(const at::Tensor& t) {
    switch (t.scalar_type()) {
        case at::kFloat: return 0;
        case at::kBFloat16: return 1;
        case at::kHalf: return 2;
        default: return -1;
    }
}

/* A strided CPU tensor of a dtype the kernels read. */
bool plain(const at::Tensor& t) {
    return t.defined() && t.device().is_cpu() && t.layout() == at::kStrided &&
           dtype_code(t) >= 0;
}

/* No zero stride on an axis longer than one: every element has storage of its own. */
bool writable(const at::Tensor& t) {
    for (int64_t i = 0; i < t.dim(); ++i)
        if (t.size(i) > 1 && t.stride(i) == 0) return false;
    return true;
}

/* The storage's data pointer (what the contract compares first), null for no tensor. */
const void* storage_of(const std::optional<at::Tensor>& t) {
    return t.has_value() && t->defined() ? t->storage().data() : nullptr;
}

bool index_ok(const at::Tensor& t, int64_t rows) {
    return t.device().is_cpu() && t.layout() == at::kStrided && t.dim() == 1 &&
           t.size(0) == rows && (t.scalar_type() == at::kInt || t.scalar_type() == at::kLong);
}

using ConvKernel = int (*)(const MbConvArgs*, int64_t);

/* causal_conv1d_update, one token per request: x (B, dim); conv_state (slots, dim, >= W-1);
   weight (dim, W), 2 <= W <= max_width; bias (dim,) or None; conv_state_indices (B,) int32 /
   int64 or None; out like x (x's dtype) or None (x is written). The writes (out or x, and
   conv_state) share no storage with any other argument, except that x is written in place
   when out is None. */
int64_t conv_update(int64_t kernel, const at::Tensor& x, const at::Tensor& conv_state,
                    const at::Tensor& weight, const std::optional<at::Tensor>& bias, bool silu,
                    const std::optional<at::Tensor>& conv_state_indices, int64_t pad_slot_id,
                    std::optional<int64_t> null_block_id, const std::optional<at::Tensor>& out,
                    int64_t max_width) {
    if (!plain(x) || !plain(conv_state) || !plain(weight) || x.dim() != 2)
        return MB_ENTRY_DECLINED;
    const int64_t B = x.size(0), dim = x.size(1);
    if (weight.dim() != 2 || weight.size(0) != dim) return MB_ENTRY_DECLINED;
    const int64_t W = weight.size(1);
    if (W < 2 || W > max_width) return MB_ENTRY_DECLINED;
    const bool has_bias = bias.has_value() && bias->defined();
    if (has_bias && (!plain(*bias) || bias->dim() != 1 || bias->size(0) != dim))
        return MB_ENTRY_DECLINED;
    if (conv_state.dim() != 3 || conv_state.size(1) != dim || conv_state.size(2) < W - 1 ||
        !writable(conv_state))
        return MB_ENTRY_DECLINED;
    const bool has_out = out.has_value() && out->defined();
    const at::Tensor& y = has_out ? *out : x;
    if (has_out && (!plain(y) || y.sizes() != x.sizes() || y.scalar_type() != x.scalar_type()))
        return MB_ENTRY_DECLINED;
    if (!writable(y)) return MB_ENTRY_DECLINED;
    const bool has_idx = conv_state_indices.has_value() && conv_state_indices->defined();
    if (has_idx ? !index_ok(*conv_state_indices, B) : conv_state.size(0) < B)
        return MB_ENTRY_DECLINED;
    /* Aliasing, decided by storage alone: anything shared goes to the contract. */
    const void* s_state = conv_state.storage().data();
    const void* s_y = y.storage().data();
    const void* s_x = x.storage().data();
    const void* s_w = weight.storage().data();
    const void* s_b = has_bias ? bias->storage().data() : nullptr;
    if (s_state == s_x || s_state == s_w || s_state == s_b || s_state == s_y)
        return MB_ENTRY_DECLINED;
    if (s_y == s_w || s_y == s_b || (has_out && s_y == s_x)) return MB_ENTRY_DECLINED;
    if (has_idx && (storage_of(conv_state_indices) == s_state ||
                    storage_of(conv_state_indices) == s_y))
        return MB_ENTRY_DECLINED;

    MbConvArgs a = {};
    a.x = x.data_ptr();
    a.y = y.data_ptr();
    a.states = conv_state.data_ptr();
    a.weight = weight.data_ptr();
    a.bias = has_bias ? bias->data_ptr() : nullptr;
    a.qsl = nullptr;
    a.slots = has_idx ? conv_state_indices->data_ptr() : nullptr;
    a.has_init = nullptr;
    a.B = B;
    a.L = 1;
    a.dim = dim;
    a.W = W;
    a.xdt = dtype_code(x);
    a.sxb = x.stride(0);
    a.sxt = 0;
    a.sxc = x.stride(1);
    a.ydt = dtype_code(y);
    a.syb = y.stride(0);
    a.syt = 0;
    a.syc = y.stride(1);
    a.sdt = dtype_code(conv_state);
    a.s0 = conv_state.stride(0);
    a.s1 = conv_state.stride(1);
    a.s2 = conv_state.stride(2);
    a.wdt = dtype_code(weight);
    a.sw0 = weight.stride(0);
    a.sw1 = weight.stride(1);
    a.bdt = has_bias ? dtype_code(*bias) : 0;
    a.sb = has_bias ? bias->stride(0) : 0;
    a.q64 = 0;
    a.i64 = has_idx && conv_state_indices->scalar_type() == at::kLong;
    a.sslot = has_idx ? conv_state_indices->stride(0) : 1;
    a.pad_id = pad_slot_id;
    a.has_pad = 1;
    a.null_id = null_block_id.value_or(0);
    a.has_null = null_block_id.has_value();
    a.init_mode = 2; /* decode: every live request reads its state */
    a.silu = silu;
    a.zero_skipped = 0; /* skipped rows are not written */
    a.split = 0;
    a.mode = 1; /* one token each: whole requests per thread */
    a.nthreads = at::get_num_threads();
    /* Neither tunable acts on one token a request: chunks split multi-token requests, and
       the prefetch distance reaches only tokens after the first. */
    a.chunk_tokens = 1;
    a.prefetch = 0;
    a.check_slots = 1;
    a.nslots = conv_state.size(0);
    return reinterpret_cast<ConvKernel>(kernel)(&a, (int64_t)sizeof a);
}

}  // namespace

TORCH_LIBRARY(mamba_backends_cpu, m) {
    m.def(
        "conv_update(int kernel, Tensor(a!) x, Tensor(b!) conv_state, Tensor weight, "
        "Tensor? bias, bool silu, Tensor? conv_state_indices, int pad_slot_id, "
        "int? null_block_id, Tensor(c!)? out, int max_width) -> int");
    m.impl("conv_update", c10::DispatchKey::CompositeExplicitAutograd, TORCH_FN(conv_update));
}
