"""CPU kernels: selective state update (Mamba1 and Mamba2 heads form, decode)."""

from __future__ import annotations

from typing import Any



def selective_state_update(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("cpu op selective_state_update is not implemented yet")
