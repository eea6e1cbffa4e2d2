"""`llmvox client`: talk to a running llmvox server and keep (and play) the spoken answer.

Sends text, a recorded question (WAV/FLAC/OGG at any rate) and images to the chat endpoint that fits
(`/textchat`, `/voicechat`, `/vlmschat`, `/multimodalchat`, with the original request bodies), saves the
streamed answer (headerless float32 mono at 24 kHz) as a WAV file, plays it while it arrives when a
sound device and the optional `sounddevice` package exist, and prints the transcript, the time to first
audio and the real-time factor.

Transcript side channel: the response carries `X-LLMVoX-Request-Id` and, for spoken questions,
`X-LLMVoX-Question` (the recognised question, percent-encoded UTF-8); once the audio ends,
`GET /v1/transcripts/{id}?wait=10` returns the answer text as JSON.
"""

from __future__ import annotations

import argparse
import base64
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from llmvox.cli.common import add_flag
from llmvox.codec.config import SAMPLE_RATE
from llmvox.errors import LLMVoXError

QUESTION_RATE = 16_000
ENDPOINTS = ("auto", "textchat", "voicechat", "vlmschat", "multimodalchat")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("client", help="ask a running llmvox server by text or voice, save the spoken answer",
                              description=__doc__.split("\n\n")[0])
    add_flag(p, "url", default="http://127.0.0.1:5003", help="server address (default http://127.0.0.1:5003)")
    source = p.add_mutually_exclusive_group(required=True)
    add_flag(source, "text", help="ask in text (text chat)")
    add_flag(source, "wav", metavar="AUDIO", help="ask with a recording (WAV/FLAC/OGG, any rate)")
    add_flag(p, "image", action="append", default=[], metavar="IMAGE", help="an image to talk about (repeatable)")
    add_flag(p, "out", default="answer.wav", help="where to save the spoken answer (default answer.wav)")
    add_flag(p, "endpoint", default="auto", choices=ENDPOINTS,
             help="auto: textchat for --text, voicechat for --wav, vlmschat with one image, multimodalchat with more")
    add_flag(p, "source_language", default="english", help="language of the question (default english)")
    add_flag(p, "target_language", default="english", help="language of the answer (default english)")
    add_flag(p, "api_key", default=None, help="sent as 'Authorization: Bearer KEY' when the server wants one")
    add_flag(p, "no_play", action="store_true", help="do not play the answer, only save it")
    add_flag(p, "timeout", type=float, default=300.0, help="seconds to wait for the server (default 300)")
    add_flag(p, "json", default=None, metavar="FILE", help="also write the transcript and timings as JSON")
    p.set_defaults(func=run)


@dataclass
class ChatResult:
    """What one exchange produced."""

    audio: np.ndarray
    request_id: str | None = None
    question: str | None = None
    answer: str | None = None
    time_to_first_audio: float | None = None
    total_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def audio_seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @property
    def real_time_factor(self) -> float | None:
        """Wall time of the whole exchange / duration of the answer (below 1: faster than real time)."""
        return self.total_seconds / self.audio_seconds if self.audio_seconds > 0 else None

    def summary(self) -> dict:
        return {"request_id": self.request_id, "question": self.question, "answer": self.answer,
                "time_to_first_audio_s": _round(self.time_to_first_audio), "total_s": _round(self.total_seconds),
                "audio_s": _round(self.audio_seconds), "real_time_factor": _round(self.real_time_factor)}


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 3)


def pcm16_base64(samples: np.ndarray) -> str:
    """float samples at 16 kHz -> the original's audio_base64 (int16 little-endian PCM)."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    return base64.b64encode(pcm.tobytes()).decode("ascii")


def file_base64(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise LLMVoXError(f"file not found: {path}")
    return base64.b64encode(path.read_bytes()).decode("ascii")


def build_request(*, text: str | None = None, wav: str | Path | None = None, images: list[str] | None = None,
                  endpoint: str = "auto", source_language: str = "english",
                  target_language: str = "english") -> tuple[str, dict]:
    """(path, JSON body) for the question, in the original request formats."""
    images = list(images or [])
    if (text is None) == (wav is None):
        raise LLMVoXError("give exactly one of --text or --wav")
    if endpoint == "auto":
        endpoint = "textchat" if text is not None else ("voicechat" if not images else
                                                         "vlmschat" if len(images) == 1 else "multimodalchat")
    if endpoint == "textchat":
        if text is None:
            raise LLMVoXError("/textchat takes --text, not a recording")
        if images:
            raise LLMVoXError("images need a spoken question (--wav): /vlmschat or /multimodalchat")
        return "/textchat", {"text": text}
    if wav is None:
        raise LLMVoXError(f"/{endpoint} takes a recording (--wav)")
    from llmvox.audio import load_audio

    body: dict = {"source_language": source_language, "target_language": target_language,
                  "audio_base64": pcm16_base64(load_audio(wav, target_rate=QUESTION_RATE))}
    if endpoint == "voicechat":
        if images:
            raise LLMVoXError("/voicechat takes no images; use vlmschat or multimodalchat")
    elif endpoint == "vlmschat":
        if len(images) != 1:
            raise LLMVoXError("/vlmschat takes exactly one --image")
        body["image_base64"] = file_base64(images[0])
    else:
        body["image_list"] = [file_base64(i) for i in images]
    return f"/{endpoint}", body


class _Player:
    """Plays float32 chunks as they arrive, when `sounddevice` and an output device exist."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        try:
            import sounddevice as sd

            sd.query_devices(kind="output")
            self._stream = sd.OutputStream(samplerate=SAMPLE_RATE, channels=1, dtype="float32")
        except Exception as exc:  # noqa: BLE001 - no package, no device, no audio server: just do not play
            self._stream = None
            self.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return
        self._stream.start()
        self._thread = threading.Thread(target=self._play, daemon=True)
        self._thread.start()

    @property
    def active(self) -> bool:
        return self._stream is not None

    def _play(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._stream.write(chunk.reshape(-1, 1))

    def put(self, chunk: np.ndarray) -> None:
        if self.active and chunk.size:
            self._queue.put(chunk)

    def close(self) -> None:
        if self.active:
            self._queue.put(None)
            self._thread.join()
            self._stream.stop()
            self._stream.close()


def chat(url: str, path: str, body: dict, *, api_key: str | None = None, timeout: float = 300.0,
         play: bool = False, on_chunk=None, transcript_wait: float = 10.0) -> ChatResult:
    """POST the question, read the streamed float32 answer, then fetch the transcript."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    player = _Player() if play else None
    pieces: list[np.ndarray] = []
    carry = b""
    first = None
    t0 = time.perf_counter()
    try:
        with httpx.Client(base_url=url.rstrip("/"), headers=headers,
                          timeout=httpx.Timeout(timeout, connect=10.0)) as client:
            try:
                with client.stream("POST", path, json=body) as response:
                    if response.status_code != 200:
                        raise LLMVoXError(f"server answered {response.status_code} on {path}: "
                                          f"{_error_message(response.read())}")
                    request_id = response.headers.get("x-llmvox-request-id")
                    question = response.headers.get("x-llmvox-question")
                    for data in response.iter_bytes():
                        if not data:
                            continue
                        if first is None:
                            first = time.perf_counter() - t0
                        data = carry + data
                        usable = len(data) - len(data) % 4  # a float32 may straddle two network reads
                        carry = data[usable:]
                        chunk = np.frombuffer(data[:usable], dtype="<f4").copy()
                        pieces.append(chunk)
                        if player is not None:
                            player.put(chunk)
                        if on_chunk is not None:
                            on_chunk(chunk)
                total = time.perf_counter() - t0
                answer, extra = None, {}
                if request_id:
                    extra = _transcript(client, request_id, transcript_wait)
                    answer = extra.get("answer")
                    question = extra.get("question") or (unquote(question) if question else None)
                elif question:
                    question = unquote(question)
            except httpx.HTTPError as exc:
                raise LLMVoXError(f"cannot talk to the server at {url}: {type(exc).__name__}: {exc}") from None
    finally:
        if player is not None:
            player.close()
    audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return ChatResult(audio=audio, request_id=request_id, question=question, answer=answer,
                      time_to_first_audio=first, total_seconds=total, extra=extra)


def _transcript(client, request_id: str, wait: float) -> dict:
    response = client.get(f"/v1/transcripts/{request_id}", params={"wait": wait})
    if response.status_code != 200:
        return {}
    try:
        return response.json()
    except ValueError:
        return {}


def _error_message(raw: bytes) -> str:
    """The message in the server's JSON error (FastAPI `detail` or `{"error": {"message"}}`)."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        return text[:300] or "(empty body)"
    error = payload.get("error", payload.get("detail", payload)) if isinstance(payload, dict) else payload
    if isinstance(error, dict):
        error = error.get("message", error)
    return str(error)[:300]


def run(args: argparse.Namespace) -> int:
    from llmvox.audio import save_audio

    path, body = build_request(text=args.text, wav=args.wav, images=args.image, endpoint=args.endpoint,
                               source_language=args.source_language, target_language=args.target_language)
    result = chat(args.url, path, body, api_key=args.api_key, timeout=args.timeout, play=not args.no_play)
    if result.audio.size == 0:
        raise LLMVoXError(f"the server sent no audio for {path}")
    save_audio(args.out, result.audio, SAMPLE_RATE)
    if result.question:
        print(f"question: {result.question}")
    if result.answer is not None:
        print(f"answer:   {result.answer}")
    print(f"saved {args.out}: {result.audio_seconds:.2f} s of audio; time to first audio "
          f"{result.time_to_first_audio * 1000:.0f} ms; total {result.total_seconds:.2f} s; "
          f"real-time factor {result.real_time_factor:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result.summary(), indent=2) + "\n")
    return 0
