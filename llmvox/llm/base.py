"""The one interface every LLM backend implements: chat messages in, text deltas out.

LLMVoX speaks while the LLM is still writing, so a backend yields text as it is produced and must
stop promptly when told (a client hung up, the user interrupted). Backends for transformers,
OpenAI-compatible servers, llama.cpp and vision models all fit behind `stream_chat`.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

from llmvox.input_errors import InputTooLarge

MIN_ANSWER_TOKENS = 64  # room always kept for the answer when a prompt is fitted to a context


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
        question alone do not fit (see `fit_to_context`); by default (context unknown, e.g. a remote server)
        nothing changes."""
        return messages, max_tokens

    def chat(self, messages: list[dict], **kwargs) -> str:
        """The whole reply as one string (convenience over `stream_chat`)."""
        return "".join(self.stream_chat(messages, **kwargs))

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to release
        """Release model memory or connections (optional)."""


def fit_to_context(messages: list[dict], max_tokens: int, context: int, prompt_tokens: Callable[[list[dict]], int],
                   *, min_answer: int = MIN_ANSWER_TOKENS) -> tuple[list[dict], int]:
    """Shared by the backends that know their context: keep every system message and the last message,
    drop the oldest other turns until `prompt_tokens(kept) + min_answer` fits, cap `max_tokens` to the rest.

    History is dropped so that it never opens with an assistant turn (strict templates refuse that);
    InputTooLarge (413) when the system messages and the question alone leave no room for an answer.
    """
    if not messages:
        return messages, max_tokens
    *earlier, last = messages
    droppable = [i for i, m in enumerate(earlier) if m.get("role") != "system"]
    counted: dict[tuple[int, ...], int] = {}

    def size(kept: list[dict]) -> int:
        key = tuple(map(id, kept))
        if key not in counted:
            counted[key] = prompt_tokens(kept)
        return counted[key]

    def kept(n: int) -> list[dict]:
        while 0 < n < len(droppable) and earlier[droppable[n]].get("role") == "assistant":
            n += 1
        gone = set(droppable[:n])
        return [m for i, m in enumerate(earlier) if i not in gone] + [last]

    def fits(n: int) -> bool:
        return size(kept(n)) + min_answer <= context

    if not fits(0):
        fixed = size(kept(len(droppable)))
        if fixed + min_answer > context:
            raise InputTooLarge(f"the question and system prompt are {fixed} tokens; the model's context is "
                                f"{context} tokens, with {min_answer} kept for the answer")
        low, high = 1, len(droppable)  # fits(high) holds; find the fewest turns to drop
        while low < high:
            middle = (low + high) // 2
            low, high = (low, middle) if fits(middle) else (middle + 1, high)
        messages = kept(low)
    return messages, max(1, min(int(max_tokens), context - size(messages)))
