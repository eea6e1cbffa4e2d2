"""Request bodies and the JSON error shape (OpenAI's, so its clients show our messages)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

RESPONSE_FORMATS = ("pcm", "wav", "flac", "mp3", "opus")
STREAM_FORMATS = ("audio", "sse")
MIN_SPEED, MAX_SPEED = 0.25, 4.0


class TTSRequest(BaseModel):
    """The original `/tts` body."""

    model_config = ConfigDict(extra="ignore")
    text: str


class SpeechRequest(BaseModel):
    """OpenAI's `POST /v1/audio/speech` body. `model` and `voice` name the one voice this server has;
    any value is accepted so that clients written for other servers work unchanged."""

    model_config = ConfigDict(extra="ignore")
    input: str
    model: str = "llmvox"
    voice: str | dict[str, Any] = "default"
    response_format: str = "mp3"
    speed: float = Field(default=1.0)
    stream_format: str = "audio"
    instructions: str | None = None


