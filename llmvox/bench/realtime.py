"""Spoken turns through the real server's `WS /v1/realtime` (`llmvox bench realtime`), beside `/voicechat`.

The server runs `--chat_type voice` with the embedded voice, SmolLM2 and Whisper base (unless told
otherwise). Each session is the official openai client streaming questions spoken by the hibari teacher
in real time (20 ms frames of pcm16 at 24 kHz, then silence, as a microphone sends them) with server VAD.
Per turn: the time from sending the frame that holds the last speech sample to receiving the first
audio delta, and its parts from `response.done.metadata` (VAD hang-over, ASR tail, LLM first token,
TTS first audio, whether the answer started speculatively). The same questions are uploaded to
`/voicechat` (time to first audio byte, raw; plus the web UI's 0.8 s pause that ends a question, to
compare end of speech with end of speech). The turn WER of the streamed transcripts is scored against a
one-shot transcription of each whole question with today's 30 s window and with the short window.
"""

from __future__ import annotations

import asyncio
import base64
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llmvox.bench.chat import QUESTIONS as CHAT_QUESTIONS
from llmvox.bench.chat import _chat_turn
from llmvox.bench.stream import ServerProcess, _pct, worker_args
from llmvox.codec.config import SAMPLE_RATE

QUESTIONS = CHAT_QUESTIONS + [  # the chat bench's six, then fourteen more
    "Can you tell me, in a few words, how a rainbow forms?",
    "What should I cook for dinner tonight?",
    "How many legs does a spider have?",
    "Who wrote the play Romeo and Juliet?",
    "What is the best way to keep a house plant alive?",
    "Why do cats purr when they are happy?",
    "If I leave now, will I be on time for a train at six?",
    "What is the difference between weather and climate?",
    "How does a bicycle stay upright when it moves?",
    "Tell me something interesting about the ocean.",
    "What time is it in Tokyo when it is noon in London?",
    "How do I make a good cup of tea?",
    "Which planet is the largest in our solar system?",
    "Why do leaves change colour in the autumn?",
]
FRAME_MS = 20
UI_PAUSE_S = 0.8  # the web UI's default pause that ends a hands-free question (static/mic.js)
PARTS = ("vad_hangover_ms", "asr_tail_ms", "asr_ms", "llm_first_token_ms", "tts_first_audio_ms",
         "end_of_speech_to_first_audio_ms")


class Spoken:
    """A question spoken by the teacher: pcm16 at 24 kHz (realtime), base64 pcm16 at 16 kHz (/voicechat)."""

    def __init__(self, text: str, audio: np.ndarray, rate: int) -> None:
        from llmvox.audio import resample

        self.text = text
        self.audio24 = resample(audio, rate, SAMPLE_RATE).astype(np.float32)
        self.audio16 = resample(audio, rate, 16000).astype(np.float32)
        self.pcm = (np.clip(self.audio24, -1, 1) * 32767).astype("<i2").tobytes()
        pcm16 = np.rint(np.clip(self.audio16, -1, 1) * 32767).astype("<i2")
        self.b64_16k = base64.b64encode(pcm16.tobytes()).decode("ascii")
        self.last_speech_sample = last_speech_sample(self.audio24, SAMPLE_RATE)
        self.seconds = len(self.audio24) / SAMPLE_RATE


def last_speech_sample(audio: np.ndarray, rate: int) -> int:
    """The end of the last 10 ms block within 40 dB of the loudest one: where the words end."""
    block = rate // 100
    n = len(audio) // block
    if n == 0:
        return len(audio)
    rms = np.sqrt(np.mean(audio[: n * block].reshape(n, block) ** 2, axis=1))
    loud = np.nonzero(rms > rms.max() * 0.01)[0]
    return int((loud[-1] + 1) * block) if loud.size else len(audio)


def speak_questions(questions: list[str]) -> list[Spoken]:
    """The questions spoken by the hibari teacher (before the server starts: its time is never measured)."""
    from llmvox.train.teachers import HibariTeacher

    teacher = HibariTeacher(threads=1)
    return [Spoken(q, *teacher.speak(q)) for q in questions]


def one_shot_asr(spoken: list[Spoken], threads: int = 1) -> dict[str, Any]:
    """Each whole question recognised at once in this process: today's 30 s window and the short one."""
    from llmvox.asr.whisper import WhisperASR

    asr = WhisperASR(None, threads=threads, beam_size=1, language="en")
    asr.transcribe(spoken[0].audio16, 16000, short=True)  # loads the caches
    out: dict[str, Any] = {}
    for name, short in (("full_window", False), ("short_window", True)):
        texts, ms = [], []
        for s in spoken:
            t0 = time.perf_counter()
            texts.append(asr.transcribe(s.audio16, 16000, short=short))
            ms.append((time.perf_counter() - t0) * 1000)
        out[name] = {"transcripts": texts, "ms_p50": _pct(sorted(ms), 0.5), "ms_p95": _pct(sorted(ms), 0.95),
                     "ms": [round(x, 1) for x in ms]}
    return out


# ---- realtime sessions --------------------------------------------------------------------------------
async def _read_turn(conn, turn: dict[str, Any], timeout: float) -> None:
    """Server events up to this turn's response.done: first audio delta time, transcript, metadata."""
    async with asyncio.timeout(timeout):
        while True:
            event = await conn.recv()
            kind = event.type
            if kind in ("response.output_audio.delta", "response.audio.delta"):
                turn.setdefault("first_audio_at", time.perf_counter())
                turn["audio_bytes"] = turn.get("audio_bytes", 0) + len(event.delta) * 3 // 4
            elif kind == "conversation.item.input_audio_transcription.completed":
                turn["heard"] = event.transcript
            elif kind == "input_audio_buffer.speech_stopped":
                turn.setdefault("speech_stopped_at", time.perf_counter())
            elif kind == "error":
                turn.setdefault("errors", []).append(event.error.code)
            elif kind == "response.done":
                response = event.response
                turn["status"] = response.status
                turn["metadata"] = dict(response.metadata or {})
                if response.output and response.output[0].content:
                    turn["answer"] = response.output[0].content[0].transcript
                return


async def _send_turn(conn, spoken: Spoken, turn: dict[str, Any], reading: asyncio.Task, lead_s: float) -> None:
    """`lead_s` of silence, the question, then silence until the answer is done, in real-time 20 ms frames."""
    step = SAMPLE_RATE * FRAME_MS // 1000 * 2  # bytes per frame
    silence = base64.b64encode(bytes(step)).decode("ascii")
    frames = [silence] * int(lead_s * 1000 / FRAME_MS)
    first = len(frames)
    frames += [base64.b64encode(spoken.pcm[i:i + step]).decode("ascii") for i in range(0, len(spoken.pcm), step)]
    last_speech_frame = first + (spoken.last_speech_sample * 2 - 1) // step
    clock = time.perf_counter()
    i = 0
    while not reading.done():
        await conn.input_audio_buffer.append(audio=frames[i] if i < len(frames) else silence)
        if i == last_speech_frame:
            turn["last_speech_sent_at"] = time.perf_counter()
        i += 1
        clock += FRAME_MS / 1000
        await asyncio.sleep(max(0.0, clock - time.perf_counter()))


async def _session(url: str, key: str | None, spoken: list[Spoken], silence_ms: int, start_delay: float,
                   timeout: float) -> list[dict[str, Any]]:
    from openai import AsyncOpenAI

    ws = url.replace("http://", "ws://").replace("https://", "wss://")
    client = AsyncOpenAI(api_key=key or "none", base_url=f"{url}/v1", websocket_base_url=f"{ws}/v1")
    await asyncio.sleep(start_delay)
    turns = []
    async with client.realtime.connect(model="llmvox") as conn:
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "server_vad", "silence_duration_ms": silence_ms}}}})
        while (await conn.recv()).type != "session.updated":
            pass
        for s in spoken:
            turn: dict[str, Any] = {"question": s.text, "speech_seconds": s.seconds}
            reading = asyncio.create_task(_read_turn(conn, turn, timeout))
            await _send_turn(conn, s, turn, reading, lead_s=0.3)
            try:
                await reading
            except TimeoutError:
                turn["status"] = "timeout"
            if "first_audio_at" in turn and "last_speech_sent_at" in turn:
                turn["end_of_speech_to_first_audio_ms"] = (turn["first_audio_at"] - turn["last_speech_sent_at"]) * 1000
            turns.append(turn)
    return turns


async def _realtime_level(url: str, key: str | None, spoken: list[Spoken], n: int, silence_ms: int,
                          timeout: float) -> list[dict[str, Any]]:
    """`n` concurrent sessions share the questions (session i speaks questions i, i+n, ...), staggered."""
    per = await asyncio.gather(*(_session(url, key, spoken[i::n], silence_ms, 0.7 * i, timeout) for i in range(n)))
    return [dict(t, session=i) for i, turns in enumerate(per) for t in turns]


def _stats(values: list[float]) -> dict[str, float | None]:
    kept = sorted(v for v in values if v is not None)
    if not kept:
        return {"p50": None, "p95": None}
    return {"p50": _pct(kept, 0.5), "p95": _pct(kept, 0.95)}


def realtime_summary(n: int, turns: list[dict[str, Any]]) -> dict[str, Any]:
    """p50/p95 over the turns: client-measured end of speech -> first audio, and the server's parts."""
    ok = [t for t in turns if t.get("status") == "completed"]
    out: dict[str, Any] = {"sessions": n, "turns": len(turns), "completed": len(ok),
                           "end_of_speech_to_first_audio_ms": _stats([t.get("end_of_speech_to_first_audio_ms")
                                                                      for t in ok]),
                           "speculative_turns": sum(t["metadata"].get("speculative") == "1.0" for t in ok)}
    out["server_parts_ms"] = {p: _stats([float(t["metadata"][p]) for t in ok if p in t["metadata"]]) for p in PARTS}
    out["runs"] = [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in t.items() if not k.endswith("_at")}
                   for t in turns]
    return out


# ---- /voicechat ------------------------------------------------------------------------------------------
async def _voicechat_level(url: str, key: str | None, spoken: list[Spoken], n: int) -> list[dict[str, Any]]:
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def one_client(i: int, client) -> list[dict[str, Any]]:
        await asyncio.sleep(0.7 * i)
        return [await _chat_turn(client, url, "voice", s.text, s.b64_16k, headers) for s in spoken[i::n]]

    async with httpx.AsyncClient(timeout=600) as client:
        per = await asyncio.gather(*(one_client(i, client) for i in range(n)))
    return [r for runs in per for r in runs]


def voicechat_summary(n: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    raw = [r["ttfa_s"] * 1000 for r in runs]
    return {"clients": n, "turns": len(runs), "upload_to_first_audio_ms": _stats(raw),
            "ui_end_of_speech_to_first_audio_ms": _stats([x + UI_PAUSE_S * 1000 for x in raw]),
            "asr_ms": _stats([r["asr_s"] * 1000 for r in runs]),
            "llm_first_token_ms": _stats([None if r["llm_first_token_s"] is None else r["llm_first_token_s"] * 1000
                                          for r in runs]),
            "runs": [{"question": r["question"], "heard": r["heard"], "ttfa_ms": round(r["ttfa_s"] * 1000, 1),
                      "asr_ms": round(r["asr_s"] * 1000, 1)} for r in runs]}


def turn_wer(questions: list[str], hypotheses: dict[str, list[str]]) -> dict[str, Any]:
    """Corpus WER (%) of each transcription of the same questions (normalised as `llmvox eval` does)."""
    from llmvox.bench.intelligibility import score

    return {name: round(score(questions, hyps)["wer"] * 100, 2) for name, hyps in hypotheses.items()
            if len(hyps) == len(questions)}


def run_realtime_bench(*, concurrency: tuple[int, ...] = (1, 4), questions: list[str] | None = None,
                       silence_ms: int = 500, bundle: str | None = None, num_workers: int | None = None,
                       llm_max_tokens: int = 48, voicechat: bool = True, warmup: bool = True,
                       extra_args: list[str] | None = None, turn_timeout: float = 120.0,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every concurrency level over `/v1/realtime` and `/voicechat` (see the module docstring)."""
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    questions = list(questions or QUESTIONS)
    result: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_average_before": list(os.getloadavg()), "questions": questions, "silence_duration_ms": silence_ms,
        "frame_ms": FRAME_MS, "llm_max_tokens": llm_max_tokens, "ui_pause_s": UI_PAUSE_S,
        "voice": bundle or "embedded default", "llm": "embedded SmolLM2-135M-Instruct (llama.cpp)",
        "asr": "embedded Whisper base (faster-whisper int8, beam 1, short window)",
    }
    log(f"speaking {len(questions)} questions with the hibari teacher ...")
    spoken = speak_questions(questions)
    log("one-shot recognition of each whole question (30 s window and short window) ...")
    result["one_shot_asr"] = one_shot_asr(spoken)
    result["load_average_one_shot"] = list(os.getloadavg())
    args = (["--bundle", bundle] if bundle else []) + [
        *worker_args(num_workers), "--max_streams", str(2 * max(concurrency) + 4), "--max_queue", "64",
        "--llm_max_tokens", str(llm_max_tokens), "--llm_temperature", "0", "--asr_model", "base",
        *(extra_args or [])]
    result["server_args"] = ["--chat_type", "voice", *args]
    tmp = tempfile.TemporaryDirectory(prefix="llmvox-bench-")
    server = None
    try:
        log("starting llmvox serve --chat_type voice ...")
        server = ServerProcess(args, Path(tmp.name) / "server.log", chat_type="voice")
        url = server.url
        if warmup:
            asyncio.run(_realtime_level(url, None, spoken[:1], 1, silence_ms, turn_timeout))
            if voicechat:
                asyncio.run(_voicechat_level(url, None, spoken[:1], 1))
        levels, chats = [], []
        for n in concurrency:
            load = os.getloadavg()[0]
            summary = realtime_summary(n, asyncio.run(_realtime_level(url, None, spoken, n, silence_ms,
                                                                      turn_timeout)))
            summary["load_average_1min"] = load
            levels.append(summary)
            e2fa = summary["end_of_speech_to_first_audio_ms"]
            log(f"realtime, {n} sessions: end of speech -> first audio p50 {e2fa['p50']} ms, p95 {e2fa['p95']} ms "
                f"({summary['completed']}/{summary['turns']} turns, {summary['speculative_turns']} speculative); "
                f"load {load:.1f}")
            if voicechat:
                load = os.getloadavg()[0]
                chat = voicechat_summary(n, asyncio.run(_voicechat_level(url, None, spoken, n)))
                chat["load_average_1min"] = load
                chats.append(chat)
                log(f"/voicechat, {n} clients: upload -> first audio p50 {chat['upload_to_first_audio_ms']['p50']} "
                    f"ms (+{UI_PAUSE_S:g} s UI pause: {chat['ui_end_of_speech_to_first_audio_ms']['p50']} ms); "
                    f"load {load:.1f}")
        result["realtime"], result["voicechat"] = levels, chats
    finally:
        if server is not None:
            server.stop()
        tmp.cleanup()
    hyps = {"one_shot_full_window": result["one_shot_asr"]["full_window"]["transcripts"],
            "one_shot_short_window": result["one_shot_asr"]["short_window"]["transcripts"]}
    first = {r["question"]: r.get("heard", "") for r in result["realtime"][0]["runs"]}
    hyps["realtime_streamed"] = [first.get(q, "") for q in questions]
    if result["voicechat"]:
        heard = {r["question"]: r["heard"] or "" for r in result["voicechat"][0]["runs"]}
        hyps["voicechat"] = [heard.get(q, "") for q in questions]
    result["turn_wer_percent"] = turn_wer(questions, hyps)
    result["load_average_after"] = list(os.getloadavg())
    return result


def markdown_table(result: dict[str, Any]) -> str:
    """The README rows: realtime p50/p95 and its parts beside /voicechat, per level."""
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    rows = ["| path | sessions | end of speech -> first audio p50 / p95 (ms) | VAD hang-over | ASR tail "
            "| LLM first token | TTS first audio (p50, ms) | load avg |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    chats = {c["clients"]: c for c in result.get("voicechat", [])}
    for lv in result["realtime"]:
        parts, e = lv["server_parts_ms"], lv["end_of_speech_to_first_audio_ms"]
        rows.append(f"| /v1/realtime | {lv['sessions']} | {ms(e['p50'])} / {ms(e['p95'])} "
                    f"| {ms(parts['vad_hangover_ms']['p50'])} | {ms(parts['asr_tail_ms']['p50'])} "
                    f"| {ms(parts['llm_first_token_ms']['p50'])} | {ms(parts['tts_first_audio_ms']['p50'])} "
                    f"| {lv['load_average_1min']:.1f} |")
        chat = chats.get(lv["sessions"])
        if chat:
            raw, ui = chat["upload_to_first_audio_ms"], chat["ui_end_of_speech_to_first_audio_ms"]
            rows.append(f"| /voicechat (+{UI_PAUSE_S:g} s UI pause) | {chat['clients']} | {ms(ui['p50'])} / "
                        f"{ms(ui['p95'])} (raw {ms(raw['p50'])} / {ms(raw['p95'])}) | - "
                        f"| ASR {ms(chat['asr_ms']['p50'])} | {ms(chat['llm_first_token_ms']['p50'])} | - "
                        f"| {chat['load_average_1min']:.1f} |")
    wer = result.get("turn_wer_percent", {})
    rows.append("")
    rows.append("Turn WER (%): " + ", ".join(f"{k} {v:.1f}" for k, v in wer.items()))
    return "\n".join(rows)
