"""Chat speed through the real server (`llmvox bench stream --llm ...`): the server runs with its
chat LLM (the embedded SmolLM2 unless told otherwise) and, for voice chat, the embedded Whisper base;
clients send text questions to `/textchat` or questions spoken by the hibari teacher to `/voicechat`, and
each turn's ASR and LLM first-token times come from the transcript side channel (`/v1/transcripts`).
"""

from __future__ import annotations

import asyncio
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmvox.bench.stream import ServerProcess, _measure_levels, _Playback, _voice_args, worker_args
from llmvox.codec.config import SAMPLE_RATE

CHAT_SAMPLE_BYTES = 4  # the chat endpoints stream float32 24 kHz
QUESTIONS = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "How do plants make their food?",
    "What is a good way to learn a new language?",
    "Why do we need sleep?",
    "How far away is the moon?",
]


def spoken_questions(questions: list[str]) -> list[str]:
    """Each question spoken by the hibari teacher, as the original /voicechat wants it: base64 int16 PCM
    at 16 kHz. Made before the server starts, so the teacher's own time is never measured."""
    import base64

    import numpy as np

    from llmvox.audio import resample
    from llmvox.train.teachers import HibariTeacher

    teacher = HibariTeacher(threads=1)
    out = []
    for question in questions:
        audio, rate = teacher.speak(question)
        pcm = np.rint(np.clip(resample(audio, rate, 16000), -1.0, 1.0) * 32767.0).astype("<i2")
        out.append(base64.b64encode(pcm.tobytes()).decode("ascii"))
    return out


async def _chat_turn(client, url: str, chat_type: str, question: str, audio_b64: str | None,
                     headers: dict[str, str]) -> dict[str, Any]:
    """One chat turn: stream the spoken answer, then read its timings from the transcript side channel."""
    from urllib.parse import unquote

    if chat_type == "voice":
        path, body = "/voicechat", {"source_language": "english", "target_language": "english",
                                    "audio_base64": audio_b64}
    else:
        path, body = "/textchat", {"text": question}
    start = time.perf_counter()
    play = _Playback(SAMPLE_RATE * CHAT_SAMPLE_BYTES)
    async with client.stream("POST", f"{url}{path}", headers=headers, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        turn_id = r.headers.get("X-LLMVoX-Request-Id")
        heard = unquote(r.headers.get("X-LLMVoX-Question", ""))
        # the side channel answers a waiting GET when the answer text is complete: when the LLM finished
        written = asyncio.ensure_future(_transcript_when_done(client, url, turn_id, headers)) if turn_id else None
        async for part in r.aiter_raw():
            if part:
                play.heard(len(part))
    end = time.perf_counter()
    transcript, written_at = await written if written is not None else ({}, None)
    seconds = play.seconds
    asr = float(transcript.get("asr_seconds") or 0.0)
    first_token = transcript.get("first_token_seconds")
    return {
        "question": question,
        "heard": (transcript.get("question") or heard or None) if chat_type == "voice" else None,
        "answer": transcript.get("answer"),
        "ttfa_s": (play.first or end) - start,
        "asr_s": asr,
        # the server times ASR and the LLM's first token from one start: the LLM's share is the rest
        "llm_first_token_s": None if first_token is None else max(0.0, float(first_token) - asr),
        "answer_written_s": None if written_at is None else written_at - start,
        "total_s": end - start,
        "audio_seconds": seconds,
        "rtf": (end - start) / seconds if seconds else None,
        "stall_seconds": play.stall,
        "start": start,
        "end": end,
    }


async def _transcript_when_done(client, url: str, turn_id: str,
                                headers: dict[str, str]) -> tuple[dict[str, Any], float | None]:
    """The turn's transcript once its answer is complete, and when that was (perf_counter)."""
    for _ in range(10):  # the server waits at most 120 s per call
        r = await client.get(f"{url}/v1/transcripts/{turn_id}", params={"wait": 120}, headers=headers)
        if r.status_code != 200:
            return {}, None
        transcript = r.json()
        if transcript.get("done"):
            return transcript, time.perf_counter()
    return transcript, None


async def _chat_client(client, url: str, chat_type: str, index: int, turns: int, spoken: list[str] | None,
                       headers: dict[str, str]) -> list[dict[str, Any]]:
    runs = []
    for t in range(turns):
        q = (index + t) % len(QUESTIONS)
        run = await _chat_turn(client, url, chat_type, QUESTIONS[q], spoken[q] if spoken else None, headers)
        run.update(client=index, turn=t)
        runs.append(run)
    return runs


async def _chat_level(url: str, n: int, turns: int, chat_type: str, spoken: list[str] | None,
                      headers: dict[str, str]) -> list[dict[str, Any]]:
    import httpx

    limits = httpx.Limits(max_connections=2 * n + 4, max_keepalive_connections=2 * n + 4)
    async with httpx.AsyncClient(timeout=900, limits=limits) as client:
        per_client = await asyncio.gather(*(_chat_client(client, url, chat_type, i, turns, spoken, headers)
                                            for i in range(n)))
    return [run for runs in per_client for run in runs]


def _median(values: list[float | None]) -> float | None:
    import statistics

    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def _chat_summary(n: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    summary: dict[str, Any] = {"clients": n, "turns": len(runs)}
    for key in ("ttfa_s", "asr_s", "llm_first_token_s", "answer_written_s", "total_s", "audio_seconds", "rtf",
                "stall_seconds"):
        summary[f"{key}_median"] = _median([r[key] for r in runs])
    summary["ttfa_s_max"] = max(r["ttfa_s"] for r in runs)
    summary["throughput_audio_s_per_s"] = sum(r["audio_seconds"] for r in runs) / wall
    summary["wall_seconds"] = wall
    summary["runs"] = [{k: v for k, v in r.items() if k not in ("start", "end")} for r in runs]
    return summary


def run_chat_bench(*, chat_type: str = "text", llm: str | None = None, concurrency: tuple[int, ...] = (1, 4),
                   turns: int = 3, codes_per_sentence: int = 150, url: str | None = None, bundle: str | None = None,
                   voice_args: list[str] | None = None, num_workers: int | None = None, threads: int | None = None,
                   llm_max_tokens: int = 96, llm_temperature: float = 0.0, api_key: str | None = None,
                   warmup: bool = True, extra_args: list[str] | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Chat turns through the real server with its LLM (and Whisper for voice chat).

    `llm`: a GGUF file, a model folder or hub id, or an OpenAI-compatible URL (`--llm_checkpoint`);
    None or "default" is the embedded SmolLM2. `turns` turns per client, one after another; clients run
    concurrently, `concurrency` of them per level. Per turn: time to first audio, ASR seconds, the LLM's
    first-token seconds (both from `/v1/transcripts`), when the answer text was complete (a waiting
    `/v1/transcripts` call), total seconds, audio seconds, real-time factor.
    The LLM answers greedily (`llm_temperature` 0) and at most `llm_max_tokens` tokens, so runs repeat.
    """
    import logging

    if chat_type not in ("text", "voice"):
        raise ValueError(f"chat_type must be text or voice, not {chat_type!r}")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the results
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    llm = None if llm in (None, "", "default") else llm
    result: dict[str, Any] = {
        "mode": f"{chat_type} chat",
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_before": list(os.getloadavg()),
        "llm": llm or "embedded SmolLM2-135M-Instruct Q4_1 GGUF (llama.cpp)",
        "asr": "embedded Whisper base (faster-whisper, beam 1)" if chat_type == "voice" else None,
        "turns_per_client": turns,
        "llm_max_tokens": llm_max_tokens,
        "llm_temperature": llm_temperature,
        "codes_per_sentence": codes_per_sentence if url is None else None,
    }
    spoken = None
    if chat_type == "voice":
        log("speaking the questions with the hibari teacher ...")
        spoken = spoken_questions(QUESTIONS)
    server = None
    tmp = tempfile.TemporaryDirectory(prefix="llmvox-bench-")
    try:
        if url is None:
            args = _voice_args(bundle, voice_args, Path(tmp.name), result, log)
            args += ["--max_audio_length", str(codes_per_sentence), "--eoa_token_id", "-1",
                     *worker_args(num_workers), "--max_streams", str(max(concurrency) + 4),
                     "--max_queue", "64", "--queue_timeout", "600",
                     "--llm_max_tokens", str(llm_max_tokens), "--llm_temperature", str(llm_temperature)]
            if llm:
                args += ["--llm_checkpoint", llm]
            if chat_type == "voice":
                args += ["--asr_model", "base"]
            if threads:
                args += ["--threads", str(threads)]
            args += extra_args or []
            result["server_args"] = ["--chat_type", chat_type, *args]
            log(f"starting llmvox serve --chat_type {chat_type} ...")
            server = ServerProcess(args, Path(tmp.name) / "server.log", chat_type=chat_type)
            url = server.url
        result["url"] = url
        if warmup:  # loads the LLM's and Whisper's caches and the codec's first-call paths
            asyncio.run(_chat_level(url, 1, 1, chat_type, spoken, headers))
        def describe(n: int, summary: dict[str, Any]) -> str:
            ms = lambda v: "-" if v is None else f"{v * 1000:.0f}"  # noqa: E731
            return (f"{n:>3} clients x {turns} turns: first audio {ms(summary['ttfa_s_median'])} ms (median), "
                    f"ASR {ms(summary['asr_s_median'])} ms, LLM first token "
                    f"{ms(summary['llm_first_token_s_median'])} ms, total {summary['total_s_median']:.2f} s for "
                    f"{summary['audio_seconds_median']:.2f} s of audio")

        _measure_levels(result, concurrency,
                        lambda n: _chat_summary(n, asyncio.run(_chat_level(url, n, turns, chat_type, spoken, headers))),
                        describe, log)
    finally:
        if server is not None:
            server.stop()
        tmp.cleanup()
    return result


def chat_markdown_table(result: dict[str, Any]) -> str:
    """The README rows for a chat result (medians over every turn of a level)."""
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.0f}"

    def num(v: float | None, fmt: str = ".2f") -> str:
        return "-" if v is None else format(v, fmt)

    rows = ["| chat | clients | turns | first audio median / max (ms) | ASR (ms) | LLM first token (ms) "
            "| answer text done (s) | total (s) | audio (s) | real-time factor | load avg |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    mode = result.get("mode", "chat")
    for lv in result["levels"]:
        asr = ms(lv["asr_s_median"]) if result.get("asr") else "-"
        rows.append(f"| {mode} | {lv['clients']} | {lv['turns']} | {ms(lv['ttfa_s_median'])} / {ms(lv['ttfa_s_max'])} "
                    f"| {asr} | {ms(lv['llm_first_token_s_median'])} | {num(lv['answer_written_s_median'])} "
                    f"| {num(lv['total_s_median'])} "
                    f"| {num(lv['audio_seconds_median'])} | {num(lv['rtf_median'])} | {lv['load_average_1min']:.1f} |")
    return "\n".join(rows)
