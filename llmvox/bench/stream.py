"""Streaming speed through the real server: time to first audio, real-time factor, throughput.

`run_stream_bench` starts `llmvox serve` in a subprocess (or uses a running server's URL), sends N
concurrent `/v1/audio/speech` requests (pcm) for N in `concurrency`, and times every byte:

- time to first audio: request sent -> first audio bytes received;
- real-time factor (per stream): (last byte - request sent) / seconds of audio; < 1 is faster than
  real time;
- stalls: a player that starts at the first byte and waits whenever its buffer is empty
  (`llmvox.engine.playout.PlayoutClock`, the server's and the engine's definition too): per stream the
  gaps and the seconds it waited (0 = gap-free playback), and their p50 / p95 / max across streams;
- how much a stream's audio changes with the load: its SNR against the same request served alone
  (the first level), since the adaptive chunk policy moves chunk boundaries and so the joins;
- throughput: seconds of audio delivered per wall-clock second, all streams together.

Without a voice it builds one with random weights at the released sizes (decoder 4 x 768, 8 heads,
4096 codes; codec with the 12-layer 768-wide Vocos backbone). Random weights never say when to stop,
so every sentence is made exactly `codes_per_sentence` codes long (the server's `--max_audio_length`,
with end-of-audio switched off): the amount of work per request is fixed and known.

With several chunk policies (`chunk_policies=("adaptive", "fixed")`) it starts one server per policy and
measures them level by level, one after the other, so both see the same machine load (an A/B).

`llmvox.bench.chat` measures the chat endpoints the same way.
"""

from __future__ import annotations

import asyncio
import math
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

import numpy as np

from llmvox.codec.config import SAMPLE_RATE
from llmvox.engine.playout import PlayoutClock

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


def worker_args(num_workers: int | None) -> list[str]:
    """The server's `--num_workers` flag, or none: the server's own default (llmvox.device.default_workers)."""
    return [] if num_workers is None else ["--num_workers", str(num_workers)]


_Playback = PlayoutClock  # a listener's clock over bytes (llmvox.bench.chat uses it too)
FRAME_RATE = 75  # codes per second of audio


async def _one_stream(client, url: str, text: str, headers: dict[str, str]) -> dict[str, Any]:
    start = time.perf_counter()
    play = _Playback(SAMPLE_RATE * BYTES_PER_SAMPLE)
    audio = bytearray()
    async with client.stream("POST", f"{url}/v1/audio/speech", headers=headers,
                             json={"model": "llmvox", "input": text, "voice": "default",
                                   "response_format": "pcm"}) as r:
        if r.status_code != 200:
            body = await r.aread()
            raise RuntimeError(f"HTTP {r.status_code}: {body[:300]!r}")
        async for part in r.aiter_raw():
            if part:
                play.heard(len(part))
                audio += part
    end = time.perf_counter()
    seconds = play.seconds
    return {"ttfa": (play.first or end) - start, "elapsed": end - start, "audio_seconds": seconds,
            "rtf": (end - start) / seconds if seconds else None, "stall_seconds": play.stall, "gaps": play.gaps,
            "start": start, "end": end, "audio": bytes(audio)}


async def _level(url: str, n: int, text: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    import httpx

    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        return list(await asyncio.gather(*(_one_stream(client, url, text, headers) for _ in range(n))))


def _pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of a sorted list; q=0.5 is the existing p50 (index n // 2)."""
    return values[len(values) // 2] if q == 0.5 else values[max(0, math.ceil(q * len(values)) - 1)]


def snr_db(audio: bytes, ref: bytes) -> float | None:
    """SNR (dB) of pcm s16 `audio` against `ref` over their common length; None when identical."""
    n = min(len(audio), len(ref)) // BYTES_PER_SAMPLE
    x = np.frombuffer(audio[:n * BYTES_PER_SAMPLE], np.int16).astype(np.float64)
    r = np.frombuffer(ref[:n * BYTES_PER_SAMPLE], np.int16).astype(np.float64)
    noise = float(np.sum((x - r) ** 2))
    return None if noise == 0 and len(audio) == len(ref) else 10 * math.log10(max(float(np.sum(r ** 2)), 1.0)
                                                                               / max(noise, 1.0))


def _stall_summary(runs: list[dict[str, Any]], solo: bytes | None) -> dict[str, Any]:
    """Gaps and stalled seconds per stream and across streams; the audio's SNR against `solo`."""
    gaps = sorted(r["gaps"] for r in runs)
    stall = sorted(r["stall_seconds"] for r in runs)
    out: dict[str, Any] = {
        "gaps_p50": _pct(gaps, 0.5), "gaps_p95": _pct(gaps, 0.95), "gaps_max": gaps[-1], "gaps_total": sum(gaps),
        "streams_with_gaps": sum(g > 0 for g in gaps),
        "stall_seconds_p50": _pct(stall, 0.5), "stall_seconds_p95": _pct(stall, 0.95),
        "stall_seconds_total": sum(stall),
        "per_stream": [{"gaps": r["gaps"], "stall_seconds": r["stall_seconds"], "ttfa_s": r["ttfa"]} for r in runs],
    }
    if solo is not None:
        snrs = [snr_db(r["audio"], solo) for r in runs]
        differ = sorted(x for x in snrs if x is not None)
        out.update({"identical_to_solo": len(snrs) - len(differ),
                    "snr_vs_solo_db_min": differ[0] if differ else None,
                    "snr_vs_solo_db_p50": _pct(differ, 0.5) if differ else None})
    return out


def _summary(n: int, runs: list[dict[str, Any]], solo: bytes | None = None) -> dict[str, Any]:
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
        # the bound on gap-free playback: codes per second all streams got vs what real time needs
        "codes_per_s_delivered": audio * FRAME_RATE / wall,
        "codes_per_s_needed": n * FRAME_RATE,
        **_stall_summary(runs, solo),
    }


def run_stream_bench(*, concurrency: tuple[int, ...] = (1, 4, 16), sentences: int = 3,
                     codes_per_sentence: int = 150, url: str | None = None, bundle: str | None = None,
                     num_workers: int | None = None, threads: int | None = None, chunk_join: str = "context",
                     api_key: str | None = None, warmup: bool = True, extra_args: list[str] | None = None,
                     voice_args: list[str] | None = None, chunk_policies: tuple[str, ...] = ("adaptive",),
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every concurrency level; returns one JSON-ready dict (see the module docstring).

    The voice: `bundle`, else `voice_args` (server flags such as the five original model paths), else a
    random-weight voice at the released sizes. `chunk_policies`: one server each (`--chunk_policy`),
    measured in turn at every level; "levels" holds the first one's, "by_policy" all of them. With
    `url` the running server's own policy is measured (reported as "server").
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
    servers: dict[str, ServerProcess] = {}
    tmp = tempfile.TemporaryDirectory(prefix="llmvox-bench-")
    try:
        if url is None:
            args = _voice_args(bundle, voice_args, Path(tmp.name), result, log)
            args += ["--max_audio_length", str(codes_per_sentence), "--eoa_token_id", "-1",
                    *worker_args(num_workers), "--chunk_join", chunk_join,
                    "--max_streams", str(max(concurrency) + 4), "--max_queue", "64"]
            if threads:
                args += ["--threads", str(threads)]
            args += extra_args or []
            result["server_args"] = args
            for policy in chunk_policies:
                log(f"starting llmvox serve --chunk_policy {policy} ...")
                servers[policy] = ServerProcess([*args, "--chunk_policy", policy],
                                                Path(tmp.name) / f"server-{policy}.log")
            urls = {policy: server.url for policy, server in servers.items()}
        else:
            urls = {"server": url}
        result["url"] = next(iter(urls.values()))
        result["chunk_policies"] = list(urls)
        if warmup:
            for u in urls.values():
                asyncio.run(_level(u, 1, SENTENCES[0], headers))
        _measure_policies(result, concurrency, urls, text, headers, log)
    finally:
        for server in servers.values():
            server.stop()
        tmp.cleanup()
    return result


def _describe(n: int, summary: dict[str, Any]) -> str:
    return (f"{n:>3} streams: first audio {summary['ttfa_p50_s'] * 1000:.0f} ms (p50), "
            f"{summary['ttfa_max_s'] * 1000:.0f} ms (max); real-time factor {summary['rtf_mean']:.2f} "
            f"(worst {summary['rtf_max']:.2f}); gaps p50/p95/max {summary['gaps_p50']}/{summary['gaps_p95']}/"
            f"{summary['gaps_max']}, stalled p50/p95/max {summary['stall_seconds_p50']:.2f}/"
            f"{summary['stall_seconds_p95']:.2f}/{summary['stall_seconds_max']:.2f} s; "
            f"{summary['throughput_audio_s_per_s']:.1f} s of audio per s")


def _measure_policies(result: dict[str, Any], concurrency: tuple[int, ...], urls: dict[str, str], text: str,
                      headers: dict[str, str], log: Callable[[str], None]) -> None:
    """Every level for every policy, one after the other (the first one goes second at every other
    level, so that neither always runs on the machine the other just warmed or loaded)."""
    by_policy: dict[str, list[dict[str, Any]]] = {p: [] for p in urls}
    solo: dict[str, bytes] = {}
    for i, n in enumerate(concurrency):
        for policy, u in list(urls.items())[::-1 if i % 2 else 1]:
            load = os.getloadavg()[0]
            before = _decoder_counters(u, headers)
            runs = asyncio.run(_level(u, n, text, headers))
            summary = _summary(n, runs, solo.setdefault(policy, runs[0]["audio"]))
            summary.update(_decoder_rates(before, _decoder_counters(u, headers), summary["wall_seconds"]))
            summary["load_average_1min"] = load
            summary["chunk_policy"] = policy
            by_policy[policy].append(summary)
            log(f"[{policy}] {_describe(n, summary)}; load {load:.1f}")
    result["levels"] = by_policy[next(iter(urls))]
    result["by_policy"] = by_policy
    result["load_average_after"] = list(os.getloadavg())


def _decoder_counters(url: str, headers: dict[str, str]) -> dict[str, float] | None:
    """The server's decoder step and code counters, all workers together (None: /metrics unreadable)."""
    import httpx

    try:
        r = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    totals = {"steps": 0.0, "codes": 0.0, "workers": 0.0}
    for line in r.text.splitlines():
        if line.startswith("llmvox_decoder_steps_total{"):
            totals["steps"] += float(line.rsplit(" ", 1)[1])
            totals["workers"] += 1
        elif line.startswith("llmvox_decoder_tokens_total{"):
            totals["codes"] += float(line.rsplit(" ", 1)[1])
    return totals


def _decoder_rates(before: dict[str, float] | None, after: dict[str, float] | None, wall: float) -> dict[str, Any]:
    """What the decoders did during a level: codes/s made (all streams), batched steps/s per worker
    (= codes/s one stream gets from a busy worker)."""
    if before is None or after is None or wall <= 0 or not after["workers"]:
        return {"decoder_codes_per_s": None, "decoder_steps_per_s_per_worker": None}
    return {"decoder_codes_per_s": (after["codes"] - before["codes"]) / wall,
            "decoder_steps_per_s_per_worker": (after["steps"] - before["steps"]) / wall / after["workers"]}


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
    """The README table for a result (every policy measured, level by level)."""
    rows = ["| streams | chunk policy | first audio p50 / max (ms) | real-time factor mean / worst "
            "| gaps per stream p50 / p95 / max | stalled s per stream p50 / p95 / max | audio s per s "
            "| codes/s delivered / needed | load avg |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    by_policy = result.get("by_policy") or {"-": result["levels"]}
    levels = sorted((lv for lvs in by_policy.values() for lv in lvs), key=lambda lv: lv["streams"])
    for lv in levels:
        rows.append(f"| {lv['streams']} | {lv.get('chunk_policy', '-')} "
                    f"| {lv['ttfa_p50_s'] * 1000:.0f} / {lv['ttfa_max_s'] * 1000:.0f} "
                    f"| {lv['rtf_mean']:.2f} / {lv['rtf_max']:.2f} "
                    f"| {lv['gaps_p50']} / {lv['gaps_p95']} / {lv['gaps_max']} "
                    f"| {lv['stall_seconds_p50']:.2f} / {lv['stall_seconds_p95']:.2f} / {lv['stall_seconds_max']:.2f} "
                    f"| {lv['throughput_audio_s_per_s']:.1f} "
                    f"| {lv['codes_per_s_delivered']:.0f} / {lv['codes_per_s_needed']} "
                    f"| {lv['load_average_1min']:.1f} |")
    return "\n".join(rows)
