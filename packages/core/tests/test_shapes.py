"""State shapes and dtypes against hand-computed values for real model configs.

Every expected number below was worked out by hand from the published configs (shown in the
comments), not by calling the code under test.
"""

from __future__ import annotations

import pytest
import torch

from mamba_backends.shapes import (
    extra_groups_for_head_shards,
    gdn_state_shape,
    linear_attention_state_shape,
    mamba1_state_shape,
    mamba2_state_shape,
    short_conv_state_shape,
    state_dtypes,
)

# Mamba2-2.7B: d_model 2560, expand 2 -> intermediate 5120, n_groups 1, 80 heads x 64,
# N=128, W=4. Groups are replicated to tp: conv_dim = 5120 + 2*tp*128.
#   tp=1: 5376 -> 5376;  tp=2: 5632/2 = 2816;  tp=4: 6144/4 = 1536;  tp=8: 7168/8 = 896.
MAMBA2_27B = {1: (5376, 80), 2: (2816, 40), 4: (1536, 20), 8: (896, 10)}

# Nemotron-H-8B: 128 mamba heads x 64 -> intermediate 8192, n_groups 8, N=128, W=4.
#   conv_dim = 8192 + 2*8*128 = 10240 at every tp that divides 8: 10240/tp.
NEMOTRON_H_8B = {1: (10240, 128), 2: (5120, 64), 4: (2560, 32), 8: (1280, 16)}

# Qwen3-Next-80B-A3B: 16 k heads, 32 v heads, K=V=128, W=4.
#   conv_dim = 2*16*128 + 32*128 = 8192 -> 8192/tp; recurrent (32/tp, 128, 128).
QWEN3_NEXT = {1: (8192, 32), 2: (4096, 16), 4: (2048, 8), 8: (1024, 4)}

# LFM2-1.2B: hidden 2048, conv_L_cache 3 -> conv state (2, 2048/tp).
LFM2_12B = {1: 2048, 2: 1024, 4: 512, 8: 256}

TPS = (1, 2, 4, 8)


@pytest.mark.parametrize("tp", TPS)
def test_mamba2_27b(tp):
    conv_dim, heads = MAMBA2_27B[tp]
    conv, ssm = mamba2_state_shape(tp, 5120, 1, 80, 64, 128, 4)
    assert conv == (3, conv_dim)
    assert ssm == (heads, 64, 128)


@pytest.mark.parametrize("tp", TPS)
def test_nemotron_h_8b(tp):
    conv_dim, heads = NEMOTRON_H_8B[tp]
    conv, ssm = mamba2_state_shape(tp, 8192, 8, 128, 64, 128, 4)
    assert conv == (3, conv_dim)
    assert ssm == (heads, 64, 128)


@pytest.mark.parametrize("tp", TPS)
def test_qwen3_next(tp):
    conv_dim, hv = QWEN3_NEXT[tp]
    conv, rec = gdn_state_shape(tp, 16, 32, 128, 128, 4)
    assert conv == (3, conv_dim)
    assert rec == (hv, 128, 128)


@pytest.mark.parametrize("tp", TPS)
def test_lfm2_12b(tp):
    assert short_conv_state_shape(tp, 2048, 3) == ((2, LFM2_12B[tp]),)


def test_spec_tokens_add_conv_columns_and_ds_layout():
    conv, _ = mamba2_state_shape(1, 5120, 1, 80, 64, 128, 4, num_spec=2)
    assert conv == (5, 5376)
    conv, _ = mamba2_state_shape(1, 5120, 1, 80, 64, 128, 4, num_spec=2, layout="DS")
    assert conv == (5376, 5)
    assert short_conv_state_shape(2, 2048, 3, num_spec=1, layout="DS") == ((1024, 3),)


def test_mamba1_130m():
    # Mamba-130M: d_inner 1536, N 16, W 4.
    assert mamba1_state_shape(1, 1536, 16, 4) == ((3, 1536), (1536, 16))
    assert mamba1_state_shape(2, 1536, 16, 4, layout="DS") == ((768, 3), (768, 16))


def test_linear_attention():
    assert linear_attention_state_shape(4, 64, 128) == ((16, 128, 128),)


def test_group_replication():
    assert extra_groups_for_head_shards(1, 1) == 0
    assert extra_groups_for_head_shards(1, 4) == 3
    assert extra_groups_for_head_shards(8, 4) == 0


def test_indivisible_is_an_error_naming_the_quantity():
    # 5120 + 2*3*128 = 5888 is not a multiple of 3.
    with pytest.raises(ValueError, match="conv_dim=5888 is not divisible by tp_size=3"):
        mamba2_state_shape(3, 5120, 3, 80, 64, 128, 4)
    with pytest.raises(ValueError, match="num_heads=81 is not divisible by tp_size=2"):
        mamba2_state_shape(2, 5120, 2, 81, 64, 128, 4)
    with pytest.raises(ValueError, match="layout"):
        mamba1_state_shape(1, 1536, 16, 4, layout="XY")  # type: ignore[arg-type]


def test_state_dtypes():
    bf16, f32 = torch.bfloat16, torch.float32
    assert state_dtypes("mamba2", bf16) == (bf16, bf16)
    assert state_dtypes("mamba2", "bfloat16", ssm_cache_dtype="float32") == (bf16, f32)
    assert state_dtypes("gdn", f32, cache_dtype="bfloat16") == (bf16, bf16)
    assert state_dtypes("short_conv", torch.float16) == (torch.float16,)
    assert state_dtypes("linear_attention", bf16, cache_dtype="float32") == (f32,)
    with pytest.raises(ValueError, match="ssm_cache_dtype='fp8'"):
        state_dtypes("mamba1", f32, ssm_cache_dtype="fp8")
    with pytest.raises(ValueError, match="mamba_type"):
        state_dtypes("mamba3", f32)
