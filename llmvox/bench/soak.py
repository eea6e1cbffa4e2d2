"""`llmvox bench soak`: a real server under a steady, mixed, seeded load for N seconds.

What a long-running server must not do is grow or fail. `run_soak` starts `llmvox serve` on a free
loopback port and keeps `concurrency` clients looping over a fixed mix of what users and careless clients
send: speech as wav, pcm and SSE, the original `/tts`, WebSocket sessions (deltas, flush, end), clients
that leave after the first audio chunk, chat turns (text, and spoken questions made from the server's own
speech), and bad requests that must get their 4xx. The server's RSS is sampled once a second; growth is
measured from the end of the warm-up (caches, allocator pools and first-call paths fill there) to the end,
each the median of RSS_WINDOW samples, and as a least-squares slope over everything after the warm-up.

An error is an answer other than the one expected: a wrong status (any 5xx among them), a connection
failure, a timeout, or audio missing or malformed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import platform
import random
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmvox.bench.chat import _chat_turn
from llmvox.bench.stream import ServerProcess
from llmvox.codec.config import SAMPLE_RATE

REQUEST_TIMEOUT = 120.0  # seconds: longer than any answer of the mix takes, so a hang is an error
WARMUP_FRACTION = 1 / 3  # the warm-up never takes more of a short run than this
MIN_AUDIO_SECONDS = 0.2  # less than this for a sentence is "audio missing"
RSS_WINDOW = 5  # samples (seconds) whose median is the RSS "after warm-up" and "at the end"
TEXTS = [
    "The kettle is on, so tea will be ready in five minutes.",
    "Turn left at the second light, then keep going for about 300 metres.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Please remember to water the plants on Tuesday.",
]
QUESTIONS = ["What is the capital of France?", "Name a fruit that is yellow.", "How many legs does a spider have?"]
# (path, body bytes, content type, the status it must get)
BAD = [
    ("/v1/audio/speech", b'{"input": "Hi.", "response_format": "wav"', "application/json", 400),  # bad JSON
    ("/v1/audio/speech", b'{"input": "   "}', "application/json", 400),  # empty input
    ("/v1/audio/speech", b'{"input": "Hi.", "response_format": "xyz"}', "application/json", 400),  # unknown format
    ("/v1/audio/speech", b'{"input": "Hi.", "stream_format": "ogg"}', "application/json", 400),
    ("/v1/audio/speech", b'{"input": "Hi."}', "text/plain", 415),
    ("/v1/audio/speech", b"{}", "application/json", 400),  # missing field
    ("/tts", b'{"text": 5}', "application/json", 422),
    ("/tts", b'{"text": ""}', "application/json", 400),
]
# kind -> weight in the mix; chat kinds only where the server has them
MIX = {"speech_wav": 2, "speech_pcm": 2, "speech_sse": 1, "tts": 1, "websocket": 2, "leave_early": 1, "bad": 2,
       "textchat": 2, "voicechat": 2}
CHAT_KINDS = {"textchat": ("text", "voice"), "voicechat": ("voice",)}


class Unexpected(Exception):
    """A wrong answer: `status` is what the server said (None when it said nothing usable)."""

    def __init__(self, message: str, status: int | str | None = None) -> None:
        super().__init__(message)
        self.status = status


def mix_for(chat_type: str) -> dict[str, int]:
    """The request kinds (and weights) a server of this chat type must answer."""
    return {k: w for k, w in MIX.items() if k not in CHAT_KINDS or chat_type in CHAT_KINDS[k]}


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS (MB) and thread count of a live process, from /proc; {} once it is gone."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_mb"] = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
        out["open_fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return out


class Tally:
    """Requests by kind and status, and the errors (all counted, the first few kept verbatim)."""

    KEEP = 10

    def __init__(self) -> None:
        self.status: dict[str, Counter] = {}
        self.errors: dict[str, int] = {}
        self.first_errors: list[str] = []

    def count(self, kind: str, status: int | str) -> None:
        self.status.setdefault(kind, Counter())[str(status)] += 1
        self.errors.setdefault(kind, 0)

    def fail(self, kind: str, status: int | str | None, why: str) -> None:
        self.count(kind, status if status is not None else "no_answer")
        self.errors[kind] += 1
        if len(self.first_errors) < self.KEEP:
            self.first_errors.append(f"{kind}: {why}"[:300])

    @property
    def requests(self) -> int:
        return sum(sum(c.values()) for c in self.status.values())

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def by_kind(self) -> dict[str, Any]:
        return {k: {"requests": sum(c.values()), "errors": self.errors[k], "status": dict(sorted(c.items()))}
                for k, c in sorted(self.status.items())}


# ---- one request of each kind: returns the status, raises Unexpected on a wrong answer -------------
async def _speech(client, url: str, body: dict[str, Any], min_bytes: int, leave_early: bool = False) -> int:
    """POST /v1/audio/speech and read the audio (or only its first piece, then hang up)."""
    data = bytearray()
    async with client.stream("POST", f"{url}/v1/audio/speech", json=body) as r:
        if r.status_code != 200:
            raise Unexpected(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}", r.status_code)
        async for part in r.aiter_raw():
            data += part
            if leave_early and data:
                return r.status_code  # leaving the block closes the connection mid-stream
    if body.get("stream_format") == "sse":
        _check_sse(bytes(data), min_bytes)
    elif len(data) < min_bytes:
        raise Unexpected(f"only {len(data)} bytes of {body['response_format']} audio", r.status_code)
    elif body["response_format"] == "wav" and data[:4] != b"RIFF":
        raise Unexpected(f"wav answer starts with {bytes(data[:4])!r}", r.status_code)
    return r.status_code


def _check_sse(data: bytes, min_bytes: int) -> None:
    """OpenAI's speech SSE: base64 audio deltas, then one `speech.audio.done`."""
    audio, done = 0, False
    for line in data.decode().splitlines():
        if not line.startswith("data: "):
            continue
        event = json.loads(line[6:])
        if event.get("type") == "speech.audio.delta":
            audio += len(base64.b64decode(event["audio"]))
        elif event.get("type") == "speech.audio.done":
            done = True
    if not done or audio < min_bytes:
        raise Unexpected(f"SSE: {audio} audio bytes, done event {'seen' if done else 'missing'}", 200)


async def _tts(client, url: str, text: str, min_bytes: int) -> int:
    r = await client.post(f"{url}/tts", json={"text": text})
    if r.status_code != 200 or len(r.content) < min_bytes or len(r.content) % 4:
        raise Unexpected(f"HTTP {r.status_code}, {len(r.content)} bytes of float32", r.status_code)
    return r.status_code


async def _websocket(url: str, text: str, rng: random.Random, min_bytes: int) -> int:
    """A session as an LLM client runs it: deltas of a few characters, a flush, more text, end; until done."""
    from websockets.asyncio.client import connect

    audio = 0
    first, second = text, rng.choice(TEXTS)
    async with asyncio.timeout(REQUEST_TIMEOUT), connect("ws" + url[4:] + "/v1/stream", open_timeout=30,
                                                         max_size=None) as ws:
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            raise Unexpected(f"first message {ready}", 101)
        for part in (first, second):
            cuts = sorted(rng.sample(range(1, len(part)), 4))
            for a, b in zip([0, *cuts], [*cuts, len(part)], strict=True):
                await ws.send(json.dumps({"type": "text", "text": part[a:b]}))
            if part is first:
                await ws.send(json.dumps({"type": "flush"}))
        await ws.send(json.dumps({"type": "end"}))
        flushed = done = None
        async for message in ws:
            if isinstance(message, bytes):
                audio += len(message)
                continue
            event = json.loads(message)
            if event["type"] == "error":
                raise Unexpected(f"error event {message[:200]}", 101)
            if event["type"] == "flushed":
                flushed = event
            elif event["type"] == "done":
                done = event
                break
    if flushed is None or done is None or audio < 2 * min_bytes:
        raise Unexpected(f"{audio} bytes of audio; flushed {flushed}, done {done}", 101)
    return 101


async def _chat(client, url: str, chat_type: str, question: str, audio_b64: str | None) -> int:
    try:
        turn = await _chat_turn(client, url, chat_type, question, audio_b64, {})
    except RuntimeError as exc:  # _chat_turn's "…: HTTP 503: …"
        status = re.search(r"HTTP (\d{3})", str(exc))
        raise Unexpected(str(exc), int(status.group(1)) if status else None) from None
    if turn["audio_seconds"] < MIN_AUDIO_SECONDS or not (turn["answer"] or "").strip():
        raise Unexpected(f"{turn['audio_seconds']:.2f} s of audio, answer {turn['answer']!r}", 200)
    if chat_type == "voice" and not (turn["heard"] or "").strip():
        raise Unexpected("the spoken question was heard as nothing", 200)
    return 200


async def _bad(client, url: str, rng: random.Random) -> int:
    path, body, content_type, want = rng.choice(BAD)
    r = await client.post(f"{url}{path}", content=body, headers={"Content-Type": content_type})
    try:
        shaped = "message" in r.json()["error"]
    except (ValueError, KeyError, TypeError):
        shaped = False
    if r.status_code != want or not shaped:
        raise Unexpected(f"{path} {body[:40]!r}: HTTP {r.status_code} {r.content[:120]!r}, wanted {want}",
                         r.status_code)
    return r.status_code


async def _client(index: int, url: str, chat_type: str, seed: int, until: float, tally: Tally,
                  spoken: list[str]) -> None:
    """One client: seeded picks from the mix, one request after another, until `until`."""
    import httpx

    rng = random.Random(seed * 1000 + index)
    mix = mix_for(chat_type)
    kinds, weights = list(mix), list(mix.values())
    sec = SAMPLE_RATE * MIN_AUDIO_SECONDS  # samples of the shortest acceptable answer
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as client:
        while time.monotonic() < until:
            kind = rng.choices(kinds, weights)[0]
            text = rng.choice(TEXTS)
            try:
                if kind == "speech_wav":
                    status = await _speech(client, url, {"input": text, "response_format": "wav"}, int(sec * 2) + 44)
                elif kind == "speech_pcm":
                    status = await _speech(client, url, {"input": text, "response_format": "pcm"}, int(sec * 2))
                elif kind == "speech_sse":
                    status = await _speech(client, url, {"input": text, "response_format": "pcm",
                                                         "stream_format": "sse"}, int(sec * 2))
                elif kind == "leave_early":
                    status = await _speech(client, url, {"input": text, "response_format": "pcm"}, 1,
                                           leave_early=True)
                elif kind == "tts":
                    status = await _tts(client, url, text, int(sec * 4))
                elif kind == "websocket":
                    status = await _websocket(url, text, rng, int(sec * 2))
                elif kind in ("textchat", "voicechat"):
                    q = rng.randrange(len(QUESTIONS))
                    status = await _chat(client, url, "voice" if kind == "voicechat" else "text", QUESTIONS[q],
                                         spoken[q] if kind == "voicechat" else None)
                else:
                    status = await _bad(client, url, rng)
                tally.count(kind, status)
            except Unexpected as exc:
                tally.fail(kind, exc.status, str(exc))
            except Exception as exc:  # noqa: BLE001 - connection errors, timeouts: counted, the run goes on
                status = getattr(getattr(exc, "response", None), "status_code", None)  # websockets' refusals
                tally.fail(kind, status or type(exc).__name__, f"{type(exc).__name__}: {exc}")


async def spoken_questions(url: str) -> list[str]:
    """QUESTIONS in the server's own voice (its /v1/audio/speech wav), as /voicechat wants them: int16 PCM at
    16 kHz, base64 (made as `llmvox.bench.stream.spoken_questions` makes the teacher's)."""
    import io

    import httpx
    import numpy as np
    import soundfile as sf

    from llmvox.audio import resample

    out = []
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as client:
        for question in QUESTIONS:
            r = await client.post(f"{url}/v1/audio/speech", json={"input": question, "response_format": "wav"})
            r.raise_for_status()
            audio, rate = sf.read(io.BytesIO(r.content), dtype="float32")
            pcm = np.rint(np.clip(resample(audio, rate, 16000), -1.0, 1.0) * 32767.0).astype("<i2")
            out.append(base64.b64encode(pcm.tobytes()).decode("ascii"))
    return out


async def _settle(url: str, seconds: float = 15.0) -> dict[str, Any]:
    """/health once the load has stopped: every stream slot should be free again within `seconds`."""
    import httpx

    health: dict[str, Any] = {}
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < deadline:
            health = (await client.get(f"{url}/health")).json()
            if health.get("active_streams") == 0 and health.get("queued_requests") == 0:
                break
            await asyncio.sleep(0.5)
    return health


def rss_trend(samples: list[tuple[float, float]], warmup: float) -> tuple[float | None, float | None, float | None]:
    """RSS after the warm-up, at the end (medians of RSS_WINDOW samples each: a request's buffers come and go
    within a second or two, a leak stays) and the least-squares slope after the warm-up, in MB per minute."""
    import statistics

    if not samples:
        return None, None, None
    kept = [(t, mb) for t, mb in samples if t >= warmup] or samples[-1:]
    after = statistics.median(mb for _, mb in kept[:RSS_WINDOW])
    end = statistics.median(mb for _, mb in samples[-RSS_WINDOW:])
    slope = None
    if len(kept) >= 10:
        t0 = statistics.fmean(t for t, _ in kept)
        m0 = statistics.fmean(mb for _, mb in kept)
        var = sum((t - t0) ** 2 for t, _ in kept)
        slope = round(60 * sum((t - t0) * (mb - m0) for t, mb in kept) / var, 2) if var else None
    return after, end, slope


async def _load(server: ServerProcess, seconds: float, concurrency: int, warmup: float, chat_type: str,
                seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    pid = server.proc.pid
    spoken = await spoken_questions(server.url) if chat_type == "voice" else []
    start = proc_status(pid)  # idle, models loaded (and the questions spoken: first calls made)
    tally = Tally()
    samples: list[tuple[float, dict[str, float]]] = []
    started = time.monotonic()
    until = started + seconds
    log(f"load: {concurrency} clients for {seconds:g} s (warm-up {warmup:.1f} s), RSS {start.get('rss_mb', 0):.0f} MB")
    clients = asyncio.gather(*(_client(i, server.url, chat_type, seed, until, tally, spoken)
                               for i in range(concurrency)))
    tick = 0
    while not clients.done():
        tick += 1
        await asyncio.wait([clients], timeout=max(0.0, started + tick - time.monotonic()))
        if time.monotonic() <= until + 0.5 and (status := proc_status(pid)):
            samples.append((time.monotonic() - started, status))
    await clients
    elapsed = time.monotonic() - started
    health = await _settle(server.url)
    after = proc_status(pid)
    if health.get("active_streams") or health.get("queued_requests"):  # a slot that leaked
        tally.first_errors.append(f"health: {health.get('active_streams')} streams active and "
                                  f"{health.get('queued_requests')} queued 15 s after the load stopped")
    rss = [(t, s["rss_mb"]) for t, s in samples if "rss_mb" in s]
    after_warmup, end, slope = rss_trend(rss, warmup)
    growth = None if end is None or after_warmup is None else round(end - after_warmup, 1)
    requests = tally.requests
    leaked = int(bool(health.get("active_streams") or health.get("queued_requests")))
    r1 = lambda v: None if v is None else round(v, 1)  # noqa: E731
    return {
        "seconds": seconds,
        "elapsed_seconds": round(elapsed, 1),
        "warmup_seconds": round(warmup, 1),
        "concurrency": concurrency,
        "chat_type": chat_type,
        "seed": seed,
        "mix": mix_for(chat_type),
        "requests": requests,
        "requests_per_second": round(requests / elapsed, 2),
        "by_kind": tally.by_kind(),
        "errors": {"count": tally.error_count + leaked, "first": tally.first_errors},
        "rss_mb": {"start": r1(start.get("rss_mb")), "after_warmup": r1(after_warmup), "end": r1(end),
                   "peak": r1(max((mb for _, mb in rss), default=None)), "after_load": r1(after.get("rss_mb"))},
        "rss_growth_after_warmup_mb": growth,
        "rss_slope_after_warmup_mb_per_minute": slope,
        "rss_window_samples": RSS_WINDOW,
        "rss_samples": [[round(t, 1), round(mb, 1)] for t, mb in rss],
        "server_threads": {"start": start.get("threads"), "end": samples[-1][1].get("threads") if samples else None,
                           "after_load": after.get("threads")},
        "server_open_fds": {"start": start.get("open_fds"), "after_load": after.get("open_fds")},
        "health_after_load": {k: health.get(k) for k in ("status", "active_streams", "queued_requests")},
    }


def run_soak(*, seconds: float, concurrency: int = 4, warmup: float = 30.0, chat_type: str = "voice",
             seed: int = 0, voice_args: list[str] | None = None, server_args: list[str] | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Start `llmvox serve --chat_type chat_type`, load it for `seconds`, report RSS and errors (JSON-ready).

    `voice_args`: the server flags naming the voice (none: the embedded one). Chat servers answer with the
    embedded SmolLM2, greedy and at most 64 tokens, so a turn's length is bounded and runs repeat; voice
    chat hears with the embedded Whisper base. `warmup` is clamped to a third of `seconds`.
    """
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the summary
    warmup = min(warmup, seconds * WARMUP_FRACTION)
    args = [*(voice_args or []), "--max_streams", str(max(16, concurrency + 4)), "--queue_timeout", "60"]
    if chat_type != "tts":
        args += ["--llm_max_tokens", "64", "--llm_temperature", "0"]
    if chat_type == "voice":
        args += ["--asr_model", "base"]
    args += server_args or []
    machine = {"cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
               "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="llmvox-soak-") as tmp:
        log(f"starting llmvox serve --chat_type {chat_type} {' '.join(args)} ...")
        server = ServerProcess(args, Path(tmp) / "server.log", chat_type=chat_type)
        try:
            result = asyncio.run(_load(server, seconds, concurrency, warmup, chat_type, seed, log))
        finally:
            server.stop()
            exit_code = server.proc.returncode
            log_tail = (Path(tmp) / "server.log").read_text(errors="replace").splitlines()[-5:]
    machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result.update(server_args=["--chat_type", chat_type, *args], server_exit_code=exit_code, machine=machine)
    if exit_code not in (0, None):  # a graceful stop is 0
        result["errors"]["count"] += 1
        result["errors"]["first"].append(f"server exit code {exit_code}: {' | '.join(log_tail)}"[:300])
    return result


def summary_line(result: dict[str, Any]) -> str:
    """One line for the terminal."""
    rss = result["rss_mb"]
    growth = result["rss_growth_after_warmup_mb"]
    slope = result["rss_slope_after_warmup_mb_per_minute"]
    return (f"soak {result['chat_type']}: {result['requests']} requests in {result['elapsed_seconds']:.0f} s "
            f"({result['requests_per_second']:.2f}/s, {result['concurrency']} clients), "
            f"{result['errors']['count']} errors; RSS {rss['start']} MB idle, {rss['after_warmup']} MB after warm-up, "
            f"{rss['end']} MB at the end (peak {rss['peak']}), growth after warm-up "
            f"{'-' if growth is None else f'{growth:+.1f}'} MB"
            + ("" if slope is None else f" ({slope:+.1f} MB/min trend)"))
