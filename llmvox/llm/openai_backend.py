"""LLM backend for any OpenAI-compatible streaming chat endpoint (vLLM, Ollama, llama.cpp server, ...).

Speaks the wire protocol directly with httpx (server-sent events, `data: {...}` lines ending with
`data: [DONE]`) rather than through the `openai` package: one small dependency the server already
has, and full control of the connection, so a cancel closes the socket and the remote model stops.
Image and audio content parts are sent in the OpenAI form (`image_url` data URLs, `input_audio` WAV),
so a vision- or audio-capable server can answer spoken questions about pictures too.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

from llmvox.errors import LLMVoXError
from llmvox.input_errors import InputTooLarge
from llmvox.llm.base import LLMBackend
from llmvox.llm.hf_generate import StopText

INSTALL_HTTPX = "pip install httpx"


def normalize_base_url(url: str) -> str:
    """`http://host:port` -> `http://host:port/v1`; a full `.../chat/completions` URL is cut back."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise LLMVoXError(f"LLM server URL must start with http:// or https:// and name a host: {url!r}")
    path = parts.path
    if path.endswith("/chat/completions"):
        path = path[: -len("/chat/completions")]
    if path in ("", "/"):
        path = "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _image_part(image) -> dict:
    """A PIL image as an OpenAI `image_url` part (PNG data URL)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}


def _audio_part(audio, sampling_rate: int) -> dict:
    """Float mono samples as an OpenAI `input_audio` part (16-bit WAV, base64)."""
    import numpy as np
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(audio, dtype=np.float32), int(sampling_rate), format="WAV", subtype="PCM_16")
    return {"type": "input_audio",
            "input_audio": {"data": base64.b64encode(buffer.getvalue()).decode("ascii"), "format": "wav"}}


def to_openai_messages(messages: list[dict]) -> list[dict]:
    """llmvox messages (content a string or parts holding PIL images / audio arrays) -> JSON-ready."""
    out = []
    for message in messages:
        content = message.get("content", "")
        if isinstance(content, list):
            parts = []
            for part in content:
                kind = part.get("type")
                if kind == "text":
                    parts.append({"type": "text", "text": part.get("text", "")})
                elif kind == "image":
                    parts.append(_image_part(part["image"]))
                elif kind == "audio":
                    parts.append(_audio_part(part["audio"], part.get("sampling_rate", 16000)))
                else:
                    raise LLMVoXError(f"unknown message content part type {kind!r}")
            content = parts
        out.append({"role": message["role"], "content": content})
    return out


class OpenAIBackend(LLMBackend):
    """Streams `POST {base_url}/chat/completions` with `stream: true`.

    `model` None asks the server (`GET /models`) and uses the first model it lists. `send_top_k` adds
    the non-standard `top_k` field (vLLM, llama.cpp and Ollama accept it; OpenAI itself rejects it).
    `tokens_generated` counts content deltas received.
    """

    accepts_images = True
    accepts_audio = True

    def __init__(self, base_url: str, *, api_key: str | None = None, model: str | None = None,
                 timeout: float = 120.0, send_top_k: bool | None = None, extra_body: dict | None = None) -> None:
        try:
            import httpx
        except ImportError:
            raise LLMVoXError(f"the OpenAI-compatible backend needs httpx; run: {INSTALL_HTTPX}") from None
        self.base_url = normalize_base_url(base_url)
        headers = {"Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(base_url=self.base_url, headers=headers,
                                    timeout=httpx.Timeout(timeout, connect=10.0))
        host = urlsplit(self.base_url).hostname or ""
        self.send_top_k = (not host.endswith("openai.com")) if send_top_k is None else send_top_k
        self.extra_body = dict(extra_body or {})
        self.model = model or self._first_model()
        self.name = f"openai:{self.model}@{self.base_url}"
        self.tokens_generated = 0

    def _first_model(self) -> str:
        import httpx

        try:
            response = self._client.get("/models")
        except httpx.HTTPError as exc:
            raise LLMVoXError(f"cannot reach the LLM server at {self.base_url}: {exc}") from None
        if response.status_code != 200:
            raise LLMVoXError(f"the LLM server at {self.base_url} did not list its models "
                              f"(HTTP {response.status_code}); pass --llm_model")
        try:
            return str(response.json()["data"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise LLMVoXError(f"the LLM server at {self.base_url} lists no model; pass --llm_model") from None

    def request_body(self, messages: list[dict], *, max_tokens: int, temperature: float, top_p: float,
                     top_k: int, stop: list[str] | None, seed: int | None) -> dict:
        body = {"model": self.model, "messages": to_openai_messages(messages), "stream": True,
                "max_tokens": int(max_tokens), "temperature": float(temperature), "top_p": float(top_p)}
        if self.send_top_k and top_k and top_k > 0:
            body["top_k"] = int(top_k)
        if stop:
            body["stop"] = list(stop)[:4]  # the API allows at most four; the rest are cut locally
        if seed is not None:
            body["seed"] = int(seed)
        body.update(self.extra_body)
        return body

    def stream_chat(self, messages: list[dict], *, max_tokens: int = 1000, temperature: float = 0.7,
                    top_p: float = 0.95, top_k: int = 40, stop: list[str] | None = None,
                    cancel: threading.Event | None = None, seed: int | None = None) -> Iterator[str]:
        import httpx

        body = self.request_body(messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                 top_k=top_k, stop=stop, seed=seed)
        stops = StopText(stop)
        try:
            with self._client.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code != 200:
                    raise _refusal(response.status_code, response.read())
                finished = False
                for line in response.iter_lines():
                    if cancel is not None and cancel.is_set():
                        return  # leaving the `with` closes the connection: the server stops generating
                    if not line.startswith("data:"):
                        continue  # blank separators, comments (": ping"), event names
                    data = line[5:].strip()
                    if data == "[DONE]":
                        finished = True
                        break
                    delta, finish_reason = _parse_chunk(data)
                    if delta:
                        self.tokens_generated += 1
                        out = stops.feed(delta)
                        if out:
                            yield out
                        if stops.stopped:
                            return
                    if finish_reason:
                        finished = True
                if not finished:
                    raise LLMVoXError("the LLM server ended the stream before the answer was finished")
                tail = stops.flush()
                if tail:
                    yield tail
        except httpx.HTTPError as exc:
            raise LLMVoXError(f"the LLM server at {self.base_url} failed: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        self._client.close()


# How OpenAI, vLLM, llama.cpp's server and Ollama say that the prompt does not fit the model's context.
_CONTEXT_WORDS = ("context_length_exceeded", "context length", "context window", "context size", "maximum context")


def _refusal(status: int, body, prefix: str | None = None) -> LLMVoXError:
    """A remote's error (a non-200 answer, or an error event in the stream). A prompt too long for the
    remote model's context is the input's fault (InputTooLarge: 413); anything else is the LLM server's
    (a 502 before the first word, a spoken apology after it)."""
    text = _error_text(body)
    code = ""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        error = (json.loads(body) if isinstance(body, (str, bytes, bytearray)) else body).get("error")
        code = str(error.get("code") or "") if isinstance(error, dict) else ""
    if status == 413 or (400 <= status < 500 and any(w in (code + " " + text).lower() for w in _CONTEXT_WORDS)):
        return InputTooLarge(f"the question is too long for the LLM server's model: {text}")
    return LLMVoXError(f"{prefix or f'the LLM server answered HTTP {status}'}: {text}")


def _parse_chunk(data: str) -> tuple[str, str | None]:
    """(content delta, finish_reason) of one `chat.completion.chunk`; an `error` event raises."""
    try:
        chunk = json.loads(data)
    except ValueError:
        raise LLMVoXError(f"the LLM server sent a malformed event: {data[:200]!r}") from None
    if isinstance(chunk, dict) and chunk.get("error"):
        raise _refusal(400, chunk, "the LLM server reported an error mid-answer")
    choices = chunk.get("choices") or [] if isinstance(chunk, dict) else []
    if not choices:
        return "", None
    choice = choices[0]
    delta = (choice.get("delta") or {}).get("content") or ""
    return delta, choice.get("finish_reason")


def _error_text(payload) -> str:
    """The human part of an OpenAI-style error body (bytes, str or parsed JSON), on one line."""
    return " ".join(_error_body_text(payload).split())[:300] or "(empty body)"


def _error_body_text(payload) -> str:
    if isinstance(payload, (bytes, bytearray)):
        payload = payload.decode("utf-8", "replace")
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError:
            return payload[:2000]
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict):
            return str(error.get("message") or error)[:2000]
        return str(error)[:2000]
    return str(payload)[:2000]
