"""Errors in what a client sent, each carrying the HTTP status the server should answer with.

They are `LLMVoXError`s (the CLI prints them as one line); the chat server maps `status` straight to
its JSON error responses, so the mapping lives beside the checks that raise them.
"""

from __future__ import annotations

from llmvox.errors import LLMVoXError


class InputError(LLMVoXError):
    """Malformed input: bad base64, not audio, not an image, wrong field type."""

    status = 400


class InputTooLarge(InputError):
    """Input over a limit: audio too long, image too large, too many images."""

    status = 413


class NoSpeech(InputError):
    """Audio that decodes but holds nothing to answer: silence, noise, no recognised words."""

    status = 422
