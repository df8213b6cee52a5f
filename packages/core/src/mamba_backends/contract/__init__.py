"""The argument contract of every op: one checker per op family, shared by all backends.

The executable spec (:mod:`mamba_backends.reference`), the CPU kernels and every accelerator
backend call the same ``check_<op>_args`` before they compute or write anything, so the ops
accept and reject exactly the same arguments. A broken rule raises :class:`ContractError`
(a ``ValueError``, and also a ``TypeError`` for dtype/type mistakes written against either),
whose ``op`` and ``arg`` name the op and the argument, as does its message
(``"op: argument 'arg' ..."``).

What is checked, and when:

- **always**: types, shapes, dtypes, devices, strides of written tensors (no zero stride on an
  axis longer than one: an ``expand``-ed output or state), and aliasing: a written tensor may
  not share memory with the inputs unless the op documents it as in place. These read only
  metadata and never synchronise;
- **values** (slot index ranges, offsets that start at 0 and never decrease, chunk metadata
  that tiles the sequences): only when the tensors live on the CPU, when the caller passes
  ``check_values=True``, or when ``MAMBA_BACKENDS_CHECK_VALUES=1`` (a debug switch). On an
  accelerator they would synchronise with the host, which a decode step under CUDA graphs
  cannot afford.

An op that cannot honour an argument it is handed raises ``NotImplementedError`` naming it
(:func:`check_not_supported`); that is a backend's limit, not a contract violation.

Conventions fixed here: ``PAD_SLOT_ID`` (-1) and ``NULL_BLOCK_ID`` (0) slots are skipped and
never written; offsets may end before the token count (a padded tail, as vLLM's CUDA-graph
batches are); tokens past the tail are padding (see each op's spec for what it does there).
"""

from mamba_backends.contract.checkpoint import check_store_prefill_checkpoint_args
from mamba_backends.contract.conv1d import (
    check_causal_conv1d_fn_args,
    check_causal_conv1d_update_args,
)
from mamba_backends.contract.gdn import (
    check_chunk_gated_delta_rule_args,
    check_fused_gdn_gating_args,
    check_fused_recurrent_gated_delta_rule_args,
)
from mamba_backends.contract.generic import (
    CHECK_VALUES_ENV,
    FLAG_DTYPES,
    FLOAT_DTYPES,
    INDEX_DTYPES,
    ContractError,
    check_no_alias,
    check_no_aliases,
    check_not_supported,
    check_offsets,
    check_slot_indices,
    check_tensor,
    check_writable,
    fail,
    normalize_activation,
    overlap,
    values_enabled,
)
from mamba_backends.contract.lightning import (
    check_lightning_attention_args,
    check_linear_decode_forward_args,
)
from mamba_backends.contract.selective_scan import check_selective_scan_args
from mamba_backends.contract.ssd import check_ssd_varlen_args
from mamba_backends.contract.state_update import check_selective_state_update_args

__all__ = [
    "CHECK_VALUES_ENV",
    "FLAG_DTYPES",
    "FLOAT_DTYPES",
    "INDEX_DTYPES",
    "ContractError",
    "check_causal_conv1d_fn_args",
    "check_causal_conv1d_update_args",
    "check_chunk_gated_delta_rule_args",
    "check_fused_gdn_gating_args",
    "check_fused_recurrent_gated_delta_rule_args",
    "check_lightning_attention_args",
    "check_linear_decode_forward_args",
    "check_no_alias",
    "check_no_aliases",
    "check_not_supported",
    "check_offsets",
    "check_selective_scan_args",
    "check_selective_state_update_args",
    "check_slot_indices",
    "check_ssd_varlen_args",
    "check_store_prefill_checkpoint_args",
    "check_tensor",
    "check_writable",
    "fail",
    "normalize_activation",
    "overlap",
    "values_enabled",
]
