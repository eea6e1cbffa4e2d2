"""llmvox: lightweight, LLM-agnostic streaming text-to-speech (LLMVoX) and a voice-chat server."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["LLMVoX", "LLMVoXError", "__version__"]

from llmvox.errors import LLMVoXError

if TYPE_CHECKING:
    from llmvox.api import LLMVoX


def __getattr__(name: str):
    # torch loads only when the API is used, so `llmvox --help` stays instant
    if name == "LLMVoX":
        from llmvox.api import LLMVoX

        return LLMVoX
    raise AttributeError(f"module 'llmvox' has no attribute {name!r}")
