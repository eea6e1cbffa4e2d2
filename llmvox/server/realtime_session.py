"""The OpenAI Realtime session's shapes: its configuration (`session.update`, GA and beta forms), the
conversation items, and the event names, which differ between the GA protocol and the beta one.

GA clients (openai>=2, `client.realtime.connect`) get GA names; a client that sends the header
`OpenAI-Beta: realtime=v1` (the beta protocol: Pipecat's and LiveKit's beta services) gets the beta names.
Both forms of `session.update` are read from either.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

from llmvox.codec.config import SAMPLE_RATE
from llmvox.errors import LLMVoXError

OUTPUT_RATE = SAMPLE_RATE  # OpenAI's pcm16 is 24 kHz: the codec's own rate
INPUT_RATES = (OUTPUT_RATE, 16_000)

# GA name -> beta name (events the server sends)
BETA_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
}
BETA_CONTENT = {"output_audio": "audio", "output_text": "text"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


@dataclass(frozen=True)
class TurnDetection:
    """`turn_detection: {"type": "server_vad", ...}`; OpenAI's defaults."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True

    def shape(self) -> dict[str, Any]:
        return {"type": "server_vad", "threshold": self.threshold, "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms, "create_response": self.create_response,
                "interrupt_response": self.interrupt_response, "idle_timeout_ms": None}


@dataclass(frozen=True)
class SessionConfig:
    """What `session.update` may change."""

    instructions: str | None = None  # None: the server's --system_prompt
    voice: str = "default"
    input_rate: int = 24_000
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    output_modalities: tuple[str, ...] = ("audio",)
    max_output_tokens: int | None = None

    def updated(self, session: Any) -> SessionConfig:
        """This config with a `session.update`'s `session` applied (GA nested or beta flat fields)."""
        if not isinstance(session, dict):
            raise LLMVoXError('"session" must be an object', 400, code="invalid_value", param="session")
        changes: dict[str, Any] = {}
        if "instructions" in session:
            changes["instructions"] = _text(session["instructions"], "session.instructions")
        audio = session.get("audio") or {}
        if not isinstance(audio, dict):
            raise LLMVoXError('"session.audio" must be an object', 400, code="invalid_value", param="session.audio")
        audio_in, audio_out = audio.get("input") or {}, audio.get("output") or {}
        if "format" in audio_in:
            changes["input_rate"] = _ga_format(audio_in["format"], "session.audio.input.format", INPUT_RATES)
        if "input_audio_format" in session:
            changes["input_rate"] = _beta_format(session["input_audio_format"], "session.input_audio_format")
        if "format" in audio_out:
            _ga_format(audio_out["format"], "session.audio.output.format", (OUTPUT_RATE,))
        if "output_audio_format" in session:
            _beta_format(session["output_audio_format"], "session.output_audio_format")
        for where, value in (("session.audio.output.voice", audio_out.get("voice")), ("session.voice",
                                                                                        session.get("voice"))):
            if value is not None:
                changes["voice"] = _voice(value, where)
        detection = audio_in["turn_detection"] if "turn_detection" in audio_in else session.get("turn_detection", ...)
        if detection is not ...:
            changes["turn_detection"] = _turn_detection(detection, self.turn_detection)
        modalities = session.get("output_modalities", session.get("modalities"))
        if modalities is not None:
            changes["output_modalities"] = _modalities(modalities, "session.output_modalities")
        if "max_output_tokens" in session or "max_response_output_tokens" in session:
            changes["max_output_tokens"] = _max_tokens(session.get("max_output_tokens",
                                                                   session.get("max_response_output_tokens")))
        return replace(self, **changes)

    def shape(self, beta: bool, system_prompt: str | None, session_id: str, model: str) -> dict[str, Any]:
        """The `session` of session.created / session.updated."""
        instructions = self.instructions if self.instructions is not None else (system_prompt or "")
        detection = self.turn_detection.shape() if self.turn_detection else None
        tokens = self.max_output_tokens or "inf"
        if beta:
            return {"id": session_id, "object": "realtime.session", "model": model,
                    "modalities": ["text", "audio"] if "audio" in self.output_modalities else ["text"],
                    "instructions": instructions, "voice": self.voice, "input_audio_format": "pcm16",
                    "output_audio_format": "pcm16", "input_audio_transcription": {"model": "whisper-base"},
                    "turn_detection": detection, "max_response_output_tokens": tokens, "tools": []}
        return {"type": "realtime", "object": "realtime.session", "id": session_id, "model": model,
                "output_modalities": list(self.output_modalities), "instructions": instructions,
                "max_output_tokens": tokens, "tools": [],
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": self.input_rate},
                                    "transcription": {"model": "whisper-base"}, "noise_reduction": None,
                                    "turn_detection": detection},
                          "output": {"format": {"type": "audio/pcm", "rate": OUTPUT_RATE}, "voice": self.voice,
                                     "speed": 1.0}}}


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise LLMVoXError(f'"{where}" must be a string', 400, code="invalid_value", param=where)
    if len(value) > 8000:
        raise LLMVoXError(f'"{where}" has {len(value)} characters; the limit is 8000', 400, code="invalid_value",
                          param=where)
    return value


def _ga_format(value: Any, where: str, rates: tuple[int, ...]) -> int:
    if isinstance(value, str):
        return _beta_format(value, where)
    kind = value.get("type") if isinstance(value, dict) else None
    if kind != "audio/pcm":
        raise LLMVoXError(f'{where}: only {{"type": "audio/pcm"}} (16-bit PCM) is supported (got {kind!r})', 400,
                          code="unsupported_audio_format", param=where)
    rate = value.get("rate", 24_000)
    if rate not in rates:
        raise LLMVoXError(f"{where}.rate must be one of {', '.join(map(str, rates))} (got {rate!r})", 400,
                          code="unsupported_audio_format", param=f"{where}.rate")
    return int(rate)


def _beta_format(value: Any, where: str) -> int:
    if value != "pcm16":
        raise LLMVoXError(f'{where}: only "pcm16" (24 kHz) is supported (got {value!r}); for 16 kHz input send '
                          '{"type": "audio/pcm", "rate": 16000} as session.audio.input.format', 400,
                          code="unsupported_audio_format", param=where)
    return 24_000


def _voice(value: Any, where: str) -> str:
    name = value.get("id") if isinstance(value, dict) else value
    if not isinstance(name, str) or not name or len(name) > 64:
        raise LLMVoXError(f'"{where}" must be a voice name', 400, code="invalid_value", param=where)
    return name  # checked against the server's voices by the session (OpenAI's names: the default voice)


def _turn_detection(value: Any, current: TurnDetection | None) -> TurnDetection | None:
    where = "session.audio.input.turn_detection"
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type", "server_vad") != "server_vad":
        kind = value.get("type") if isinstance(value, dict) else value
        raise LLMVoXError(f'{where}: only {{"type": "server_vad"}} or null (manual commits) is supported '
                          f"(got {kind!r})", 400, code="unsupported_turn_detection", param=where)
    base = current or TurnDetection()
    changes: dict[str, Any] = {}
    checks = {"threshold": (float, 0.0, 1.0), "prefix_padding_ms": (int, 0, 2000),
              "silence_duration_ms": (int, 100, 5000)}
    for name, (kind, low, high) in checks.items():
        if value.get(name) is None:
            continue
        got = value[name]
        if isinstance(got, bool) or not isinstance(got, int | float) or not low <= got <= high:
            raise LLMVoXError(f"{where}.{name} must be a number in [{low}, {high}] (got {got!r})", 400,
                              code="invalid_value", param=f"{where}.{name}")
        changes[name] = kind(got)
    for name in ("create_response", "interrupt_response"):
        if value.get(name) is not None:
            changes[name] = bool(value[name])
    return replace(base, **changes)


def _modalities(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or any(m not in ("text", "audio") for m in value):
        raise LLMVoXError(f'"{where}" must be ["audio"] or ["text"] (got {value!r})', 400, code="invalid_value",
                          param=where)
    return ("audio",) if "audio" in value else ("text",)


def _max_tokens(value: Any) -> int | None:
    if value in (None, "inf"):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise LLMVoXError(f'"max_output_tokens" must be 1-4096 or "inf" (got {value!r})', 400, code="invalid_value",
                          param="max_output_tokens")
    return value


def parse_event(text: str | None, limit: int) -> dict[str, Any]:
    """A client event: a JSON text frame of at most `limit` characters (checked before parsing)."""
    if text is None:
        raise LLMVoXError("send JSON text messages; audio goes base64 in input_audio_buffer.append", 400,
                          code="binary_not_accepted")
    if len(text) > limit:
        raise LLMVoXError(f"a client event of {len(text):,} characters; the limit is {limit:,} (send audio in "
                          "smaller appends)", 400, code="event_too_large")
    try:
        event = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LLMVoXError(f"the event is not valid JSON ({exc.msg} at {exc.pos})", 400, code="invalid_json") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise LLMVoXError('each client event is a JSON object with a string "type"', 400, code="invalid_event")
    return event


# ---- conversation items ------------------------------------------------------------------------
def item_text(item: dict[str, Any]) -> str:
    """The words an item holds (typed text, or the transcript of its audio)."""
    return "".join(str(part.get("text") or part.get("transcript") or "") for part in item.get("content", []))


def parse_item(item: Any) -> dict[str, Any]:
    """A client's `conversation.item.create` item -> a stored message item (text content only)."""
    if not isinstance(item, dict) or item.get("type", "message") != "message":
        kind = item.get("type") if isinstance(item, dict) else item
        raise LLMVoXError(f'only "message" items are supported (got {kind!r})', 400, code="unsupported_item",
                          param="item.type")
    role = item.get("role")
    if role not in ("user", "assistant", "system"):
        raise LLMVoXError(f'item.role must be user, assistant or system (got {role!r})', 400, code="invalid_value",
                          param="item.role")
    content = item.get("content")
    if not isinstance(content, list) or not content:
        raise LLMVoXError("item.content must be a non-empty list of content parts", 400, code="invalid_value",
                          param="item.content")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        text = part.get("text", part.get("transcript")) if isinstance(part, dict) else None
        if kind not in ("input_text", "text", "output_text") or not isinstance(text, str):
            raise LLMVoXError(f"content parts must be text parts with a string (got {kind!r}); send audio with "
                              "input_audio_buffer.append", 400, code="unsupported_content", param="item.content")
        parts.append({"type": "input_text" if role != "assistant" else "output_text", "text": text})
    item_id = item.get("id") if isinstance(item.get("id"), str) and 0 < len(item["id"]) <= 64 else new_id("item")
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": role, "status": "completed",
            "content": parts}


def shown_item(item: dict[str, Any], beta: bool) -> dict[str, Any]:
    """An item as the client's protocol names its content types."""
    if not beta:
        return item
    content = [{**part, "type": BETA_CONTENT.get(part["type"], part["type"])} for part in item["content"]]
    return {**item, "content": content}
