"""mamba-backends vLLM plugin (entry point ``vllm.general_plugins``)."""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logger = logging.getLogger(__name__)


def register() -> None:
    """vLLM general-plugin hook. The routing lands with the vLLM plugin work; until then no-op."""
    logger.debug("mamba-backends vLLM plugin: nothing to register yet")
