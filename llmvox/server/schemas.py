"""Request bodies and the JSON error shape (OpenAI's, so its clients show our messages)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

RESPONSE_FORMATS = ("pcm", "wav", "flac", "mp3", "opus", "mulaw", "alaw", "mulaw_wav", "alaw_wav")
STREAM_FORMATS = ("audio", "sse")
MIN_SPEED, MAX_SPEED = 0.25, 4.0


class TTSRequest(BaseModel):
    """The original `/tts` body."""

    model_config = ConfigDict(extra="ignore")
    text: str
    lexicon: Any = None  # {word: pronunciation} for this request (checked in the route: a 400, not a 422)
    voice: Any = None  # a loaded voice's name (None: the server's default; checked in the route)


class SpeechRequest(BaseModel):
    """OpenAI's `POST /v1/audio/speech` body. `voice` names one of the server's voices; OpenAI's own
    names (alloy, echo, ...) and "default" speak with the default voice, so clients written for OpenAI
    work unchanged (llmvox.server.voices). Any `model` is accepted."""

    model_config = ConfigDict(extra="ignore")
    input: str
    model: str = "llmvox"
    voice: str | dict[str, Any] | None = None
    response_format: str = "mp3"
    speed: float = Field(default=1.0)
    stream_format: str = "audio"
    instructions: str | None = None
    sample_rate: int | None = None  # ours, not OpenAI's (its client: extra_body); None: the format's default
    lexicon: Any = None  # {word: pronunciation} for this request (checked in the route: a 400, not a 422)
    timestamps: bool = False  # ours: word timestamps (stream_format sse, or /v1/audio/speech/captioned)
