"""Chat turns (text, voice, voice + image, audio + image) and the chat endpoints, with real models:
tiny transformers models built offline, the bundled SmolLM2 GGUF, the embedded Whisper base, the
teacher voice for questions and the parity checkpoints as the speaking voice."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _chat_models import QUESTION, build_audio_lm, build_causal_lm, build_vlm, free_port, png_bytes, speak

from llmvox.chat import (
    APOLOGY,
    AUDIO_ONLY_INSTRUCTION,
    ChatRequest,
    ChatSettings,
    ChatTurn,
    TranscriptStore,
)
from llmvox.errors import LLMVoXError

pytest.importorskip("transformers")

SILENCE_B64 = base64.b64encode(np.zeros(16000, "<i2").tobytes()).decode()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def pcm_b64(samples: np.ndarray) -> str:
    return base64.b64encode((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()).decode()


def normalise(text: str) -> str:
    return re.sub(r"[^a-z ]", "", text.lower()).strip()


@pytest.fixture(scope="module")
def question_16k():
    pytest.importorskip("hibari")
    from llmvox.audio import resample

    audio, rate = speak(QUESTION)
    return resample(audio, rate, 16000)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from llmvox.llm.transformers_backend import TransformersBackend

    return TransformersBackend(build_causal_lm(tmp_path_factory.mktemp("chat_lm")))


@pytest.fixture(scope="module")
def whisper():
    pytest.importorskip("faster_whisper")
    from llmvox.asr.whisper import WhisperASR

    return WhisperASR(threads=2, beam_size=1)


SHORT = ChatSettings(max_tokens=20, temperature=0.0, system_prompt="Answer in one short sentence.")


# ---- requests ---------------------------------------------------------------------------------
def test_request_bodies_and_their_errors(question_16k):
    voice = ChatRequest.from_body("voice", {"audio_base64": pcm_b64(question_16k), "source_language": "english"})
    assert voice.audio.shape == question_16k.shape and voice.source_language == "english"
    vlm = ChatRequest.from_body("visual_speech", {"audio_base64": pcm_b64(question_16k),
                                                  "image_base64": base64.b64encode(png_bytes()).decode()})
    assert vlm.images[0].size == (40, 30)
    png_as_pcm = png_bytes(200, 100)
    png_as_pcm += b"\0" * (len(png_as_pcm) % 2)
    cases = [
        ("text", {"text": "  "}, 400, "non-empty"),
        ("voice", {"audio_base64": "%%%"}, 400, "not valid base64"),
        ("voice", {"audio_base64": SILENCE_B64}, 422, "silent"),
        ("voice", {"audio_base64": pcm_b64(np.tile(question_16k, 40))}, 413, "asr_max_audio_length"),
        ("voice", {"audio_base64": base64.b64encode(png_as_pcm).decode()}, 422, "no speech"),  # noise
        ("visual_speech", {"audio_base64": pcm_b64(question_16k), "image_base64": pcm_b64(question_16k)}, 400,
         "not a readable image"),
        ("multimodal", {"audio_base64": pcm_b64(question_16k),
                        "image_list": [base64.b64encode(png_bytes()).decode()] * 5}, 413, "5 images"),
        ("multimodal", {"audio_base64": pcm_b64(question_16k), "image_list": "x"}, 400, "list of base64"),
        ("singing", {}, 400, "unknown chat mode"),
    ]
    for mode, body, status, words in cases:
        with pytest.raises(LLMVoXError, match=words) as info:
            ChatRequest.from_body(mode, body)
        assert info.value.status == status, (mode, words)


# ---- turns ------------------------------------------------------------------------------------
def test_text_turn_streams_and_keeps_the_answer(tiny_lm):
    turn = ChatTurn(ChatRequest(text="hello world"), tiny_lm, settings=SHORT)
    assert turn.messages() == [{"role": "system", "content": SHORT.system_prompt},
                               {"role": "user", "content": "hello world"}]
    seen = []
    for delta in turn.deltas():
        seen.append(delta)
        assert turn.answer == "".join(seen)  # readable while it forms
        assert not turn.done
    assert turn.done and turn.answer == tiny_lm.chat(turn.messages(), max_tokens=20, temperature=0, stop=["<|eot_id|>"])
    snap = turn.snapshot()
    assert snap["question"] == "hello world" and snap["done"] and snap["error"] is None


def test_cancelling_a_turn_stops_the_llm(tiny_lm):
    turn = ChatTurn(ChatRequest(text="hello world"), tiny_lm,
                    settings=ChatSettings(max_tokens=3000, temperature=1.0))
    start = tiny_lm.tokens_generated
    for i, _ in enumerate(turn.deltas()):
        if i == 2:
            turn.cancel()
    stopped = tiny_lm.tokens_generated - start
    time.sleep(0.3)
    assert stopped < 100 and tiny_lm.tokens_generated - start == stopped
    assert turn.done and turn.snapshot()["cancelled"]


def test_llm_failures_before_and_during_the_answer(tmp_path, monkeypatch):
    from llmvox.llm.transformers_backend import TransformersBackend

    short_context = TransformersBackend(build_causal_lm(tmp_path, arch="gpt2", n_positions=64))
    long_prompt = ChatSettings(system_prompt="the cat sat on the mat. " * 30)
    # the backend knows its context: a prompt that cannot fit is the request's fault (413), said up front
    with pytest.raises(LLMVoXError, match="the model's context is 64 tokens") as info:
        ChatTurn(ChatRequest(text="hello"), short_context, settings=long_prompt).start()
    assert info.value.status == 413
    # a backend that does not fit its prompt fails in the model itself: mid-answer and before it
    monkeypatch.setattr(short_context, "fit_messages", lambda messages, max_tokens: (messages, max_tokens))
    turn = ChatTurn(ChatRequest(text="hello"), short_context, settings=ChatSettings(max_tokens=200, system_prompt="x"))
    answer = turn.run()  # runs past the 64-token context: the model fails mid-answer
    assert answer.endswith(APOLOGY) and len(answer) > len(APOLOGY)
    assert "broke off" in turn.error
    with pytest.raises(LLMVoXError, match="failed before answering") as info:
        ChatTurn(ChatRequest(text="hello"), short_context, settings=long_prompt).start()
    assert info.value.status == 502


def test_multimodal_turn_gives_the_model_the_speech(tmp_path, question_16k):
    from llmvox.llm.multimodal import MultimodalBackend

    llm = MultimodalBackend(build_audio_lm(tmp_path))
    request = ChatRequest.from_body("multimodal", {"audio_base64": pcm_b64(question_16k)})
    turn = ChatTurn(request, llm, settings=SHORT)  # no ASR: the model hears the question itself
    content = turn.messages()[-1]["content"]
    assert [p["type"] for p in content] == ["audio", "text"] and content[1]["text"] == AUDIO_ONLY_INSTRUCTION
    assert np.array_equal(content[0]["audio"], request.audio)
    assert turn.run() and turn.question is None
    # a text-only LLM refuses audio with a clear error
    with pytest.raises(LLMVoXError, match="needs an LLM that takes audio"):
        ChatTurn(request, TransformersBackendFrom(tmp_path / "lm"), settings=SHORT).start()


def TransformersBackendFrom(folder: Path):
    from llmvox.llm.transformers_backend import TransformersBackend

    return TransformersBackend(build_causal_lm(folder))


@pytest.mark.slow
def test_visual_speech_turn_recognises_the_question(tmp_path, question_16k, whisper):
    from llmvox.llm.vlm import VisionLanguageBackend

    llm = VisionLanguageBackend(build_vlm(tmp_path))
    request = ChatRequest.from_body("visual_speech", {"audio_base64": pcm_b64(question_16k),
                                                      "image_base64": base64.b64encode(png_bytes()).decode()})
    turn = ChatTurn(request, llm, asr=whisper, settings=SHORT).start()
    assert normalise(turn.question) == normalise(QUESTION)
    content = turn.messages()[-1]["content"]
    assert [p["type"] for p in content] == ["image", "text"] and content[1]["text"] == turn.question
    assert turn.run() and turn.done


def test_transcript_store_is_bounded(tiny_lm):
    store = TranscriptStore(max_items=2)
    turns = [ChatTurn(ChatRequest(text="hi"), tiny_lm) for _ in range(3)]
    for turn in turns:
        store.add(turn)
    assert store.get(turns[0].id) is None and store.get(turns[2].id) is turns[2]


def test_chat_flags_fill_the_settings():
    import argparse

    from llmvox.chat_flags import add_chat_args, settings_from_args

    parser = argparse.ArgumentParser()
    parser.add_argument("--llm_max_tokens", type=int, default=7)  # a flag the server CLI already has
    add_chat_args(parser)
    args = parser.parse_args(["--asr_max_audio_length", "12", "--asr_enable_translation", "false",
                              "--max-images", "2", "--llm_temperature", "0", "--asr_sample_rate", "8000"])
    settings = settings_from_args(args)
    assert (settings.max_tokens, settings.temperature, settings.audio.max_seconds, settings.images.max_images,
            settings.asr_translate, settings.pcm_rate) == (7, 0.0, 12.0, 2, False, 8000)
    with pytest.raises(SystemExit):
        parser.parse_args(["--asr_enable_translation", "maybe"])


# ---- the endpoints, through a real server ---------------------------------------------------------


@pytest.fixture(scope="module")
def chat_server(parity_dir):
    """The real app (`create_app`, chat type voice) on a loopback port: its chat hook loads SmolLM2
    (llama.cpp) and Whisper base from the chat flags; the parity checkpoints speak."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("faster_whisper")
    import uvicorn

    from llmvox.api import LLMVoX
    from llmvox.engine.config import StreamConfig
    from llmvox.server.app import create_app
    from llmvox.server.settings import ServerSettings

    voice = LLMVoX.from_original(str(parity_dir / "llmvox.pt"), str(parity_dir / "byt5_g2p"),
                                 str(parity_dir / "wavtokenizer_small.yaml"), str(parity_dir / "wavtokenizer.ckpt"))
    options = {"llm_max_tokens": 24, "llm_temperature": 0.0, "asr_model": "small", "asr_threads": 2,
               "system_prompt": "You answer in one short sentence."}
    settings = ServerSettings(chat_type="voice", num_workers=1, threads=1, chat_options=options,
                              stream=StreamConfig(max_audio_length=24))  # random voice: short sentences
    app = create_app(settings, tts=voice)
    state = app.state.llmvox.extras["chat"]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", state
    server.should_exit = True
    thread.join(10)
    state.llm.close()


@pytest.mark.slow
def test_textchat_streams_speech_and_the_transcript(chat_server):
    import httpx

    from llmvox.cli.client import build_request, chat

    url, state = chat_server
    assert state.llm.name.startswith("llamacpp:") and state.asr is not None  # loaded from the chat flags
    result = chat(url, *build_request(text=QUESTION))
    assert result.audio.size > 0 and np.isfinite(result.audio).all()
    assert result.question == QUESTION and "paris" in result.answer.lower()
    assert result.extra["done"] and result.time_to_first_audio < result.total_seconds
    metrics = httpx.get(url + "/metrics").text
    assert 'llmvox_time_to_first_audio_seconds_count{endpoint="/textchat"}' in metrics


@pytest.mark.slow
def test_voicechat_answers_a_spoken_question(chat_server, question_16k, tmp_path):
    import soundfile as sf

    from llmvox.cli.client import build_request, chat

    url, _ = chat_server
    wav = tmp_path / "question.wav"
    sf.write(wav, question_16k, 16000)
    result = chat(url, *build_request(wav=wav))
    assert normalise(result.question) == normalise(QUESTION)
    assert result.audio.size > 0 and result.answer and result.extra["done"]


@pytest.mark.slow
def test_bad_requests_get_json_errors_and_the_server_keeps_serving(chat_server):
    import httpx

    url, _ = chat_server
    with httpx.Client(base_url=url, timeout=60) as client:
        for path, body, status in [("/voicechat", {"audio_base64": "%%%"}, 400),
                                   ("/voicechat", {"audio_base64": SILENCE_B64}, 422),
                                   ("/vlmschat", {"audio_base64": SILENCE_B64, "image_base64": "x"}, 409),
                                   ("/multimodalchat", {"audio_base64": SILENCE_B64}, 409)]:
            response = client.post(path, json=body)
            assert response.status_code == status, (path, response.text)
            assert response.json()["error"]["message"]
        assert client.get("/v1/transcripts/nope").status_code == 404
        assert client.post("/textchat", json={"text": "Say hi."}).status_code == 200  # still serving


@pytest.mark.slow
def test_client_disconnect_stops_the_llm(chat_server):
    import httpx

    url, state = chat_server
    llm = state.llm
    settings, state.settings = state.settings, ChatSettings(max_tokens=1000, temperature=1.0)
    try:
        start = llm.tokens_generated
        with httpx.Client(base_url=url, timeout=60) as client, \
                client.stream("POST", "/textchat", json={"text": "Tell me a very long story about a dragon."}) as r:
            assert r.status_code == 200
            rid = r.headers["x-llmvox-request-id"]
            next(r.iter_bytes())  # first audio, then hang up
        deadline = time.monotonic() + 5
        turn = state.transcripts.get(rid)
        while not turn.done and time.monotonic() < deadline:
            time.sleep(0.05)
        stopped = llm.tokens_generated - start
        time.sleep(0.5)
        assert turn.done and turn.snapshot()["cancelled"]
        assert stopped < 1000 and llm.tokens_generated - start == stopped
    finally:
        state.settings = settings


@pytest.mark.slow
def test_client_command_saves_the_answer(chat_server, tmp_path, capsys):
    import soundfile as sf

    from llmvox.cli import main

    url, _ = chat_server
    out = tmp_path / "answer.wav"
    assert main(["client", "--url", url, "--text", QUESTION, "--out", str(out), "--no_play",
                 "--json", str(tmp_path / "t.json")]) == 0
    audio, rate = sf.read(out)
    assert rate == 24000 and len(audio) > 0
    printed = capsys.readouterr().out
    assert "question: What is the capital of France?" in printed and "real-time factor" in printed


@pytest.mark.slow
def test_openai_chat_completions_with_audio(chat_server, question_16k):
    """The official openai client streams text and speech from /v1/chat/completions."""
    openai = pytest.importorskip("openai")
    import io

    import soundfile as sf

    url, _ = chat_server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    stream = client.chat.completions.create(model="llmvox", modalities=["text", "audio"],
                                            audio={"voice": "default", "format": "pcm16"}, stream=True,
                                            messages=[{"role": "user", "content": QUESTION}])
    transcript, pcm = [], b""
    for event in stream:
        audio = getattr(event.choices[0].delta, "audio", None) if event.choices else None
        if audio:
            transcript.append(getattr(audio, "transcript", None) or "")
            pcm += base64.b64decode(getattr(audio, "data", None) or "")
    assert "paris" in "".join(transcript).lower() and len(pcm) > 0 and len(pcm) % 2 == 0
    # a spoken question (input_audio, WAV) without streaming: one message with the whole answer as WAV
    buffer = io.BytesIO()
    sf.write(buffer, question_16k, 16000, format="WAV")
    result = client.chat.completions.create(model="llmvox", modalities=["text", "audio"],
                                            audio={"voice": "default", "format": "wav"}, messages=[
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {
            "data": base64.b64encode(buffer.getvalue()).decode(), "format": "wav"}}]}])
    message = result.choices[0].message
    samples, rate = sf.read(io.BytesIO(base64.b64decode(message.audio.data)))
    assert rate == 24000 and len(samples) > 0 and message.audio.transcript
    # text only: a plain chat proxy
    text = client.chat.completions.create(model="llmvox", messages=[{"role": "user", "content": QUESTION}])
    assert "paris" in text.choices[0].message.content.lower()
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="llmvox", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://example.com/x.png"}}]}])


@pytest.mark.slow
def test_chat_completions_speak_every_format_the_server_encodes(chat_server):
    """The one response writer serves chat too: audio.format takes any of the server's formats, streamed
    or not, and an unknown one is a 400 naming the field."""
    import io

    import httpx
    import soundfile as sf

    url, _ = chat_server
    ask = {"model": "llmvox", "modalities": ["text", "audio"], "messages": [{"role": "user", "content": QUESTION}]}
    r = httpx.post(url + "/v1/chat/completions", json={**ask, "audio": {"format": "flac"}}, timeout=120)
    assert r.status_code == 200, r.text
    data = base64.b64decode(r.json()["choices"][0]["message"]["audio"]["data"])
    assert data[:4] == b"fLaC"
    samples, rate = sf.read(io.BytesIO(data))
    assert rate == 24000 and len(samples) > 0
    wav = httpx.post(url + "/v1/chat/completions", json={**ask, "audio": {"format": "wav"}}, timeout=120).json()
    whole = base64.b64decode(wav["choices"][0]["message"]["audio"]["data"])
    assert int.from_bytes(whole[4:8], "little") == len(whole) - 8  # a whole file: its sizes are filled in
    formats = httpx.get(url + "/health").json()["formats"]
    fmt = "mp3" if "mp3" in formats else "flac"
    with httpx.stream("POST", url + "/v1/chat/completions", json={**ask, "stream": True, "audio": {"format": fmt}},
                      timeout=120) as streamed:
        events = [json.loads(line[6:]) for line in streamed.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    audio = b"".join(base64.b64decode(e["choices"][0]["delta"].get("audio", {}).get("data") or "") for e in events)
    assert audio[:1] == b"\xff" if fmt == "mp3" else audio[:4] == b"fLaC"  # MPEG frames / a FLAC stream
    bad = httpx.post(url + "/v1/chat/completions", json={**ask, "audio": {"format": "aiff"}}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "audio.format"
