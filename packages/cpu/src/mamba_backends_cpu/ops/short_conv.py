"""CPU kernels: LFM2 short-conv mixer core (B*x, conv, C*y)."""

from __future__ import annotations

from typing import Any



def short_conv_mixer(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("cpu op short_conv_mixer is not implemented yet")
