"""LLM backend over transformers: any causal chat model from a local folder (or a hub id when online).

The prompt is built with the tokenizer's own chat template, so the same code serves Llama, Qwen, Phi,
SmolLM and the rest; generation streams through `hf_generate.stream_generate`, which stops the model
itself when the caller cancels.
"""

from __future__ import annotations

import importlib.util
import os
import threading

from llmvox.errors import LLMVoXError
from llmvox.llm.hf_generate import (
    HFChatBackend,
    eos_ids,
    load_failure,
    resolve_device,
    resolve_dtype,
)

INSTALL_TRANSFORMERS = "pip install 'transformers>=4.56'"


def require_transformers() -> None:
    if importlib.util.find_spec("transformers") is None:
        raise LLMVoXError(f"this LLM backend needs transformers; run: {INSTALL_TRANSFORMERS}")


def text_only(messages: list[dict]) -> list[dict]:
    """Messages with list content (text parts) flattened to strings, for text-only chat templates."""
    flat = []
    for message in messages:
        content = message.get("content", "")
        if isinstance(content, list):
            kinds = {part.get("type") for part in content} - {"text"}
            if kinds:
                raise LLMVoXError(f"this LLM takes text only; the request also has: {', '.join(sorted(kinds))}")
            content = "".join(part.get("text", "") for part in content)
        flat.append({**message, "content": content})
    return flat


class TransformersBackend(HFChatBackend):
    """A causal LM with a chat template, on `device` ('cpu', 'cuda:N' or 'auto').

    One generation at a time per instance (a lock). `eos_token` adds a turn-end token the model's config
    may not list (the original's `--eos_token`). `tokens_generated` counts every token the model made.
    """

    def __init__(self, checkpoint: str | os.PathLike, *, device: str = "cpu", dtype: str = "auto",
                 eos_token: str | None = None, trust_remote_code: bool = False) -> None:
        require_transformers()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = str(checkpoint)
        self.device = resolve_device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
            self.model = AutoModelForCausalLM.from_pretrained(
                source, dtype=resolve_dtype(dtype, self.device), trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as exc:
            raise load_failure("the LLM", source, exc) from None
        if not getattr(self.tokenizer, "chat_template", None):
            raise LLMVoXError(f"the tokenizer of {source!r} has no chat template; use an instruct/chat model")
        self.model.to(self.device).eval()
        self.eos_token_ids = eos_ids(self.model, self.tokenizer, eos_token)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (self.eos_token_ids[0] if self.eos_token_ids else None)
        self.name = f"transformers:{os.path.basename(source.rstrip('/')) or source}"
        self._lock = threading.Lock()
        self.tokens_generated = 0

    def _count(self) -> None:
        self.tokens_generated += 1

    def prompt_inputs(self, messages: list[dict]) -> dict:
        """Token ids of the chat-templated conversation, ready for generate()."""
        encoded = self.tokenizer.apply_chat_template(text_only(messages), add_generation_prompt=True,
                                                     tokenize=True, return_dict=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in encoded.items()}
