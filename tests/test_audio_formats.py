"""Telephony audio (G.711 mu-law / A-law, raw and in WAV) and other output rates, end to end.

The encoders are checked against libsndfile (soundfile decodes every byte the server sends), the
streaming resampler against soxr's one-shot answer, and the server through a real uvicorn on loopback
with the official `openai` client, httpx and `websockets`.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import warnings

import httpx
import numpy as np
import pytest
import soundfile as sf
import soxr
from test_server import AUTH, KEY, MAX_CODES, LiveServer, settings, voice  # noqa: F401 - `voice`: the parity voice

from llmvox.errors import LLMVoXError
from llmvox.server.app import create_app
from llmvox.server.audio_out import _g711_table, make_encoder, output_rate, to_g711

SR = 24000
SUBTYPES = {"mulaw": "ULAW", "alaw": "ALAW"}


def g711_decode(data: bytes, law: str) -> np.ndarray:
    """libsndfile's G.711 decoder (the standard tables), as int16."""
    return sf.read(io.BytesIO(data), dtype="int16", format="RAW", subtype=SUBTYPES[law], samplerate=8000,
                   channels=1)[0]


def chunked(encoder, x: np.ndarray, sizes=(137, 3200, 7, 961, 4800)) -> bytes:
    """`x` through `encoder` in uneven chunks, as the engine's chunk plan hands them over."""
    out, i, k = [], 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        out.append(encoder.encode(x[i:i + n]))
        i, k = i + n, k + 1
    return b"".join(out) + encoder.finish()


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(np.asarray(a[:n], np.float64), np.asarray(b[:n], np.float64))[0, 1])


# ---- the encoders, without a server ---------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_streaming_resampler_chunked_equals_one_shot(rate):
    rng = np.random.default_rng(rate)
    t = np.arange(SR) / SR
    x = (0.4 * np.sin(2 * np.pi * 1000 * t) + 0.05 * rng.standard_normal(SR)).astype(np.float32)
    encoder = make_encoder("f32", SR, rate)
    assert encoder.sample_rate == rate
    got = np.frombuffer(chunked(encoder, x), "<f4")
    whole = soxr.resample(x, SR, rate)
    assert len(got) == len(whole) == round(SR * rate / SR)
    assert np.abs(got - whole).max() < 1e-5  # no seams: the same signal as resampling it all at once
    spectrum = np.abs(np.fft.rfft(got))
    assert abs(np.argmax(spectrum) * rate / len(got) - 1000) < 2  # and still a 1 kHz tone
    # after a sentence's end (drain) the next sentence starts afresh: the same as a new encoder's
    again = make_encoder("f32", SR, rate)
    first = again.encode(x[:5000]) + again.drain()
    second = again.encode(x[:5000]) + again.drain()
    assert first == second and len(first) == round(5000 * rate / SR) * 4


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_g711_against_libsndfile(law):
    x = np.arange(-32768, 32768, dtype=np.int32)
    ours = _g711_table(law)
    assert np.array_equal(ours[:32768][::-1] ^ 0x80, ours[32768:])  # x and -1-x: only the sign bit differs
    theirs = np.frombuffer(sf_encode(x.astype(np.int16), law), np.uint8)
    differ = ours != theirs
    assert differ.sum() <= 127  # libsndfile codes |x| (not ~x) for some negatives: one step at a boundary
    decoded = g711_decode(ours.tobytes(), law).astype(np.int32)
    levels = np.unique(g711_decode(bytes(range(256)), law).astype(np.int32))
    below = levels[np.clip(np.searchsorted(levels, x, side="right") - 1, 0, len(levels) - 1)]
    above = levels[np.clip(np.searchsorted(levels, x, side="left"), 0, len(levels) - 1)]
    assert np.all((decoded == below) | (decoded == above))  # every sample gets a level next to it
    # float input goes through the same 16-bit rounding as pcm
    samples = np.array([0.0, 0.5, -0.5, 1.5, -1.5], np.float32)
    assert to_g711(samples, law) == ours[np.rint(np.clip(samples, -1, 1) * 32767).astype(np.int32) + 32768].tobytes()


def test_alaw_is_the_reference_encoder():
    """A-law is bit-exact with Sun's reference g711.c (Python's audioop, deprecated, still in 3.11)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    x = np.arange(-32768, 32768, dtype=np.int16)
    assert audioop.lin2alaw(x.tobytes(), 2) == _g711_table("alaw").tobytes()


def sf_encode(x: np.ndarray, law: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, 8000, format="RAW", subtype=SUBTYPES[law])
    return buf.getvalue()


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_g711_wav_header_is_libsndfiles(law):
    x = (0.3 * np.sin(np.arange(3 * 8000) * 0.01)).astype(np.float32)
    encoder = make_encoder(f"{law}_wav", SR)
    streamed = chunked(encoder, x)
    assert encoder.sample_rate == 8000 and encoder.content_type == "audio/wav"
    tag, channels, rate, byte_rate, align, bits, extra = struct.unpack("<HHIIHHH", streamed[20:38])
    assert (tag, channels, rate, byte_rate, align, bits, extra) == ({"mulaw": 7, "alaw": 6}[law], 1, 8000, 8000, 1, 8, 0)
    assert streamed[38:42] == b"fact" and streamed[50:54] == b"data" and streamed[54:58] == b"\xff" * 4
    whole = encoder.whole_file(streamed)
    buf = io.BytesIO()
    sf.write(buf, g711_decode(streamed[58:], law), 8000, format="WAV", subtype=SUBTYPES[law])
    assert whole[:58] == buf.getvalue()[:58]  # sizes and the fact chunk's sample count filled in as libsndfile does
    for data in (streamed, whole):  # both read back, at 8 kHz, all of it
        info = sf.info(io.BytesIO(data))
        audio, got_rate = sf.read(io.BytesIO(data), dtype="int16")
        assert (info.subtype, got_rate, len(audio)) == (SUBTYPES[law], 8000, len(x) // 3)
        assert np.array_equal(audio, g711_decode(streamed[58:], law))


@pytest.mark.parametrize("fmt,asked,expected", [
    ("pcm", None, 24000), ("wav", 16000, 16000), ("flac", "44100", 44100), ("mp3", 22050.0, 22050),
    ("opus", 48000, 48000), ("mulaw", None, 8000), ("alaw", 8000, 8000), ("alaw_wav", None, 8000),
    ("pcm", 12345, "invalid_sample_rate"), ("wav", "fast", "invalid_sample_rate"), ("pcm", True, "invalid_sample_rate"),
    ("pcm", "9" * 5000, "invalid_sample_rate"), ("pcm", float("nan"), "invalid_sample_rate"),
    ("mulaw", 16000, "unsupported_sample_rate"), ("mulaw_wav", 24000, "unsupported_sample_rate"),
    ("opus", 44100, "unsupported_sample_rate"),
])
def test_output_rate_table(fmt, asked, expected):
    if isinstance(expected, int):
        assert output_rate(fmt, asked, SR) == expected
        return
    with pytest.raises(LLMVoXError) as info:
        output_rate(fmt, asked, SR)
    assert (info.value.code, info.value.http_status, info.value.param) == (expected, 400, "sample_rate")


# ---- the server -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(voice):  # noqa: F811 - the parity voice fixture
    live = LiveServer(create_app(settings(), tts=voice))
    yield live
    live.stop()


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


TEXT = "Telephony audio works. It is eight kilohertz."


def speech(client, fmt: str, **extra) -> httpx.Response:
    r = client.post("/v1/audio/speech", json={"input": TEXT, "response_format": fmt, **extra})
    assert r.status_code == 200, r.text
    return r


@pytest.fixture(scope="module")
def reference(server) -> np.ndarray:
    """The answer as the voice says it: float32 at 24 kHz (`/tts`)."""
    r = httpx.post(server.url + "/tts", json={"text": TEXT}, headers=AUTH, timeout=60)
    assert r.status_code == 200
    audio = np.frombuffer(r.content, "<f4")
    assert len(audio) == 2 * MAX_CODES * 320
    return audio


def test_openai_client_speaks_mulaw(server, reference):
    """The official client sends any response_format string (its Literal is a type hint only)."""
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    with api.audio.speech.with_streaming_response.create(model="llmvox", voice="alloy", input=TEXT,
                                                         response_format="mulaw") as response:
        assert response.headers["content-type"] == "audio/basic" and response.headers["x-sample-rate"] == "8000"
        data = b"".join(response.iter_bytes())
    decoded = g711_decode(data, "mulaw") / 32768.0
    assert abs(len(decoded) / 8000 - len(reference) / SR) < 0.002  # the same duration, within 2 ms
    expected = soxr.resample(reference, SR, 8000)
    assert correlation(decoded, expected) > 0.99
    assert np.sqrt(np.mean((decoded - expected[:len(decoded)]) ** 2)) < 0.05 * np.sqrt(np.mean(expected ** 2)) + 1e-4
    # and a sample rate through the client's extra_body: pcm at 16 kHz
    with api.audio.speech.with_streaming_response.create(model="llmvox", voice="alloy", input=TEXT,
                                                         response_format="pcm",
                                                         extra_body={"sample_rate": 16000}) as response:
        assert response.headers["x-sample-rate"] == "16000"
        pcm = np.frombuffer(b"".join(response.iter_bytes()), "<i2")
    one_shot = np.rint(np.clip(soxr.resample(reference, SR, 16000), -1, 1) * 32767)
    assert len(pcm) == len(one_shot) and np.abs(pcm - one_shot).max() <= 1  # streamed == resampled whole
    with pytest.raises(openai.BadRequestError, match="G.711"):
        api.audio.speech.create(model="llmvox", voice="alloy", input=TEXT, response_format="mulaw",
                                extra_body={"sample_rate": 16000})


@pytest.mark.parametrize("fmt,ctype,subtype", [("alaw", "audio/x-alaw-basic", "ALAW"), ("g711_ulaw", "audio/basic", "ULAW"),
                                               ("mulaw_wav", "audio/wav", "ULAW"), ("alaw_wav", "audio/wav", "ALAW")])
def test_g711_formats(client, reference, fmt, ctype, subtype):
    r = speech(client, fmt)
    assert r.headers["content-type"] == ctype and r.headers["x-sample-rate"] == "8000"
    if fmt.endswith("_wav"):
        info = sf.info(io.BytesIO(r.content))
        assert (info.format, info.subtype, info.samplerate) == ("WAV", subtype, 8000)
        decoded, _ = sf.read(io.BytesIO(r.content), dtype="float32")
    else:
        decoded = g711_decode(r.content, subtype.lower().replace("ulaw", "mulaw")) / 32768.0
    assert len(decoded) == round(len(reference) / 3)
    assert correlation(decoded, soxr.resample(reference, SR, 8000)) > 0.99


@pytest.mark.parametrize("fmt,rate", [("pcm", 8000), ("pcm", 48000), ("wav", 22050), ("flac", 44100), ("wav", 24000)])
def test_sample_rate_for_pcm_wav_flac(client, reference, fmt, rate):
    r = speech(client, fmt, sample_rate=rate)
    assert r.headers["x-sample-rate"] == str(rate)
    if fmt == "pcm":
        got = np.frombuffer(r.content, "<i2")
    elif fmt == "wav":
        assert struct.unpack("<I", r.content[24:28])[0] == rate
        got = np.frombuffer(r.content[44:], "<i2")
    else:
        reader = sf.SoundFile(io.BytesIO(r.content))  # streamed FLAC has no length: read block by block
        assert reader.samplerate == rate
        blocks = []
        try:
            while len(block := reader.read(4096, dtype="int16")):
                blocks.append(block)
        except sf.LibsndfileError:  # libsndfile's reader stumbles at the end of a length-less stream
            pass
        got = np.concatenate(blocks)
    one_shot = np.rint(np.clip(soxr.resample(reference, SR, rate) if rate != SR else reference, -1, 1) * 32767)
    assert len(got) >= 0.8 * len(one_shot) and np.abs(got - one_shot[:len(got)]).max() <= 1
    if fmt != "flac":
        assert len(got) == len(one_shot)


@pytest.mark.parametrize("fmt,rate", [("mp3", 16000), ("mp3", 44100), ("opus", 48000), ("opus", 8000)])
def test_sample_rate_for_mp3_opus(client, reference, fmt, rate):
    r = speech(client, fmt, sample_rate=rate)
    decoded, got_rate = sf.read(io.BytesIO(r.content), dtype="float32")
    assert r.headers["x-sample-rate"] == str(rate) and got_rate == rate
    assert abs(len(decoded) / rate - len(reference) / SR) < 0.1 and np.abs(decoded).max() > 0.001


def test_sse_carries_mulaw(client):
    raw = speech(client, "mulaw").content
    r = client.post("/v1/audio/speech", json={"input": TEXT, "response_format": "mulaw", "stream_format": "sse"})
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert events[-1]["type"] == "speech.audio.done" and audio == raw


@pytest.mark.parametrize("body,code,message", [
    ({"response_format": "pcm", "sample_rate": 12345}, "invalid_sample_rate", "sample_rate 12345 is not supported"),
    ({"response_format": "mulaw", "sample_rate": 16000}, "unsupported_sample_rate", "G.711"),
    ({"response_format": "alaw_wav", "sample_rate": 48000}, "unsupported_sample_rate", "G.711"),
    ({"response_format": "opus", "sample_rate": 22050}, "unsupported_sample_rate", "8000, 16000, 24000, 48000"),
    ({"response_format": "wav", "sample_rate": 0}, "invalid_sample_rate", "use one of 8000"),
])
def test_bad_rates_are_one_clear_400(client, body, code, message):
    r = client.post("/v1/audio/speech", json={"input": TEXT, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (code, "sample_rate", "invalid_request_error")
    assert message in error["message"] and "\n" not in error["message"]
    assert client.get("/health").status_code == 200
    assert len(speech(client, "mulaw").content) == round(2 * MAX_CODES * 320 / 3)  # and it keeps serving
    r = client.post("/v1/audio/speech", json={"input": TEXT, "response_format": "pcm", "sample_rate": "fast"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_type"
    r = client.post("/v1/audio/speech", content='{"input": "hi", "sample_rate": %s}' % ("9" * 5000),
                    headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500 and r.json()["error"]["message"]


# ---- WS /v1/stream ----------------------------------------------------------------------------------


def ws_say(server, query: str, text: str) -> tuple[dict, list[dict], bytes]:
    from websockets.sync.client import connect

    events, audio = [], []
    with connect(f"ws://127.0.0.1:{server.port}/v1/stream?{query}", additional_headers=AUTH) as ws:
        ready = json.loads(ws.recv(timeout=10))
        ws.send(json.dumps({"type": "text", "text": text}))
        ws.send(json.dumps({"type": "end"}))
        while True:
            msg = ws.recv(timeout=60)
            if isinstance(msg, bytes):
                audio.append(msg)
                continue
            events.append(json.loads(msg))
            if events[-1]["type"] in ("done", "error"):
                return ready, events, b"".join(audio)


def test_websocket_mulaw_and_rates(server, reference):
    ready, events, audio = ws_say(server, "format=mulaw", TEXT)
    assert (ready["type"], ready["sample_rate"], ready["format"], ready["channels"]) == ("ready", 8000, "mulaw", 1)
    assert events[-1]["type"] == "done" and [e["type"] for e in events].count("segment") == 2
    decoded = g711_decode(audio, "mulaw") / 32768.0
    # each sentence is resampled and drained on its own, so all its audio is out before the next one's
    per_sentence = np.concatenate([soxr.resample(half, SR, 8000) for half in np.split(reference, 2)])
    assert abs(len(decoded) - len(per_sentence)) <= 1 and correlation(decoded, per_sentence) > 0.99
    ready, events, audio = ws_say(server, "format=pcm&sample_rate=16000", TEXT)
    assert (ready["sample_rate"], ready["format"]) == (16000, "pcm_s16le") and events[-1]["type"] == "done"
    pcm = np.frombuffer(audio, "<i2")
    one_shot = np.concatenate([np.rint(np.clip(soxr.resample(h, SR, 16000), -1, 1) * 32767)
                               for h in np.split(reference, 2)])
    assert len(pcm) == len(one_shot) and np.abs(pcm - one_shot).max() <= 1
    ready, _, audio = ws_say(server, "format=alaw", TEXT)
    assert (ready["sample_rate"], ready["format"]) == (8000, "alaw") and len(audio) == len(decoded)


def test_websocket_cancel_leaves_nothing_in_the_resampler(server):
    """Audio held by the resampler when a sentence is cancelled never reaches the next one."""
    from websockets.sync.client import connect

    _, _, fresh = ws_say(server, "format=mulaw", "After the cancel.")
    with connect(f"ws://127.0.0.1:{server.port}/v1/stream?format=mulaw", additional_headers=AUTH) as ws:
        json.loads(ws.recv(timeout=10))
        ws.send(json.dumps({"type": "text", "text": "A long text to cancel. " * 8}))
        ws.send(json.dumps({"type": "flush"}))
        while not isinstance(ws.recv(timeout=30), bytes):
            pass
        ws.send(json.dumps({"type": "cancel"}))
        while not (isinstance(msg := ws.recv(timeout=30), str) and json.loads(msg)["type"] == "cancelled"):
            pass
        ws.send(json.dumps({"type": "text", "text": "After the cancel."}))
        ws.send(json.dumps({"type": "end"}))
        audio = []
        while not (isinstance(msg := ws.recv(timeout=60), str) and json.loads(msg)["type"] == "done"):
            if isinstance(msg, bytes):
                audio.append(msg)
    assert b"".join(audio) == fresh


@pytest.mark.parametrize("query,code", [("format=mulaw&sample_rate=16000", "unsupported_sample_rate"),
                                        ("format=pcm&sample_rate=1234", "invalid_sample_rate"),
                                        ("format=mp3", "invalid_format")])
def test_websocket_bad_rate_is_refused(server, query, code):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as info:
        connect(f"ws://127.0.0.1:{server.port}/v1/stream?{query}", additional_headers=AUTH)
    assert info.value.response.status_code == 400
    body = json.loads(info.value.response.body)
    assert body["error"]["code"] == code
    with connect(f"ws://127.0.0.1:{server.port}/v1/stream?format=f32&sample_rate=48000",
                 additional_headers=AUTH) as ws:  # and the next one is served
        ready = json.loads(ws.recv(timeout=10))
        assert (ready["sample_rate"], ready["format"]) == (48000, "f32le")


# ---- chat completions: audio.format and audio.sample_rate ------------------------------------------


@pytest.mark.slow
def test_chat_completions_speak_g711_and_other_rates(parity_dir):
    from _chat_models import QUESTION
    from test_chat import chat_server

    fixture = chat_server.__wrapped__(parity_dir)  # the chat server of test_chat (SmolLM2 + Whisper)
    url, _ = next(fixture)
    try:
        ask = {"model": "llmvox", "modalities": ["text", "audio"], "messages": [{"role": "user", "content": QUESTION}]}
        for audio, subtype, rate in (({"format": "mulaw_wav"}, "ULAW", 8000), ({"format": "g711_alaw"}, None, 8000),
                                     ({"format": "wav", "sample_rate": 16000}, "PCM_16", 16000)):
            r = httpx.post(url + "/v1/chat/completions", json={**ask, "audio": audio}, timeout=120)
            assert r.status_code == 200, r.text
            data = base64.b64decode(r.json()["choices"][0]["message"]["audio"]["data"])
            if subtype is None:
                assert len(g711_decode(data, "alaw")) == len(data) > 0
                continue
            info = sf.info(io.BytesIO(data))
            assert (info.subtype, info.samplerate) == (subtype, rate) and info.frames > 0
            assert int.from_bytes(data[4:8], "little") == len(data) - 8  # a whole file: sizes filled in
        bad = httpx.post(url + "/v1/chat/completions", json={**ask, "audio": {"format": "mulaw", "sample_rate": 16000}},
                         timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "audio.sample_rate"
    finally:
        next(fixture, None)
