"""The metadata builder: decode/prefill split and SSD chunk metadata."""

from __future__ import annotations

import pytest
import torch

from mamba_backends.metadata import MambaMetadataBuilder, compute_chunk_metadata


def t(*v):
    return torch.tensor(v, dtype=torch.int32)


def test_split_decodes_first():
    # 2 decodes (1 token, with context), then 2 prefills: a new prompt of 5 and a
    # continuing chunk of 3 tokens after 7 computed.
    md = MambaMetadataBuilder().build(t(0, 1, 2, 7, 10), t(4, 9, 0, 7), t(3, 5, 8, 2))
    assert (md.num_decodes, md.num_decode_tokens) == (2, 2)
    assert (md.num_prefills, md.num_prefill_tokens) == (2, 8)
    assert md.query_start_loc_p.tolist() == [0, 5, 8]
    assert md.state_indices_d.tolist() == [3, 5]
    assert md.state_indices_p.tolist() == [8, 2]
    assert md.has_initial_states_p.tolist() == [False, True]
    assert md.cu_chunk_seqlens is None  # no chunk size, no chunk metadata


def test_single_token_prompt_is_a_prefill():
    md = MambaMetadataBuilder().build(t(0, 1), t(0), t(4))
    assert (md.num_decodes, md.num_prefills) == (0, 1)


def test_spec_decode_threshold():
    md = MambaMetadataBuilder(decode_threshold=3).build(t(0, 3, 6), t(5, 5), t(1, 2))
    assert md.num_decodes == 2 and md.num_prefills == 0


def test_decode_after_prefill_is_rejected():
    with pytest.raises(ValueError, match="decode requests before"):
        MambaMetadataBuilder().build(t(0, 4, 5), t(0, 9), t(1, 2))


def test_shape_errors_name_argument():
    with pytest.raises(ValueError, match="context_lens"):
        MambaMetadataBuilder().build(t(0, 4), t(0, 1), t(1))
    with pytest.raises(ValueError, match="state_indices"):
        MambaMetadataBuilder().build(t(0, 4), t(0), t(1, 2))


def test_chunk_metadata_aligned_to_absolute_positions():
    # chunk 4. seq0: new, 10 tokens -> chunks [0,4) [4,8) [8,10).
    # seq1: resumes at position 6 with 7 tokens -> finishes chunk [6,8) (2 tokens),
    # then [8,12) (4), then [12,13) (1). seq2: resumes at 8 with 3 -> one chunk of 3.
    cu, last, seq_idx = compute_chunk_metadata(t(0, 10, 17, 20), t(0, 6, 8), 4)
    assert cu.tolist() == [0, 4, 8, 10, 12, 16, 17, 20]
    assert seq_idx.tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert last.tolist() == [2, 5, 6]


def test_builder_attaches_chunk_metadata():
    md = MambaMetadataBuilder(chunk_size=4).build(t(0, 1, 11), t(3, 0), t(7, 9))
    assert md.chunk_size == 4
    assert md.cu_chunk_seqlens.tolist() == [0, 4, 8, 10]
    assert md.last_chunk_indices.tolist() == [2]
    assert md.seq_idx.tolist() == [0, 0, 0]
