"""Word timestamps: the aligner head's probe in the batched step, the word times it gives, and every
transport that carries them (WebSocket, SSE, captioned JSON), on a real server with the embedded voice."""

from __future__ import annotations

import base64
import copy
import io
import json

import httpx
import pytest
import soundfile as sf
import torch

from llmvox.engine.config import StreamConfig
from llmvox.model.aligner import Aligner, word_spans, word_steps
from llmvox.server.app import create_app
from llmvox.server.settings import ServerSettings
from llmvox.text.normalize import normalize
from tests.test_server import AUTH, KEY, LiveServer

TEXT = "The quick brown fox jumps over the lazy dog. It was a sunny day in the park."
LONG = ("A small bird sat on the branch and sang a long song to the morning sun. The farmer walked to the "
        "field with his old dog and a basket of bread. Later the rain came and everyone went home.")


@pytest.fixture(scope="module")
def embedded():
    from llmvox.api import LLMVoX

    torch.set_num_threads(1)
    return LLMVoX.from_pretrained()


@pytest.fixture(scope="module")
def server(embedded):
    plain = copy.copy(embedded)  # the same weights, without an aligner
    plain.aligner = None
    settings = ServerSettings(chat_type="tts", api_key=KEY, max_text_chars=600, threads=1, num_workers=1,
                              stream=StreamConfig(max_audio_length=400))
    live = LiveServer(create_app(settings, voices={"default": embedded, "plain": plain}, default_voice="default"))
    yield live
    live.stop()


def _words(text: str) -> list[str]:
    return normalize(text).split()


def check_words(words: list[dict], text: str, audio_seconds: float) -> None:
    """The text's words, in order, with monotonic times inside the audio."""
    assert [w["word"] for w in words] == _words(text)
    assert [w["index"] for w in words] == list(range(len(words)))
    last = 0.0
    for w in words:
        assert last - 1e-6 <= w["start"] <= w["end"] <= audio_seconds + 1e-3, (w, audio_seconds)
        last = w["start"]
    assert words[-1]["end"] > 0.5 * audio_seconds  # not all bunched at the start


# ---- the probe and the word times ----------------------------------------------------------------


def test_probe_matches_full_attention_and_leaves_logits_unchanged(embedded):
    """The probed heads' attention in a batched step is the same as a full forward's, and the step's
    logits do not change with a probe."""
    from llmvox.model.gpt import HeadProbe
    from llmvox.train.alignment import head_attention

    gpt = embedded.decoder.gpt
    torch.manual_seed(0)
    x = torch.randn(1, 12, gpt.config.n_embd)
    x = x / x.norm(dim=-1, keepdim=True)
    kept = {}
    hook = gpt.transformer.h[4].attn.register_forward_pre_hook(lambda m, a: kept.update(x=a[0]))
    with torch.no_grad():
        gpt(x)
    hook.remove()
    full = head_attention(gpt, 4, kept["x"], [0, 5]).mean(1)[0]  # (T, T)
    cache, plain_cache = gpt.new_cache(2, 16), gpt.new_cache(2, 16)
    for t in range(12):
        rows = torch.cat([x[:, t], x[:, t]])
        probe = HeadProbe(4, (0, 5))
        pos = torch.tensor([t, t])
        logits = gpt.step(rows, pos, cache, t, probe)
        assert torch.allclose(logits, gpt.step(rows, pos, plain_cache, t), atol=1e-5)
        assert torch.allclose(probe.probs[0, : t + 1], full[t, : t + 1], atol=1e-4)


def test_word_steps_follow_the_read_position():
    ids = [10, 11, 1, 20, 21, 22, 1, 30, 31, 1, 385]  # three words, then the sentence end
    spans = word_spans(ids)
    assert spans == [(0, 3), (3, 7), (7, 10)]
    reads = [0, 0, 1, 1, 1, 3, 5, 4, 4, 5, 7, 8, 8, 9]  # a step back (4 after 5) does not count
    # targets: a + 1 (at most the word's </s>); crossings interpolated (3 -> 5 reaches 4 at 5.5)
    assert word_steps(spans, reads, len(reads), True, lead=1) == [(2.0, 5.5), (5.5, 11.0), (11.0, 13.0)]
    assert word_steps(spans, reads[:8], 8, False, lead=1) == [(2.0, 5.5), (5.5, None)]  # its end: unknown yet
    # a head that never reaches the last word: it still gets frames once the segment is finished
    got = word_steps(spans, [0, 1, 1, 4, 4, 4, 4, 4], 8, True, lead=1)
    assert len(got) == 3 and all(s <= e for s, e in got) and got[-1][1] == 8
    assert Aligner(4, (0,), 1, 2.0).steps(spans, reads, len(reads), True)[:2] == [(0.0, 7.5), (7.5, 13.0)]
    with pytest.raises(Exception, match="aligner"):
        Aligner.from_config({"layer": 9, "head": 0}, 6, 6)


def test_a_transcript_says_when_its_words_are_complete(embedded):
    """A chat transcript's text is done when the LLM stops, seconds before its speech is: `words_done`
    tells a client (the browser UI polls it) to keep reading the word times until the stream has
    finished, when every word is there."""
    from llmvox.engine.engine import SpeechEngine
    from llmvox.engine.word_times import transcript_words

    with SpeechEngine(embedded, num_workers=1, threads=1,
                      config=StreamConfig(max_audio_length=400, word_timestamps=True)) as engine:
        stream = engine.open()
        stream.feed(TEXT)
        stream.end()
        snapshot = {"answer": TEXT, "done": True}  # the LLM's part is over
        early = transcript_words(snapshot, stream)
        assert early["words_done"] is False and len(early["words"]) < len(_words(TEXT))
        audio = sum(len(c.samples) for c in stream.chunks(timeout=120))
        late = transcript_words(snapshot, stream)
    assert late["words_done"] is True
    check_words(late["words"], TEXT, audio / 24000)
    assert transcript_words(snapshot, None) == snapshot  # a stream without times: the text alone


# ---- transports ----------------------------------------------------------------------------------


def test_websocket_carries_words(server):
    from websockets.sync.client import connect

    words, audio = [], 0
    with connect(f"ws://127.0.0.1:{server.port}/v1/stream?timestamps=true", additional_headers=AUTH) as ws:
        assert json.loads(ws.recv())["type"] == "ready"
        ws.send(json.dumps({"type": "text", "text": TEXT}))
        ws.send(json.dumps({"type": "end"}))
        for message in ws:
            if isinstance(message, bytes):
                audio += len(message) // 2
                continue
            event = json.loads(message)
            if event["type"] == "words":
                assert all(w["start"] <= audio / 24000 + 1e-3 for w in event["words"])  # heard before it says so
                words += event["words"]
            elif event["type"] == "done":
                done = event
    check_words(words, TEXT, audio / 24000)
    assert done["last_word"] == words[-1]


def test_sse_carries_words(server):
    body = {"model": "llmvox", "input": TEXT, "voice": "default", "response_format": "pcm", "stream_format": "sse",
            "timestamps": True}
    words, audio = [], b""
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", json=body, headers=AUTH, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "speech.audio.delta":
                audio += base64.b64decode(event["audio"])
            words += event.get("words", [])
    check_words(words, TEXT, len(audio) / 2 / 24000)


def test_captioned_speech(server):
    r = httpx.post(f"{server.url}/v1/audio/speech/captioned", headers=AUTH, timeout=120,
                   json={"model": "llmvox", "input": TEXT, "voice": "default", "response_format": "wav"})
    assert r.status_code == 200, r.text
    body = r.json()
    audio, rate = sf.read(io.BytesIO(base64.b64decode(body["audio"])))
    assert rate == body["sample_rate"] == 24000
    check_words(body["words"], TEXT, len(audio) / rate)


def test_bad_timestamp_requests_are_clear_400s(server):
    base = {"model": "llmvox", "input": "Hello there.", "voice": "default", "timestamps": True}
    r = httpx.post(f"{server.url}/v1/audio/speech", headers=AUTH, json={**base, "response_format": "pcm"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "timestamps_unsupported_format"
    r = httpx.post(f"{server.url}/v1/audio/speech/captioned", headers=AUTH, json={**base, "voice": "plain"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "timestamps_unavailable"
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as info:
        connect(f"ws://127.0.0.1:{server.port}/v1/stream?timestamps=1&voice=plain", additional_headers=AUTH)
    assert info.value.response.status_code == 400
    with connect(f"ws://127.0.0.1:{server.port}/v1/stream?timestamps=1", additional_headers=AUTH) as ws:
        assert json.loads(ws.recv())["type"] == "ready"
        ws.send(json.dumps({"type": "text", "text": "Hi.", "voice": "plain"}))
        assert json.loads(ws.recv())["code"] == "timestamps_unavailable"  # the session goes on
    r = httpx.post(f"{server.url}/v1/audio/speech", headers=AUTH, json={**base, "timestamps": False})
    assert r.status_code == 200 and len(r.content) > 1000  # still serving


def test_cancel_reports_the_last_word_sent(server):
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{server.port}/v1/stream?timestamps=true", additional_headers=AUTH) as ws:
        assert json.loads(ws.recv())["type"] == "ready"
        ws.send(json.dumps({"type": "text", "text": LONG}))
        ws.send(json.dumps({"type": "flush"}))
        sent = []
        while len(sent) < 3:
            message = ws.recv(timeout=60)
            if isinstance(message, str) and json.loads(message)["type"] == "words":
                sent += json.loads(message)["words"]
        ws.send(json.dumps({"type": "cancel"}))
        while True:
            message = ws.recv(timeout=60)
            if isinstance(message, bytes):
                continue
            event = json.loads(message)
            if event["type"] == "words":
                sent += event["words"]
            if event["type"] == "cancelled":
                break
    assert event["last_word"] == sent[-1]
    assert sent[-1]["index"] < len(_words(LONG)) - 1  # cut short: the listener's context ends there


# ---- accuracy ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_word_times_agree_with_whisper(embedded):
    """Against faster-whisper's word timestamps of the same audio, on 10 held-out sentences."""
    from llmvox.asr.whisper import WhisperASR
    from llmvox.bench.intelligibility import read_sentences
    from llmvox.bench.word_timestamps import HELDOUT, evaluate

    result = evaluate(embedded, WhisperASR(threads=1), read_sentences(HELDOUT)[-10:], log=None)
    assert result["boundaries"] >= 100  # most words matched
    assert result["p50_ms"] < 150, result



@pytest.mark.slow
def test_chat_transcript_has_the_spoken_words(embedded):
    """A spoken chat turn (SmolLM2 through llama.cpp, the embedded voice): its transcript carries the
    answer's word times and the last word heard."""
    pytest.importorskip("llama_cpp")
    import difflib

    settings = ServerSettings(chat_type="text", api_key=KEY, num_workers=1, threads=1,
                              chat_options={"llm_max_tokens": 24, "llm_temperature": 0.0,
                                            "system_prompt": "You answer in one short sentence."},
                              stream=StreamConfig(max_audio_length=400))
    live = LiveServer(create_app(settings, tts=embedded))
    try:
        r = httpx.post(f"{live.url}/textchat", headers=AUTH, json={"text": "What is the capital of France?"},
                       timeout=300)
        assert r.status_code == 200 and len(r.content) > 0
        turn = httpx.get(f"{live.url}/v1/transcripts/{r.headers['x-llmvox-request-id']}?wait=30", headers=AUTH).json()
    finally:
        live.stop()
    words = turn["words"]
    spoken = [w["word"] for w in words]
    assert difflib.SequenceMatcher(a=spoken, b=normalize(turn["answer"]).split()).ratio() > 0.8, (spoken, turn)
    check_words(words, " ".join(spoken), len(r.content) / 4 / 24000)
    assert turn["last_word"] == words[-1] and turn["words_done"] is True
