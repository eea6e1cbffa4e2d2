"""One chat turn, from what the client sent to the stream of answer text the voice speaks.

A turn takes text, speech, or speech with pictures; runs ASR where the model cannot hear; builds the
messages around the system prompt; and streams the LLM's answer as deltas while keeping the recognised
question and the answer so far readable from any thread (the server's transcript side channel reads them
while the audio is still streaming). Cancelling a turn reaches the LLM backend, whose token loop stops.

Failures are sorted by when they happen: anything wrong with the input, or an LLM that fails before its
first word, raises `LLMVoXError` with an HTTP status (the server answers with a JSON error and no audio);
an LLM that breaks off after speech started ends the answer with a short spoken apology instead.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmvox.asr.input import ASR_RATE, AudioLimits, check_speech, decode_audio_base64, decode_file
from llmvox.errors import LLMVoXError
from llmvox.llm.base import LLMBackend
from llmvox.llm.images import ImageLimits, load_image, load_images
from llmvox.llm.select import DEFAULT_SYSTEM_PROMPT

log = logging.getLogger("llmvox.chat")

AUDIO_ONLY_INSTRUCTION = "Based on the attached audio, answer the query in a descriptive manner."
APOLOGY = " Sorry, I lost my train of thought there."
NO_ANSWER = "Sorry, I have no answer to that."

MODES = ("text", "voice", "visual_speech", "multimodal")
MAX_MESSAGES = 1000  # messages in one /v1/chat/completions request
MAX_HISTORY_CHARS = 200_000  # their text together; the backend then trims the history to its context


@dataclass
class ChatSettings:
    """Per-server chat settings (the original's LLM and ASR flags)."""

    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    max_tokens: int = 1000
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    eos_token: str | None = "<|eot_id|>"  # also cut from the text, as the original's cleaner did
    seed: int | None = None
    asr_language: str | None = "english"
    asr_translate: bool = False
    max_text_chars: int = 4096  # a typed question (the server's --max_text_chars)
    pcm_rate: int = ASR_RATE  # rate of the int16 PCM in audio_base64 (--asr_sample_rate)
    audio: AudioLimits = field(default_factory=AudioLimits)
    images: ImageLimits = field(default_factory=ImageLimits)


@dataclass
class ChatRequest:
    """What the client asked: text, or speech (16 kHz float32), optionally with images (PIL, RGB)."""

    mode: str = "text"
    text: str | None = None
    audio: np.ndarray | None = None
    images: list = field(default_factory=list)
    source_language: str | None = None
    target_language: str | None = None
    history: list[dict] = field(default_factory=list)  # earlier turns, OpenAI-style messages

    @classmethod
    def from_body(cls, mode: str, body: dict, settings: ChatSettings | None = None) -> ChatRequest:
        """Parse an original request body (`/voicechat`, `/vlmschat`, `/multimodalchat`) or `{"text"}`.

        Raises LLMVoXError (400 for malformed fields, 413 for too long/too large, 422 for silence).
        """
        settings = settings or ChatSettings()
        if mode not in MODES:
            raise LLMVoXError(f"unknown chat mode {mode!r}; choose one of: {', '.join(MODES)}", 400)
        if not isinstance(body, dict):
            raise LLMVoXError("the request body must be a JSON object", 400)
        request = cls(mode=mode, source_language=_opt_str(body, "source_language"),
                      target_language=_opt_str(body, "target_language"))
        if mode == "text":
            text = body.get("text")
            if not isinstance(text, str) or not text.strip():
                raise LLMVoXError('"text" must be a non-empty string', 400)
            request.text = _bounded(text.strip(), settings, '"text"')
            return request
        request.audio = _speech_field(body, settings)
        if mode == "visual_speech":
            image = body.get("image_base64")
            if not isinstance(image, str):
                raise LLMVoXError('"image_base64" must be a base64 string (the picture to talk about)', 400)
            request.images = [load_image(image, limits=settings.images, what="image_base64")]
        elif mode == "multimodal":
            images = body.get("image_list", [])
            if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
                raise LLMVoXError('"image_list" must be a list of base64 strings', 400)
            request.images = load_images(images, limits=settings.images)
        return request

    @classmethod
    def from_upload(cls, mode: str, audio_file: bytes, images: list[bytes] | None = None, *,
                    settings: ChatSettings | None = None, source_language: str | None = None,
                    target_language: str | None = None) -> ChatRequest:
        """A multipart upload: an audio file at any rate (WAV/FLAC/OGG) plus image files."""
        settings = settings or ChatSettings()
        if not audio_file:
            raise LLMVoXError("the uploaded audio file is empty", 400)
        samples = check_speech(decode_file(bytes(audio_file), ASR_RATE, "uploaded audio",
                                           settings.audio.max_seconds), ASR_RATE,
                               settings.audio, "uploaded audio")
        pictures = load_images(list(images or []), limits=settings.images)
        return cls(mode=mode, audio=samples, images=pictures, source_language=source_language,
                   target_language=target_language)


def request_from_openai(messages: list, settings: ChatSettings, *, llm_hears: bool, has_asr: bool) -> ChatRequest:
    """OpenAI chat `messages` -> a ChatRequest for the last user message (earlier ones become history).

    Content parts: `text`, `image_url` (data URLs only: the server fetches nothing), `input_audio`
    (`{"data": base64, "format": "wav"|"pcm16"|...}`). Audio goes to the LLM itself when it can hear,
    else through ASR; images need a vision model. System messages from the client replace the server's
    system prompt (the caller checks `history` for them).
    """
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise LLMVoXError('"messages" must be a non-empty list of {"role", "content"} objects', 400)
    if len(messages) > MAX_MESSAGES:
        raise LLMVoXError(f'"messages" has {len(messages)} messages; the limit is {MAX_MESSAGES}', 413)
    *earlier, last = messages
    if last.get("role") != "user":
        raise LLMVoXError("the last message must be the user's", 400)
    history = _history(earlier)
    text, images, audio = _user_parts(last.get("content"), settings)
    pictures = load_images(images, limits=settings.images)
    text = _bounded(text.strip(), settings, "the user message") or None
    if audio is None and text is None:
        raise LLMVoXError("the user message has no text and no audio", 400)
    if audio is not None and llm_hears:
        mode = "multimodal"
    elif audio is not None:
        if not has_asr:
            raise LLMVoXError("this server cannot take audio (no speech recognition, and the LLM cannot hear)", 409)
        mode = "visual_speech" if pictures else "voice"
        if text:
            raise LLMVoXError("send either text or input_audio to this server, not both (its LLM cannot hear)", 400)
    else:
        mode = "visual_speech" if pictures else "text"
    return ChatRequest(mode=mode, text=text, audio=audio, images=pictures, history=history)


def _history(earlier: list[dict]) -> list[dict[str, str]]:
    """The earlier messages as text turns (content parts joined), bounded in size."""
    history = []
    for message in earlier:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p["text"] for p in content
                              if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
        if message.get("role") not in ("system", "user", "assistant") or not isinstance(content, str):
            raise LLMVoXError("earlier messages must be system, user or assistant turns with text content", 400)
        history.append({"role": message["role"], "content": content})
    if sum(len(m["content"]) for m in history) > MAX_HISTORY_CHARS:
        raise LLMVoXError(f"the earlier messages hold over {MAX_HISTORY_CHARS:,} characters; send a shorter history",
                          413)
    return history


def _user_parts(content: Any, settings: ChatSettings) -> tuple[str, list[str], np.ndarray | None]:
    """The last user message's (text, image data URLs, checked audio samples or None)."""
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise LLMVoXError("message content must be a string or a list of content parts", 400)
    texts, images, audio = [], [], None
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url") if isinstance(part.get("image_url"), dict) else None
            if not isinstance(url, str) or not url.startswith("data:"):
                raise LLMVoXError("image_url must be a data: URL (base64); the server fetches no URLs", 400)
            images.append(url)
        elif kind == "input_audio" and isinstance(part.get("input_audio"), dict):
            if audio is not None:
                raise LLMVoXError("send one input_audio part per message", 400)
            audio = _input_audio(part["input_audio"], settings)
        else:
            raise LLMVoXError(f"unsupported content part {kind!r}: use text, image_url or input_audio", 400)
    return "".join(texts), images, audio


def _input_audio(spec: dict, settings: ChatSettings) -> np.ndarray:
    """An `input_audio` part (base64 pcm16 at the server's PCM rate, or an audio file) -> checked samples."""
    from llmvox.llm.images import decode_base64

    data = spec.get("data")
    if not isinstance(data, str):
        raise LLMVoXError("input_audio.data must be a base64 string", 400)
    if str(spec.get("format", "wav")).lower() in ("pcm16", "pcm", "s16le"):
        raw = decode_base64(data, "input_audio.data")
        samples = decode_audio_base64(base64.b64encode(raw).decode("ascii"), pcm_rate=settings.pcm_rate,
                                      what="input_audio.data", max_seconds=settings.audio.max_seconds)
    else:
        samples = decode_file(decode_base64(data, "input_audio.data"), ASR_RATE, "input_audio",
                              settings.audio.max_seconds)
    return check_speech(samples, ASR_RATE, settings.audio, "input_audio")


def _bounded(text: str, settings: ChatSettings, what: str) -> str:
    if len(text) > settings.max_text_chars:
        raise LLMVoXError(f"{what} has {len(text)} characters; the limit is {settings.max_text_chars} "
                        "(--max_text_chars)", 413)
    return text


def _opt_str(body: dict, key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise LLMVoXError(f'"{key}" must be a string', 400)
    return value


def _speech_field(body: dict, settings: ChatSettings) -> np.ndarray:
    data = body.get("audio_base64")
    if not isinstance(data, str):
        raise LLMVoXError('"audio_base64" must be a base64 string (int16 PCM at 16 kHz, or an audio file)', 400)
    samples = decode_audio_base64(data, pcm_rate=settings.pcm_rate, rate=ASR_RATE,
                                  max_seconds=settings.audio.max_seconds)
    return check_speech(samples, ASR_RATE, settings.audio, "audio_base64")



class ChatTurn:
    """One answer in the making. Use: `turn.start()` (ASR + first LLM word; raises LLMVoXError), then
    iterate `turn.deltas()`; read `question`, `answer`, `done` from any thread; `cancel()` to stop.
    """

    def __init__(self, request: ChatRequest, llm: LLMBackend, *, asr=None,
                 settings: ChatSettings | None = None, request_id: str | None = None) -> None:
        self.request, self.llm, self.asr = request, llm, asr
        self.settings = settings or ChatSettings()
        self.id = request_id or uuid.uuid4().hex[:16]
        self.created = time.time()
        self.question: str | None = request.text
        self._parts: list[str] = []
        self._lock = threading.Lock()
        self.cancel_event = threading.Event()
        self.finished = threading.Event()
        self.error: str | None = None
        self.asr_seconds = 0.0
        self.first_token_seconds: float | None = None
        self._stream: Iterator[str] | None = None
        self._first: str | None = None
        self._started = False
        self._ready = False  # start() succeeded: the stream waits for deltas()
        self._reading = False  # deltas() has begun: it closes the stream and marks the turn finished

    # ---- state readable from other threads -------------------------------------------------
    @property
    def answer(self) -> str:
        with self._lock:
            return "".join(self._parts)

    @property
    def done(self) -> bool:
        return self.finished.is_set()

    def snapshot(self) -> dict:
        """The transcript side channel's JSON for this turn."""
        return {"id": self.id, "mode": self.request.mode, "question": self.question, "answer": self.answer,
                "done": self.done, "cancelled": self.cancel_event.is_set(), "error": self.error,
                "asr_seconds": round(self.asr_seconds, 3),
                "first_token_seconds": None if self.first_token_seconds is None else round(self.first_token_seconds, 3)}

    def cancel(self, reason: str | None = None) -> None:
        """Stop the answer (client gone, user interrupted); the LLM stops at its next token. `reason` marks
        the turn failed. A turn whose answer nobody reads yet (its speech failed to start) is finished here,
        with an error, so transcript waiters are not left hanging."""
        self.cancel_event.set()
        with self._lock:
            idle = self._ready and not self._reading
            self._reading = self._reading or idle
        if reason and not self.error:
            self.error = reason
        if idle:
            self.error = self.error or "the answer was cancelled before it was spoken"
            self._close_stream()
            self.finished.set()

    # ---- the work ----------------------------------------------------------------------------
    def recognise(self) -> str | None:
        """Run ASR when the turn has speech and the model cannot hear; sets and returns `question`."""
        request = self.request
        if request.mode in ("text", "multimodal") or request.audio is None:
            return self.question
        if self.asr is None:
            raise LLMVoXError(f"{request.mode} chat needs an ASR model, and this server has none", 503)
        t0 = time.perf_counter()
        try:
            language, task = self.asr.task_for(request.source_language or self.settings.asr_language,
                                               request.target_language)
            text = self.asr.transcribe(request.audio, language=language, task=task)
        except LLMVoXError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken recogniser is the server's fault, not the input's
            log.exception("turn %s: speech recognition failed", self.id)
            raise LLMVoXError(f"speech recognition failed ({type(exc).__name__}); try again", 503) from None
        self.asr_seconds = time.perf_counter() - t0
        if not isinstance(text, str) or not text.strip():
            raise LLMVoXError("no words were recognised in the audio", 422)
        self.question = text.strip()
        return self.question

    def messages(self) -> list[dict]:
        """System prompt + history + this user turn, in the llmvox content-part form."""
        request, out = self.request, []
        if self.settings.system_prompt:
            out.append({"role": "system", "content": self.settings.system_prompt})
        out.extend(request.history)
        if request.mode in ("text", "voice"):
            out.append({"role": "user", "content": self.question or ""})
            return out
        parts: list[dict] = [{"type": "image", "image": image} for image in request.images]
        if request.mode == "multimodal":
            if not getattr(self.llm, "accepts_audio", False):
                raise LLMVoXError("multimodal chat needs an LLM that takes audio (--chat_type multimodal "
                                "with an audio+image model)", 409)
            rate = int(getattr(self.llm, "sampling_rate", ASR_RATE))
            audio = request.audio
            if rate != ASR_RATE:
                from llmvox.audio import resample

                audio = resample(audio, ASR_RATE, rate)
            parts.append({"type": "audio", "audio": audio, "sampling_rate": rate})
            if request.text:
                parts.append({"type": "text", "text": request.text})
            elif not request.images:
                parts.append({"type": "text", "text": AUDIO_ONLY_INSTRUCTION})
        else:
            if request.images and not getattr(self.llm, "accepts_images", False):
                raise LLMVoXError("this server's LLM does not take images (start it with --chat_type "
                                "visual_speech and a vision-language model)", 409)
            parts.append({"type": "text", "text": self.question or ""})
        out.append({"role": "user", "content": parts})
        return out

    def start(self) -> ChatTurn:
        """ASR, then the LLM up to its first piece of text; LLMVoXError when any of it fails."""
        if self._started:
            return self
        self._started = True
        t0 = time.perf_counter()
        try:
            self.recognise()
            s = self.settings
            stops = [s.eos_token] if s.eos_token else None
            messages = self.messages()
            try:
                messages, max_tokens = self.llm.fit_messages(messages, s.max_tokens)
                self._stream = iter(self.llm.stream_chat(
                    messages, max_tokens=max_tokens, temperature=s.temperature, top_p=s.top_p,
                    top_k=s.top_k, stop=stops, cancel=self.cancel_event, seed=s.seed))
                self._first = next(self._stream)
            except StopIteration:
                self._first = None
            except LLMVoXError as exc:
                if exc.status is not None and 400 <= exc.status < 500:  # the input's fault: too long for the model
                    raise
                raise LLMVoXError(f"the LLM failed before answering: {exc}", 502) from None
            except Exception as exc:  # noqa: BLE001 - any backend failure is a 502 with the turn marked failed
                log.exception("turn %s: the LLM failed before answering", self.id)
                raise LLMVoXError(f"the LLM failed before answering ({type(exc).__name__})", 502) from None
        except LLMVoXError as exc:
            self.error = str(exc)
            self._close_stream()
            self.finished.set()
            raise
        except BaseException as exc:
            self.error = f"the turn failed ({type(exc).__name__})"
            self._close_stream()
            self.finished.set()
            raise
        self.first_token_seconds = time.perf_counter() - t0
        with self._lock:
            self._ready = True
        return self

    def _append(self, text: str) -> None:
        with self._lock:
            self._parts.append(text)

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # a generator's finally runs now: the backend stops generating

    def deltas(self) -> Iterator[str]:
        """The answer as it is written (starting the turn if needed). Ends on cancel, on the answer's end,
        or after a spoken apology when the LLM breaks off."""
        self.start()
        with self._lock:
            if self._reading:  # cancelled before anyone read the answer (or read twice): nothing to say
                return
            self._reading = True
        try:
            if self._first is None:
                if not self.cancel_event.is_set():
                    self._append(NO_ANSWER)
                    yield NO_ANSWER
                return
            self._append(self._first)
            yield self._first
            while not self.cancel_event.is_set():
                try:
                    delta = next(self._stream)
                except StopIteration:
                    break
                except Exception as exc:  # noqa: BLE001 - speech is under way: end it with an apology
                    log.warning("turn %s: LLM broke off mid-answer: %s", self.id, exc)
                    self.error = f"the LLM broke off mid-answer: {exc}"
                    self._append(APOLOGY)
                    yield APOLOGY
                    break
                if delta:
                    self._append(delta)
                    yield delta
        finally:
            self._close_stream()
            self.finished.set()

    def run(self) -> str:
        """The whole answer (for tests, CLIs and non-streaming callers)."""
        for _ in self.deltas():
            pass
        return self.answer


class TranscriptStore:
    """Recent turns by request id, for `GET /v1/transcripts/{id}`; bounded in count and age."""

    def __init__(self, max_items: int = 256, ttl_seconds: float = 600.0) -> None:
        self._items: OrderedDict[str, ChatTurn] = OrderedDict()
        self._lock = threading.Lock()
        self.max_items, self.ttl = max_items, ttl_seconds

    def add(self, turn: ChatTurn) -> None:
        with self._lock:
            self._items[turn.id] = turn
            self._evict()

    def get(self, request_id: str) -> ChatTurn | None:
        with self._lock:
            self._evict()
            return self._items.get(request_id)

    def _evict(self) -> None:
        now = time.time()
        while self._items:
            oldest = next(iter(self._items.values()))
            if len(self._items) > self.max_items or now - oldest.created > self.ttl:
                self._items.popitem(last=False)
            else:
                break
