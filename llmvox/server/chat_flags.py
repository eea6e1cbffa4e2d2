"""The chat flags `llmvox serve` adds (LLM backend choice, OpenAI-compatible server, ASR, input limits).

`llmvox serve` already defines the original's chat flags; this adds the rest and leaves those alone.
"""

from llmvox.chat import add_chat_args as add_chat_flags

__all__ = ["add_chat_flags"]
