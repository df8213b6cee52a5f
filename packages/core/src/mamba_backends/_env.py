"""Environment reads on the per-call path of the ops.

``os.environ.get`` runs several Python frames (the mapping's ``get``, key encoding, value
decoding); with cold caches, as between two layers of a decode step, one read costs about
30 us on the dev machine, and a decode op made several. :func:`getenv` reads the same
variables from the mapping that ``os.environ`` keeps (``os.environ[...] = ...`` and
``monkeypatch.setenv`` update it), so a variable set at run time is still seen at the next
call.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

_raw: Mapping[bytes, bytes] | None = getattr(os.environ, "_data", None)
_keys: dict[str, bytes] = {}
_enc = sys.getfilesystemencoding()  # os.environ's own key/value codec on POSIX
if os.name != "posix" or not isinstance(_raw, dict):
    _raw = None  # Windows keeps upper-cased str keys: take the plain path


def getenv(name: str) -> str | None:
    """``os.environ.get(name)``: the variable's value, or None when unset."""
    if _raw is None:
        return os.environ.get(name)
    key = _keys.get(name)
    if key is None:
        key = _keys[name] = name.encode(_enc, "surrogateescape")
    value = _raw.get(key)
    return None if value is None else value.decode(_enc, "surrogateescape")
