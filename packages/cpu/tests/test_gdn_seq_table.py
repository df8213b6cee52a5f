"""The native GDN sequence table: the host-list path (decode batches) and the torch path
(large batches) build the same table, and it follows the documented rules."""

from __future__ import annotations

from array import array

import pytest
import torch

from mamba_backends_cpu.native import gdn as native_gdn


def _rows(seq: torch.Tensor | array) -> list[list[int]]:
    """The table as rows of 4, from either form (an array("q") for decode batches)."""
    flat = seq.reshape(-1).tolist() if isinstance(seq, torch.Tensor) else list(seq)
    return [flat[i : i + 4] for i in range(0, len(flat), 4)]


def _cases(N: int, g: torch.Generator) -> list[tuple]:
    lens = torch.randint(0, 4, (N,), generator=g)
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lens.cumsum(0)]).to(torch.int32)
    idx1 = torch.randint(-1, N + 2, (N,), generator=g, dtype=torch.int32)
    idx2 = torch.randint(-1, N + 2, (N, 3), generator=g)
    acc = torch.randint(1, 4, (N,), generator=g, dtype=torch.int32)
    return [
        (N, 1, None, None, None, True),
        (N, 2, None, idx1, None, True),
        (1, 0, cu, idx1, None, False),
        (1, 0, cu, idx2, None, True),
        (1, 0, cu, idx2, acc, True),
    ]


@pytest.mark.parametrize("N", [3, 70])
def test_list_and_torch_paths_agree(N: int, monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(N)
    for case in _cases(N, g):
        monkeypatch.setattr(native_gdn, "SEQ_TABLE_LIST_MAX", 10**9)
        lists = native_gdn.seq_table(*case)
        monkeypatch.setattr(native_gdn, "SEQ_TABLE_LIST_MAX", -1)
        tensors = native_gdn.seq_table(*case)
        assert isinstance(lists[0], array) and isinstance(tensors[0], torch.Tensor), case
        assert _rows(lists[0]) == _rows(tensors[0]) and lists[1] == tensors[1], case


def test_rules_on_a_hand_made_batch() -> None:
    cu = torch.tensor([0, 2, 2, 5, 6], dtype=torch.int32)  # lens 2, 0, 3, 1
    idx = torch.tensor([4, 3, 0, -1], dtype=torch.int32)  # null (0) and pad (-1) skip
    seq, max_len = native_gdn.seq_table(1, 6, cu, idx, None, True)
    want = [[0, 2, 4, 4], [2, 0, 3, -1], [2, 0, 0, -1], [5, 0, -1, -1]]
    assert _rows(seq) == want and max_len == 2
    seq, _ = native_gdn.seq_table(2, 3, None, None, None, False)
    assert _rows(seq) == [[0, 3, -1, -1], [3, 3, -1, -1]]
