"""`WS /v1/realtime` with the official openai client against a real server on loopback: the embedded voice
speaks, the embedded SmolLM2 (llama.cpp) answers, the embedded Whisper base and Silero VAD listen; the
questions are spoken by the teacher voice (hibari-tts)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time

import numpy as np
import pytest
from _chat_models import QUESTION, free_port, speak

pytest.importorskip("llama_cpp")
pytest.importorskip("faster_whisper")
openai = pytest.importorskip("openai")

KEY = "rt-key"
RATE = 24_000


@pytest.fixture(scope="module")
def server():
    import torch
    import uvicorn

    from llmvox.api import LLMVoX
    from llmvox.server.app import create_app
    from llmvox.server.settings import ServerSettings

    torch.set_num_threads(1)
    options = {"llm_max_tokens": 40, "llm_temperature": 0.0, "asr_threads": 1,
               "system_prompt": "You answer in one short sentence."}
    settings = ServerSettings(chat_type="voice", api_key=KEY, num_workers=1, threads=1, chat_options=options,
                              max_streams=2, idle_timeout=30)
    app = create_app(settings, tts=LLMVoX.from_pretrained())
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port, app.state.llmvox
    uv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def question() -> np.ndarray:
    pytest.importorskip("hibari")
    from llmvox.audio import resample

    audio, rate = speak(QUESTION)
    return resample(audio, rate, RATE)


def client(port: int):
    return openai.AsyncOpenAI(api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1",
                              websocket_base_url=f"ws://127.0.0.1:{port}/v1")


def pcm_b64(samples: np.ndarray) -> str:
    return base64.b64encode((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()).decode()


async def stream_audio(conn, samples: np.ndarray, rate: int = RATE, frame_ms: int = 20, silence_s: float = 0.0,
                       real_time: bool = False) -> None:
    """Append `samples` then `silence_s` of silence in `frame_ms` frames (paced in real time if asked)."""
    audio = np.concatenate([samples, np.zeros(int(silence_s * rate), np.float32)])
    step = rate * frame_ms // 1000
    for i in range(0, len(audio), step):
        await conn.input_audio_buffer.append(audio=pcm_b64(audio[i:i + step]))
        if real_time:
            await asyncio.sleep(frame_ms / 1000)


async def events_until(conn, kind: str, timeout: float = 120.0, seen: list | None = None) -> list:
    """Server events up to and including the first of type `kind`."""
    out = [] if seen is None else seen
    async with asyncio.timeout(timeout):
        async for event in conn:
            out.append(event)
            if event.type == kind:
                return out
    raise AssertionError(f"connection closed before {kind}")


def kinds(events: list) -> list[str]:
    return [e.type for e in events]


def audio_of(events: list) -> bytes:
    return b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta")


def run(coro):
    return asyncio.run(coro)


# ---- the parts, without a server ------------------------------------------------------------------------
def test_silero_turn_detector_finds_the_turn_and_its_pauses(question):
    from llmvox.asr.vad import TurnDetector
    from llmvox.audio import resample

    q16 = resample(question, RATE, 16000)
    gap = np.zeros(4800, np.float32)  # 300 ms: a pause inside the turn, shorter than its 500 ms end
    audio = np.concatenate([np.zeros(8000, np.float32), q16, gap, q16, np.zeros(16000, np.float32)])
    detector = TurnDetector(threshold=0.5, silence_ms=500, pause_ms=200)
    events = [e for i in range(0, len(audio), 320) for e in detector.push(audio[i:i + 320])]  # 20 ms pieces
    assert [e.kind for e in events] == ["start", "pause", "resume", "pause", "stop"], events
    assert 400 <= events[0].ms <= 800 and events[-1].ms <= len(audio) / 16 - 500
    assert [e.kind for e in TurnDetector().push(np.zeros(32000, np.float32))] == []  # silence: nothing


def test_session_update_reads_ga_and_beta_shapes():
    from llmvox.errors import LLMVoXError
    from llmvox.server.realtime_session import SessionConfig

    ga = SessionConfig().updated({"type": "realtime", "instructions": "hi", "audio": {
        "input": {"format": {"type": "audio/pcm", "rate": 16000},
                  "turn_detection": {"type": "server_vad", "silence_duration_ms": 700}},
        "output": {"voice": "marin"}}})
    assert (ga.input_rate, ga.voice, ga.turn_detection.silence_duration_ms, ga.instructions) == (16000, "marin", 700,
                                                                                                   "hi")
    beta = SessionConfig().updated({"input_audio_format": "pcm16", "turn_detection": None, "voice": "alloy",
                                    "modalities": ["text"]})
    assert beta.turn_detection is None and beta.output_modalities == ("text",)
    assert beta.shape(True, None, "s", "m")["turn_detection"] is None
    for bad in ({"input_audio_format": "g711_ulaw"}, {"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}},
                {"instructions": 5}, {"max_output_tokens": 0}):
        with pytest.raises(LLMVoXError):
            SessionConfig().updated(bad)


# ---- protocol: session, text items, manual commits, errors -----------------------------------------------
@pytest.mark.slow
def test_text_item_gets_a_spoken_answer_with_its_transcript(server):
    port, _ = server

    async def go():
        async with client(port).realtime.connect(model="llmvox") as conn:
            created = await events_until(conn, "session.created")
            assert created[-1].session.audio.output.format.rate == RATE
            await conn.session.update(session={"type": "realtime", "instructions": "Answer in one short sentence.",
                                               "audio": {"input": {"turn_detection": None},
                                                         "output": {"voice": "alloy"}}})
            updated = (await events_until(conn, "session.updated"))[-1].session
            assert updated.audio.input.turn_detection is None and updated.audio.output.voice == "alloy"
            await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                      "content": [{"type": "input_text", "text": QUESTION}]})
            await conn.response.create()
            events = await events_until(conn, "response.done")
            done = events[-1].response
            assert done.status == "completed"
            assert {"conversation.item.added", "response.created", "response.output_audio_transcript.delta",
                    "response.output_audio.done", "response.output_audio_transcript.done"} <= set(kinds(events))
            pcm = audio_of(events)
            assert len(pcm) > RATE and len(pcm) % 2 == 0  # over half a second of pcm16
            transcript = next(e for e in events if e.type == "response.output_audio_transcript.done").transcript
            assert "paris" in transcript.lower()
            assert done.output[0].content[0].transcript == transcript
            assert float(done.metadata["llm_first_token_ms"]) > 0 and float(done.metadata["tts_first_audio_ms"]) > 0

    run(go())


@pytest.mark.slow
def test_bad_client_events_get_errors_and_the_session_survives(server):
    port, _ = server
    bad = [
        ("not json", "invalid_json"),
        (json.dumps([1, 2]), "invalid_event"),
        (json.dumps({"type": "session.fly"}), "unknown_event"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "%%%"}), "invalid_base64"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}),
         "invalid_audio_format"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 2_000_000}), "event_too_large"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA" * 240_500}), "audio_too_large"),
        (json.dumps({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}}),
         "unsupported_audio_format"),
        (json.dumps({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcm",
                                                                                          "rate": 8000}}}}}),
         "unsupported_audio_format"),
        (json.dumps({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {
            "type": "server_vad", "threshold": 7}}}}}), "invalid_value"),
        (json.dumps({"type": "input_audio_buffer.commit"}), "input_audio_buffer_commit_empty"),
        (json.dumps({"type": "response.cancel"}), "response_cancel_not_active"),
        (json.dumps({"type": "conversation.item.create", "item": {"type": "function_call"}}), "unsupported_item"),
        (json.dumps({"type": "conversation.item.truncate", "item_id": "nope", "audio_end_ms": 0}), "item_not_found"),
    ]

    async def go():
        async with client(port).realtime.connect(model="llmvox") as conn:
            await events_until(conn, "session.created")
            for i, (text, code) in enumerate(bad):
                await conn._connection.send(text)  # raw frames, as a broken client would send them
                event = (await events_until(conn, "error", timeout=30))[-1]
                assert event.error.code == code, (i, event.error)
                assert "Traceback" not in event.error.message and event.error.message
            await conn._connection.send(b"\x00\x01")  # a binary frame
            assert (await events_until(conn, "error"))[-1].error.code == "binary_not_accepted"
            await conn.session.update(session={"type": "realtime", "instructions": "still here"})
            assert (await events_until(conn, "session.updated"))[-1].session.instructions == "still here"

    run(go())


# ---- speech: server VAD, streaming ASR, two turns ----------------------------------------------------------
def turn_of(state, done) -> object:
    """The server's chat turn behind a response (its id is in the response's metadata)."""
    return state.extras["chat"].transcripts.get(done.metadata["llmvox_turn_id"])


@pytest.mark.slow
def test_spoken_two_turn_conversation_with_server_vad(server, question):
    port, state = server

    async def go():
        async with client(port).realtime.connect(model="llmvox") as conn:
            await events_until(conn, "session.created")
            await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": {
                "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}}}})
            await events_until(conn, "session.updated")
            answers = []
            for _ in range(2):
                await stream_audio(conn, question, silence_s=1.0, real_time=True)
                events = await events_until(conn, "response.done")
                order = kinds(events)
                for kind in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                             "input_audio_buffer.committed", "conversation.item.input_audio_transcription.completed",
                             "response.created", "response.output_audio.delta", "response.done"):
                    assert kind in order, (kind, order)
                assert order.index("input_audio_buffer.speech_stopped") < order.index("response.created")
                heard = next(e for e in events if e.type == "conversation.item.input_audio_transcription.completed")
                assert "capital of france" in heard.transcript.lower()
                started = next(e for e in events if e.type == "input_audio_buffer.speech_started")
                stopped = next(e for e in events if e.type == "input_audio_buffer.speech_stopped")
                assert 1000 < stopped.audio_end_ms - started.audio_start_ms < 2500  # the question is ~1.7 s
                done = events[-1].response
                assert done.status == "completed" and len(audio_of(events)) > RATE
                answers.append(done)
                print("timings", dict(done.metadata))
                for name in ("vad_hangover_ms", "asr_tail_ms", "llm_first_token_ms", "tts_first_audio_ms",
                             "end_of_speech_to_first_audio_ms"):
                    assert float(done.metadata[name]) >= 0, name
            # the second turn's LLM saw the first question and its answer
            messages = turn_of(state, answers[1]).messages()
            roles = [m["role"] for m in messages]
            assert roles == ["system", "user", "assistant", "user"], roles
            assert messages[2]["content"] == answers[0].output[0].content[0].transcript

    run(go())


@pytest.mark.slow
def test_manual_commit_with_16khz_input(server, question):
    from llmvox.audio import resample

    port, _ = server
    q16 = resample(question, RATE, 16000)

    async def go():
        async with client(port).realtime.connect(model="llmvox") as conn:
            await events_until(conn, "session.created")
            await conn.session.update(session={"type": "realtime", "audio": {"input": {
                "turn_detection": None, "format": {"type": "audio/pcm", "rate": 16000}}}})
            assert (await events_until(conn, "session.updated"))[-1].session.audio.input.format.rate == 16000
            await stream_audio(conn, q16, rate=16000)
            await conn.input_audio_buffer.commit()
            events = await events_until(conn, "conversation.item.input_audio_transcription.completed")
            assert "input_audio_buffer.speech_started" not in kinds(events)  # no VAD: nothing but the commit
            assert "capital of france" in events[-1].transcript.lower()
            await conn.response.create()
            done = (await events_until(conn, "response.done"))[-1].response
            assert done.status == "completed"
            # clear drops what was appended
            await stream_audio(conn, q16[:8000], rate=16000)
            await conn.input_audio_buffer.clear()
            await events_until(conn, "input_audio_buffer.cleared")
            await conn.input_audio_buffer.commit()
            assert (await events_until(conn, "error"))[-1].error.code == "input_audio_buffer_commit_empty"

    run(go())


# ---- interruptions ----------------------------------------------------------------------------------------
LONG = "Tell me a very long story about a dragon who lived in the mountains."


async def long_answer(conn, state, max_tokens: int = 400) -> list:
    """Start a long spoken answer (to a text item) and read up to its second audio delta."""
    await conn.conversation.item.create(item={"type": "message", "role": "user",
                                              "content": [{"type": "input_text", "text": LONG}]})
    await conn.response.create(response={"max_output_tokens": max_tokens})
    seen: list = []
    while sum(e.type == "response.output_audio.delta" for e in seen) < 2:
        await events_until(conn, "response.output_audio.delta", seen=seen)
    return seen


@pytest.fixture()
def long_answers(server):
    _, state = server
    chat = state.extras["chat"]
    settings = chat.settings
    from dataclasses import replace

    chat.settings = replace(settings, max_tokens=400, temperature=1.0)
    yield chat.llm
    chat.settings = settings


def tokens_stop(llm) -> int:
    """Generated-token count once it stops moving (the LLM stopped)."""
    deadline = time.monotonic() + 5
    last = llm.tokens_generated
    while time.monotonic() < deadline:
        time.sleep(0.3)
        if llm.tokens_generated == last:
            return last
        last = llm.tokens_generated
    raise AssertionError("the LLM kept generating")


@pytest.mark.slow
def test_barge_in_stops_the_audio_cancels_the_llm_and_truncates(server, question, long_answers):
    port, state = server
    llm = long_answers

    async def go():
        async with client(port).realtime.connect(model="llmvox") as conn:
            await events_until(conn, "session.created")
            start_tokens = llm.tokens_generated
            before = await long_answer(conn, state)
            feeding = asyncio.create_task(stream_audio(conn, question, silence_s=1.0, real_time=True))
            events = await events_until(conn, "input_audio_buffer.speech_started")
            started_at = time.perf_counter()
            after = await events_until(conn, "response.done")
            first = after[-1].response
            late = [e for e in after if e.type == "response.output_audio.delta" and e.response_id == first.id]
            assert not late or time.perf_counter() - started_at < 0.15  # no audio after the barge-in
            assert first.status == "cancelled" and first.status_details.reason == "turn_detected"
            truncated = next(e for e in after if e.type == "conversation.item.truncated")
            sent_ms = len(audio_of(before + events + after)) * 1000 // (2 * RATE)
            assert 0 < truncated.audio_end_ms <= sent_ms
            heard = first.output[0].content[0].transcript
            assert first.output[0].status == "incomplete"
            tokens = tokens_stop(llm) - start_tokens
            assert tokens < 400  # the LLM stopped generating
            # the interruption itself is answered, and the next turn's history holds only what was heard
            await feeding
            answer = (await events_until(conn, "response.done"))[-1].response
            assert answer.status == "completed"
            messages = turn_of(state, answer).messages()
            assert [m["role"] for m in messages][-3:] == ["user", "assistant", "user"]
            assert messages[-2]["content"] == heard and len(heard) < len(
                state.extras["chat"].transcripts.get(first.metadata["llmvox_turn_id"]).answer)

    run(go())


@pytest.mark.slow
def test_cancel_and_client_truncate(server, long_answers):
    port, state = server

    async def go():
        async with client(port).realtime.connect(model="llmvox") as conn:
            await events_until(conn, "session.created")
            await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
            seen = await long_answer(conn, state)
            item_id = next(e for e in seen if e.type == "response.output_item.added").item.id
            await conn.response.create()  # one response at a time
            assert (await events_until(conn, "error"))[-1].error.code == "conversation_already_has_active_response"
            await conn.response.cancel()
            done = (await events_until(conn, "response.done"))[-1].response
            assert done.status == "cancelled" and done.status_details.reason == "client_cancelled"
            # the client says what it played: the item keeps those words
            await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=10**7)
            assert (await events_until(conn, "error"))[-1].error.param == "audio_end_ms"
            await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=0)
            truncated = (await events_until(conn, "conversation.item.truncated"))[-1]
            assert truncated.audio_end_ms == 0
            await conn.conversation.item.retrieve(item_id=item_id)
            item = (await events_until(conn, "conversation.item.retrieved"))[-1].item
            assert item.content[0].transcript == "" and item.status == "incomplete"

    run(go())


@pytest.mark.slow
def test_disconnect_mid_answer_frees_the_slot_and_the_llm(server, long_answers):
    port, state = server
    llm = long_answers

    async def go():
        conn = await client(port).realtime.connect(model="llmvox").enter()
        await events_until(conn, "session.created")
        await long_answer(conn, state)
        assert state.slots.active == 1
        await conn.close()
        gone = time.perf_counter()
        while state.slots.active and time.perf_counter() - gone < 2:
            await asyncio.sleep(0.01)
        freed = time.perf_counter() - gone
        assert state.slots.active == 0 and freed < 0.1 + 0.05, freed  # 50 ms for the close handshake
        tokens_stop(llm)

    run(go())


# ---- the fast paths: short-window ASR, speculative answers ------------------------------------------------
@pytest.mark.slow
def test_short_window_asr_hears_the_same_and_is_faster(question):
    from llmvox.asr.whisper import WhisperASR
    from llmvox.audio import resample

    asr = WhisperASR(None, threads=1, beam_size=1, language="en")
    q16 = resample(question, RATE, 16000)
    asr.transcribe(q16, short=True)  # loads the caches
    seconds = {}
    for short in (True, False):
        t0 = time.perf_counter()
        text = asr.transcribe(q16, short=short)
        seconds[short] = time.perf_counter() - t0
        assert "capital of france" in text.lower(), (short, text)
    assert seconds[True] < 0.6 * seconds[False], seconds  # ~8x less encoder work for a 1.7 s question
    assert asr.transcribe(np.zeros(16000, np.float32), short=True) == ""  # no words invented for silence
    sky, rate = speak("Why is the sky blue?")
    two = asr.transcribe(np.concatenate([q16, np.zeros(8000, np.float32), resample(sky, rate, 16000)]), short=True)
    assert "capital of france" in two.lower() and "sky blue" in two.lower(), two


@pytest.mark.slow
def test_speculative_answer_is_released_at_the_end_and_dropped_when_speech_resumes(server, question):
    port, _ = server
    gap = np.zeros(int(0.35 * RATE), np.float32)  # a pause (> 200 ms), not the end of the turn

    async def go():
        async with client(port).realtime.connect(model="llmvox") as conn:
            await events_until(conn, "session.created")
            # a long end-of-turn silence: the phrase is surely recognised before it, so the answer starts
            # speculatively in the pause and is shown when the silence ends
            await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": {
                "type": "server_vad", "silence_duration_ms": 1500}}}})
            await events_until(conn, "session.updated")
            for audio, times in ((question, 1), (np.concatenate([question, gap, question]), 2)):
                await stream_audio(conn, audio, silence_s=2.0, real_time=True)
                events = await events_until(conn, "response.done")
                order = kinds(events)
                assert order.count("response.created") == 1, order  # a dropped speculation is never seen
                assert order.index("input_audio_buffer.speech_stopped") < order.index("response.created")
                heard = next(e for e in events if e.type == "conversation.item.input_audio_transcription.completed")
                assert heard.transcript.lower().count("capital of france") == times, heard.transcript
                done = events[-1].response
                assert done.status == "completed" and done.metadata["speculative"] == "1.0", dict(done.metadata)

    run(go())


CONCURRENT_QUESTIONS = ["What is the capital of France?", "How many legs does a spider have?",
                        "Who wrote the play Romeo and Juliet?", "Which planet is the largest in our solar system?"]


def content_words(text: str) -> set[str]:
    """Words of more than three letters, normalised as `llmvox eval` scores them (Whisper's "8" is "eight")."""
    from llmvox.bench.intelligibility import normalize_for_wer

    return {w for w in normalize_for_wer(text).split() if len(w) > 3}


def overlap(transcript: str, heard: str) -> float:
    """Share of the transcript's content words that the recogniser heard in the audio."""
    words = content_words(transcript)
    return len(words & content_words(heard)) / max(1, len(words))


@pytest.mark.slow
def test_four_concurrent_sessions_each_hear_their_own_answer(server):
    port, state = server

    async def one(question: str) -> tuple[str, bytes, str]:
        async with client(port).realtime.connect(model="llmvox") as conn:
            await events_until(conn, "session.created")
            await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
            await events_until(conn, "session.updated")
            await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                      "content": [{"type": "input_text", "text": question}]})
            await conn.response.create()
            events = await events_until(conn, "response.done", timeout=240)
            done = events[-1].response
            assert done.status == "completed", done.status_details
            return question, audio_of(events), done.output[0].content[0].transcript

    async def go():
        return await asyncio.gather(*(one(q) for q in CONCURRENT_QUESTIONS))

    limit, state.slots.limit = state.slots.limit, len(CONCURRENT_QUESTIONS)  # all four speak at once
    try:
        answers = run(go())
    finally:
        state.slots.limit = limit
    asr = state.extras["chat"].asr
    heard = [asr.transcribe(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768, RATE, language="en")
             for _, pcm, _ in answers]
    for i, (question, pcm, transcript) in enumerate(answers):
        assert len(pcm) > RATE and content_words(transcript), (question, transcript)  # every session got its answer
        own = overlap(transcript, heard[i])
        others = [overlap(answers[j][2], heard[i]) for j in range(len(answers)) if j != i]
        # the embedded voice is not perfectly intelligible (measured: 0.38-1.0 of its own words, <= 0.13 of others')
        assert own >= 0.3 and own > max(others) + 0.2, (question, transcript, heard[i], own, others)


@pytest.mark.slow
def test_an_answer_dropped_while_queued_for_the_llm_never_evaluates(server):
    """A discarded speculative answer waiting for the one llama.cpp model leaves the queue at once, without
    evaluating its prompt once the model is free (that queue was the 4-session latency)."""
    llm = server[1].extras["chat"].llm
    messages = [{"role": "user", "content": "Count from one to twenty."}]
    holder = llm.stream_chat(messages, max_tokens=8, temperature=0.0)
    next(holder)  # this answer holds the model
    cancel, out = threading.Event(), []
    waiter = threading.Thread(target=lambda: out.extend(llm.stream_chat(messages, max_tokens=8, cancel=cancel)))
    try:
        waiter.start()
        time.sleep(0.2)
        cancel.set()
        waiter.join(2)
        assert not waiter.is_alive() and out == []
    finally:
        holder.close()
        waiter.join(10)
    assert "".join(llm.stream_chat(messages, max_tokens=4, temperature=0.0))  # the model is free again
