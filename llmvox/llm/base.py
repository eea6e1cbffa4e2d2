"""The one interface every LLM backend implements: chat messages in, text deltas out.

LLMVoX speaks while the LLM is still writing, so a backend yields text as it is produced and must
stop promptly when told (a client hung up, the user interrupted). Backends for transformers,
OpenAI-compatible servers, llama.cpp and vision models all fit behind `stream_chat`.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TypedDict


class Message(TypedDict, total=False):
    """An OpenAI-style chat message: role is system, user or assistant."""

    role: str
    content: str


class LLMBackend(ABC):
    """A chat model that streams its answer as text deltas.

    Implementations: set `name`, implement `stream_chat`. The iterator ends when the model ends its
    turn, hits `max_tokens`, emits a `stop` string (not included), or `cancel` is set; checking
    `cancel` between tokens is enough. `seed` makes sampling repeatable where the backend allows it.
    """

    name: str = "llm"

    @abstractmethod
    def stream_chat(self, messages: list[dict], *, max_tokens: int = 1000, temperature: float = 0.7,
                    top_p: float = 0.95, top_k: int = 40, stop: list[str] | None = None,
                    cancel: threading.Event | None = None, seed: int | None = None) -> Iterator[str]:
        """Yield the assistant's reply to `messages` piece by piece."""

    def fit_messages(self, messages: list[dict], max_tokens: int) -> tuple[list[dict], int]:
        """The messages and answer budget that fit the model's context. Backends that know their context
        drop the oldest history, cap `max_tokens`, and raise InputTooLarge when the system prompt and the
        question alone do not fit; by default (context unknown, e.g. a remote server) nothing changes."""
        return messages, max_tokens

    def chat(self, messages: list[dict], **kwargs) -> str:
        """The whole reply as one string (convenience over `stream_chat`)."""
        return "".join(self.stream_chat(messages, **kwargs))

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to release
        """Release model memory or connections (optional)."""
