"""Streaming speed through the real server: time to first audio, real-time factor, throughput.

`run_stream_bench` starts `llmvox serve` in a subprocess (or uses a running server's URL), sends N
concurrent `/v1/audio/speech` requests (pcm) for N in `concurrency`, and times every byte:

- time to first audio: request sent -> first audio bytes received;
- real-time factor (per stream): (last byte - request sent) / seconds of audio; < 1 is faster than
  real time;
- stall: a player that starts at the first byte and waits whenever its buffer is empty; the seconds it
  waited (0 = gap-free playback);
- throughput: seconds of audio delivered per wall-clock second, all streams together.

Without a voice it builds one with random weights at the released sizes (decoder 4 x 768, 8 heads,
4096 codes; codec with the 12-layer 768-wide Vocos backbone). Random weights never say when to stop,
so every sentence is made exactly `codes_per_sentence` codes long (the server's `--max_audio_length`,
with end-of-audio switched off): the amount of work per request is fixed and known.

`llmvox.bench.chat` measures the chat endpoints the same way.
"""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmvox.codec.config import SAMPLE_RATE

BYTES_PER_SAMPLE = 2  # pcm s16le
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Streaming speech starts before the answer is complete.",
    "Every sentence alternates between two workers.",
    "Short replies should sound natural and clear.",
    "Numbers like twenty four are spoken in words.",
    "The server batches many listeners on one model.",
]


def build_random_voice(folder: str | Path, seed: int = 0) -> Path:
    """A bundle with random weights at the released model sizes (for speed measurements only)."""
    import torch

    from llmvox.api import LLMVoX
    from llmvox.bench.decoder import RELEASED, TEXT_DIM
    from llmvox.codec.config import CodecConfig
    from llmvox.codec.wavtokenizer import WavTokenizer
    from llmvox.model.gpt import GPT
    from llmvox.model.speech_decoder import SpeechDecoder
    from llmvox.text.tokenizer import TEXT_VOCAB_SIZE

    torch.manual_seed(seed)
    codec = WavTokenizer(CodecConfig()).eval()
    gpt = GPT(RELEASED).eval()
    decoder = SpeechDecoder(gpt, torch.randn(TEXT_VOCAB_SIZE, TEXT_DIM) * 0.5, codec.codebook)
    tts = LLMVoX(decoder, codec, name="random-released-size")
    return tts.save_pretrained(folder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`llmvox serve --chat_type tts` (or another chat type) in a subprocess, stopped with SIGTERM (graceful)."""

    def __init__(self, args: list[str], log_path: Path, timeout: float = 300.0, chat_type: str = "tts"):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "llmvox", "serve", "--chat_type", chat_type, "--api_host", "127.0.0.1",
               "--api_port", str(self.port), *args]
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {log_path}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not become healthy in {timeout:.0f} s; see {log_path}")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


class _Playback:
    """A listener's clock: audio plays from its first byte at `bytes_per_second`; a late byte is a stall."""

    def __init__(self, bytes_per_second: int) -> None:
        self.rate = bytes_per_second
        self.first: float | None = None
        self.received = 0
        self.stall = 0.0
        self._play_start = 0.0

    def heard(self, n_bytes: int) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = self._play_start = now
        else:
            due = self._play_start + self.received / self.rate  # the buffer runs dry at `due`
            if now > due:
                self.stall += now - due
                self._play_start += now - due
        self.received += n_bytes

    @property
    def seconds(self) -> float:
        return self.received / self.rate


async def _one_stream(client, url: str, text: str, headers: dict[str, str]) -> dict[str, Any]:
    start = time.perf_counter()
    play = _Playback(SAMPLE_RATE * BYTES_PER_SAMPLE)
    async with client.stream("POST", f"{url}/v1/audio/speech", headers=headers,
                             json={"model": "llmvox", "input": text, "voice": "default",
                                   "response_format": "pcm"}) as r:
        if r.status_code != 200:
            body = await r.aread()
            raise RuntimeError(f"HTTP {r.status_code}: {body[:300]!r}")
        async for part in r.aiter_raw():
            if part:
                play.heard(len(part))
    end = time.perf_counter()
    seconds = play.seconds
    return {"ttfa": (play.first or end) - start, "elapsed": end - start, "audio_seconds": seconds,
            "rtf": (end - start) / seconds if seconds else None, "stall_seconds": play.stall, "start": start,
            "end": end}


async def _level(url: str, n: int, text: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    import httpx

    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        return list(await asyncio.gather(*(_one_stream(client, url, text, headers) for _ in range(n))))


def _summary(n: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    ttfa = sorted(r["ttfa"] for r in runs)
    rtf = sorted(r["rtf"] for r in runs if r["rtf"] is not None)
    wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    audio = sum(r["audio_seconds"] for r in runs)
    return {
        "streams": n,
        "audio_seconds_per_stream": runs[0]["audio_seconds"],
        "ttfa_mean_s": sum(ttfa) / n,
        "ttfa_p50_s": ttfa[n // 2],
        "ttfa_max_s": ttfa[-1],
        "rtf_mean": sum(rtf) / len(rtf),
        "rtf_max": rtf[-1],
        "all_faster_than_real_time": rtf[-1] < 1.0,
        "stall_seconds_max": max(r["stall_seconds"] for r in runs),
        "throughput_audio_s_per_s": audio / wall,
        "wall_seconds": wall,
    }


def run_stream_bench(*, concurrency: tuple[int, ...] = (1, 4, 16), sentences: int = 3,
                     codes_per_sentence: int = 150, url: str | None = None, bundle: str | None = None,
                     num_workers: int = 2, threads: int | None = None, chunk_join: str = "context",
                     api_key: str | None = None, warmup: bool = True, extra_args: list[str] | None = None,
                     voice_args: list[str] | None = None,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every concurrency level; returns one JSON-ready dict (see the module docstring).

    The voice: `bundle`, else `voice_args` (server flags such as the five original model paths), else a
    random-weight voice at the released sizes.
    """
    text = " ".join(SENTENCES[i % len(SENTENCES)] for i in range(sentences))
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    result: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_before": list(os.getloadavg()),
        "sentences_per_request": sentences,
        "codes_per_sentence": codes_per_sentence if url is None else None,
        "text": text,
    }
    server = None
    tmp = tempfile.TemporaryDirectory(prefix="llmvox-bench-")
    try:
        if url is None:
            args = _voice_args(bundle, voice_args, Path(tmp.name), result, log)
            args += ["--max_audio_length", str(codes_per_sentence), "--eoa_token_id", "-1",
                    "--num_workers", str(num_workers), "--chunk_join", chunk_join,
                    "--max_streams", str(max(concurrency) + 4), "--max_queue", "64"]
            if threads:
                args += ["--threads", str(threads)]
            args += extra_args or []
            result["server_args"] = args
            log_path = Path(tmp.name) / "server.log"
            log("starting llmvox serve ...")
            server = ServerProcess(args, log_path)
            url = server.url
        result["url"] = url
        if warmup:
            asyncio.run(_level(url, 1, SENTENCES[0], headers))
        def describe(n: int, summary: dict[str, Any]) -> str:
            return (f"{n:>3} streams: first audio {summary['ttfa_p50_s'] * 1000:.0f} ms (p50), "
                    f"{summary['ttfa_max_s'] * 1000:.0f} ms (max); real-time factor {summary['rtf_mean']:.2f} "
                    f"(worst {summary['rtf_max']:.2f}); stalls up to {summary['stall_seconds_max']:.2f} s; "
                    f"{summary['throughput_audio_s_per_s']:.1f} s of audio per s")

        _measure_levels(result, concurrency, lambda n: _summary(n, asyncio.run(_level(url, n, text, headers))),
                        describe, log)
    finally:
        if server is not None:
            server.stop()
        tmp.cleanup()
    return result


def _measure_levels(result: dict[str, Any], concurrency: tuple[int, ...],
                    measure: Callable[[int], dict[str, Any]], describe: Callable[[int, dict[str, Any]], str],
                    log: Callable[[str], None]) -> None:
    """Run `measure` at every concurrency level, noting the machine's load before each; fills `result`."""
    levels = []
    for n in concurrency:
        load = os.getloadavg()[0]
        summary = measure(n)
        summary["load_average_1min"] = load
        levels.append(summary)
        log(f"{describe(n, summary)}; load {load:.1f}")
    result["levels"] = levels
    result["load_average_after"] = list(os.getloadavg())


def _voice_args(bundle: str | None, voice_args: list[str] | None, tmp: Path, result: dict[str, Any],
                log: Callable[[str], None]) -> list[str]:
    """The server flags that name the voice, building the random released-size one when none is given."""
    if bundle is not None:
        result["voice"] = bundle
        return ["--bundle", bundle]
    if voice_args:
        result["voice"] = " ".join(voice_args)
        return list(voice_args)
    log("building a random-weight voice at the released sizes ...")
    voice = str(build_random_voice(tmp / "voice"))
    result["voice"] = "random weights, released sizes (decoder 4x768, codec 12x768 Vocos)"
    return ["--bundle", voice]


def markdown_table(result: dict[str, Any]) -> str:
    """The README table for a result."""
    rows = ["| streams | first audio p50 / max (ms) | real-time factor mean / worst | stalls max (s) "
            "| audio s per s | load avg |", "| --- | --- | --- | --- | --- | --- |"]
    for lv in result["levels"]:
        rows.append(f"| {lv['streams']} | {lv['ttfa_p50_s'] * 1000:.0f} / {lv['ttfa_max_s'] * 1000:.0f} "
                    f"| {lv['rtf_mean']:.2f} / {lv['rtf_max']:.2f} | {lv['stall_seconds_max']:.2f} "
                    f"| {lv['throughput_audio_s_per_s']:.1f} | {lv['load_average_1min']:.1f} |")
    return "\n".join(rows)
