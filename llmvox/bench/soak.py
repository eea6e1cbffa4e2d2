"""`llmvox bench soak`: a real server under a steady, mixed, seeded load for N seconds.

What a long-running server must not do is grow or fail. Clients loop over a fixed mix of what users
and careless clients send (speech in several formats and as SSE, the original `/tts`, WebSocket
sessions, clients that leave after the first chunk, chat turns, spoken questions, bad requests that
must get their 4xx) while the server's RSS is sampled once a second. An error is any answer that is
not the one expected: a 5xx, a wrong status, a connection failure, a timeout, or audio missing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmvox.bench.stream import ServerProcess

TEXTS = ["The kettle is on, so tea will be ready in five minutes.",
         "Turn left at the second light, then keep going for about 300 metres.",
         "Water boils at 100 degrees Celsius at sea level.",
         "Please remember to water the plants on Tuesday."]
QUESTIONS = ["What is the capital of France?", "Name a fruit that is yellow.", "How many legs does a spider have?"]
BAD = [  # (body bytes, content type, the status it must get)
    (b"{not json", "application/json", 400),
    (b'{"input": ""}', "application/json", 400),
    (b'{"input": "Hi.", "response_format": "xyz"}', "application/json", 400),
    (b'{"input": "Hi."}', "text/plain", 415),
]


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class _Tally:
    def __init__(self) -> None:
        self.by_kind: dict[str, Counter] = defaultdict(Counter)
        self.errors: list[str] = []
        self.error_count = 0

    def ok(self, kind: str, status: int | str) -> None:
        self.by_kind[kind][str(status)] += 1

    def fail(self, kind: str, why: str) -> None:
        self.by_kind[kind]["error"] += 1
        self.error_count += 1
        if len(self.errors) < 10:
            self.errors.append(f"{kind}: {why}"[:300])


async def _speech(client, url: str, fmt: str, sse: bool = False, leave_early: bool = False) -> int:
    body = {"input": random.choice(TEXTS), "response_format": fmt, "stream_format": "sse" if sse else "audio"}
    got = 0
    async with client.stream("POST", f"{url}/v1/audio/speech", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}")
        async for part in r.aiter_raw():
            got += len(part)
            if leave_early and got:
                return got
    if got < 1000:
        raise RuntimeError(f"only {got} bytes of audio")
    return got


async def _tts(client, url: str) -> None:
    r = await client.post(f"{url}/tts", json={"text": random.choice(TEXTS)})
    if r.status_code != 200 or len(r.content) < 4000:
        raise RuntimeError(f"HTTP {r.status_code}, {len(r.content)} bytes")


async def _websocket(url: str) -> None:
    from websockets.asyncio.client import connect

    audio = 0
    async with connect("ws" + url[len("http"):] + "/v1/stream", open_timeout=30) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        for word in random.choice(TEXTS).split():
            await ws.send(json.dumps({"type": "text", "text": word + " "}))
        await ws.send(json.dumps({"type": "end"}))
        async for message in ws:
            if isinstance(message, bytes):
                audio += len(message)
            elif json.loads(message)["type"] in ("done", "error"):
                kind = json.loads(message)["type"]
                if kind == "error":
                    raise RuntimeError(f"error event: {message[:200]}")
                break
    if audio < 1000:
        raise RuntimeError(f"only {audio} bytes of audio")


async def _chat(client, url: str, path: str, body: dict) -> None:
    got = 0
    async with client.stream("POST", f"{url}{path}", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for part in r.aiter_raw():
            got += len(part)
    if got < 1000:
        raise RuntimeError(f"only {got} bytes of audio")


async def _bad(client, url: str) -> int:
    body, content_type, want = random.choice(BAD)
    r = await client.post(f"{url}/v1/audio/speech", content=body, headers={"Content-Type": content_type})
    if r.status_code != want or "error" not in r.json():
        raise RuntimeError(f"HTTP {r.status_code}, wanted {want}")
    return r.status_code


def _mix(chat_type: str) -> list[str]:
    kinds = ["speech_wav", "speech_pcm", "speech_sse", "tts", "websocket", "leave_early", "bad"]
    if chat_type in ("text", "voice"):
        kinds.append("textchat")
    if chat_type == "voice":
        kinds.append("voicechat")
    return kinds


async def _client(index: int, url: str, chat_type: str, until: float, tally: _Tally, spoken: str | None) -> None:
    import httpx

    rng = random.Random(1000 + index)
    kinds = _mix(chat_type)
    async with httpx.AsyncClient(timeout=120) as client:
        while time.monotonic() < until:
            kind = rng.choice(kinds)
            try:
                if kind.startswith("speech_"):
                    fmt = kind.split("_", 1)[1]
                    await _speech(client, url, "wav" if fmt == "sse" else fmt, sse=fmt == "sse")
                elif kind == "leave_early":
                    await _speech(client, url, "pcm", leave_early=True)
                elif kind == "tts":
                    await _tts(client, url)
                elif kind == "websocket":
                    await _websocket(url)
                elif kind == "textchat":
                    await _chat(client, url, "/textchat", {"text": rng.choice(QUESTIONS)})
                elif kind == "voicechat":
                    await _chat(client, url, "/voicechat", {"audio_base64": spoken})
                else:
                    await _bad(client, url)
                tally.ok(kind, "ok")
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported, none stops the run
                tally.fail(kind, f"{type(exc).__name__}: {exc}")


async def _spoken_question(url: str) -> str:
    """A spoken question for /voicechat: the server's own voice reading it, as 16 kHz int16 base64."""
    import httpx
    import numpy as np

    from llmvox.audio import load_audio

    async with httpx.AsyncClient(timeout=120) as client:
        r = await client.post(f"{url}/v1/audio/speech", json={"input": QUESTIONS[0], "response_format": "wav"})
        r.raise_for_status()
    samples = load_audio(r.content, target_rate=16000)
    pcm = np.rint(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    return base64.b64encode(pcm.tobytes()).decode("ascii")


def run_soak(*, seconds: float, concurrency: int = 4, warmup: float = 30.0, chat_type: str = "voice",
             server_args: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Start `llmvox serve`, load it for `seconds`, and report RSS and errors."""
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the summary
    warmup = min(warmup, seconds / 3)
    with tempfile.TemporaryDirectory() as tmp:
        log(f"starting llmvox serve --chat_type {chat_type} ...")
        # answers of a few sentences, as a voice assistant gives, so a turn ends soon after the run does
        server = ServerProcess(["--max_streams", "16", "--llm_max_tokens", "64", *(server_args or [])],
                               Path(tmp) / "server.log",
                               chat_type=chat_type)
        try:
            return asyncio.run(_soak(server, seconds, concurrency, warmup, chat_type, log))
        finally:
            server.stop()


async def _soak(server: ServerProcess, seconds: float, concurrency: int, warmup: float, chat_type: str,
                log: Callable[[str], None]) -> dict[str, Any]:
    pid = server.proc.pid
    idle = _rss_mb(pid)
    spoken = await _spoken_question(server.url) if chat_type == "voice" else None
    tally = _Tally()
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    until = started + seconds
    clients = [asyncio.create_task(_client(i, server.url, chat_type, until, tally, spoken))
               for i in range(concurrency)]
    while time.monotonic() < until:
        await asyncio.sleep(1.0)
        rss = _rss_mb(pid)
        if rss is not None:
            samples.append((time.monotonic() - started, rss))
    await asyncio.gather(*clients)
    elapsed = time.monotonic() - started
    after_warmup = next((rss for t, rss in samples if t >= warmup), samples[0][1] if samples else None)
    end = samples[-1][1] if samples else None
    requests = sum(sum(c.values()) for c in tally.by_kind.values())
    result = {
        "seconds": round(elapsed, 1), "warmup_seconds": warmup, "concurrency": concurrency, "chat_type": chat_type,
        "cpu_count": os.cpu_count(), "requests": requests, "requests_per_second": round(requests / elapsed, 2),
        "by_kind": {k: dict(v) for k, v in sorted(tally.by_kind.items())},
        "errors": tally.error_count, "first_errors": tally.errors,
        "rss_mb": {"idle": idle, "after_warmup": after_warmup, "end": end,
                   "peak": max((rss for _, rss in samples), default=None)},
        "rss_growth_after_warmup_mb": None if end is None or after_warmup is None else round(end - after_warmup, 1),
        "rss_samples": [[round(t, 1), round(rss, 1)] for t, rss in samples],
    }
    log(f"soak: {requests} requests in {elapsed:.0f} s at concurrency {concurrency}, {tally.error_count} errors; "
        f"RSS {after_warmup:.0f} MB after warm-up -> {end:.0f} MB at the end "
        f"({result['rss_growth_after_warmup_mb']:+.1f} MB)")
    return result
