"""The voices one server speaks with: their names, the default, OpenAI's voice names, the listing.

Every endpoint's `voice` field (`/v1/audio/speech`, `/tts`, `WS /v1/stream`, the chat routes, chat
completions' `audio.voice`, the realtime session's voice) is read by `VoiceSet.resolve`: a loaded
voice's name picks it; no voice, "default" or one of OpenAI's built-in names (alloy, echo, ...) is
the default voice (unless a loaded voice has that name); any other name is a 400 `invalid_voice`
that lists the loaded ones. One server speaks at one sample rate, so its voices must share it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from itertools import chain
from typing import Any

from llmvox.engine.engine import share_codec_models
from llmvox.errors import LLMVoXError
from llmvox.model.voice import Voice

# OpenAI's built-in voices (tts-1, gpt-4o-mini-tts, realtime): clients send them unchanged
OPENAI_VOICES = ("alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
                 "shimmer", "verse")
DEFAULT_NAMES = ("default", *OPENAI_VOICES)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_NAME_CHARS = 64


def check_voice_name(name: str, where: str) -> str:
    """A voice name as flags and folders give it: letters, digits, '.', '_', '-' (64 at most)."""
    if not NAME.fullmatch(name):
        raise LLMVoXError(f"{where}: voice name {name!r} must be 1-64 letters, digits, '.', '_' or '-' "
                          "(starting with a letter or digit)")
    return name


def voice_name(voice: Voice) -> str:
    """A lone voice's name on the server: its own (a bundle's config name) when valid, else "default"."""
    name = str(getattr(voice, "name", "") or "")
    return name if NAME.fullmatch(name) else "default"


class VoiceSet:
    """The loaded voices by name, and which one speaks when a request names none."""

    def __init__(self, voices: Mapping[str, Voice], default: str | None = None):
        if not voices:
            raise LLMVoXError("the server needs at least one voice")
        self.voices = dict(voices)
        for name in self.voices:
            check_voice_name(name, "voice")
        self.default = default or next(iter(self.voices))
        if self.default not in self.voices:
            raise LLMVoXError(f"the default voice {self.default!r} is not loaded (voices: {', '.join(self.voices)})")
        share_codec_models(self.voices.values())  # before the listing counts their memory
        rates = {v.sample_rate for v in self.voices.values()}
        if len(rates) > 1:
            said = ", ".join(f"{n} {v.sample_rate} Hz" for n, v in self.voices.items())
            raise LLMVoXError(f"one server speaks at one sample rate, but the voices differ ({said})")

    @property
    def default_voice(self) -> Voice:
        return self.voices[self.default]

    @property
    def sample_rate(self) -> int:
        return self.default_voice.sample_rate

    def __len__(self) -> int:
        return len(self.voices)

    def resolve(self, value: Any, param: str = "voice") -> str:
        """The name of the voice a request's `value` picks (None: the default); a 400 for any other name."""
        if isinstance(value, dict):  # OpenAI's custom-voice form {"id": "..."}
            value = value.get("id")
        if value is None:
            return self.default
        if not isinstance(value, str):
            raise LLMVoXError(f"{param} must be a voice name (a string)", 400, code="invalid_voice", param=param)
        if value in self.voices:
            return value
        if value.lower() in DEFAULT_NAMES:
            return self.default
        shown = value if len(value) <= MAX_NAME_CHARS else value[:MAX_NAME_CHARS] + "..."
        raise LLMVoXError(f"unknown voice {shown!r}; the voices here are: {', '.join(self.voices)} "
                          f"(OpenAI's names such as alloy speak with the default, {self.default})", 400,
                          code="invalid_voice", param=param)

    def voice(self, value: Any = None, param: str = "voice") -> Voice:
        return self.voices[self.resolve(value, param)]

    def listing(self) -> list[dict[str, Any]]:
        """What `GET /v1/audio/voices` shows of each voice. `memory_bytes` counts the weights a voice
        adds to the server (a codec shared with a voice listed before it is counted there, once)."""
        seen: set[int] = set()
        out = []
        for name, voice in self.voices.items():
            memory, shared_with = _new_bytes(voice, seen), None
            for other_name, other in self.voices.items():
                if other_name == name:
                    break
                if other.codec is voice.codec:
                    shared_with = other_name
                    break
            out.append({"id": name, "object": "voice", "name": name, "default": name == self.default,
                        "language": _bundle_config(voice).get("language", "en"),
                        "sample_rate": voice.sample_rate, "text_frontend": voice.frontend.kind,
                        "disk_bytes": _disk_bytes(voice), "memory_bytes": memory, "codec_shared_with": shared_with})
        return out


def _new_bytes(voice: Voice, seen: set[int]) -> int:
    """Bytes of the voice's decoder and codec tensors not already in `seen` (storages, once each)."""
    total = 0
    for module in (voice.decoder, voice.codec):
        for tensor in chain(module.parameters(), module.buffers()):
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key and key not in seen:
                seen.add(key)
                total += storage.nbytes()
    return total


def _disk_bytes(voice: Voice) -> int | None:
    """The bundle folder's files (None: the voice was not loaded from a bundle folder)."""
    source = getattr(voice, "source", None)
    if source is None or not source.is_dir():
        return None
    return sum(p.stat().st_size for p in source.iterdir() if p.is_file())


def _bundle_config(voice: Voice) -> dict[str, Any]:
    """The bundle's config.json ({} without one). llmvox's text normaliser speaks English, so a voice is
    English unless its bundle declares a "language"."""
    source = getattr(voice, "source", None)
    path = source / "config.json" if source is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}
