"""The TTS server end to end: real uvicorn on a loopback port, the parity voice, real clients.

The parity decoder never emits end-of-audio, so every sentence is `MAX_CODES` codes (or one code per
text id for long sentences) and every stream has a known length.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import uvicorn

from llmvox.engine.config import StreamConfig
from llmvox.server.app import create_app
from llmvox.server.audio_out import TimeStretcher
from llmvox.server.settings import ServerSettings

MAX_CODES = 40
KEY = "test-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving an app in a thread, as `llmvox serve` does in its main thread."""

    def __init__(self, app):
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, access_log=False,
                                lifespan="on", timeout_graceful_shutdown=3)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture(scope="module")
def voice(parity_dir):
    from llmvox.api import LLMVoX

    torch.set_num_threads(1)
    return LLMVoX.from_original(
        str(parity_dir / "llmvox.pt"), str(parity_dir / "byt5_g2p"), str(parity_dir / "wavtokenizer_small.yaml"),
        str(parity_dir / "wavtokenizer.ckpt"), max_audio_length=MAX_CODES,
    )


def settings(**kw) -> ServerSettings:
    base = dict(chat_type="tts", api_key=KEY, max_text_chars=600, threads=1, num_workers=2,
                stream=StreamConfig(max_audio_length=MAX_CODES), cors_origins=["https://app.example"])
    base.update(kw)
    return ServerSettings(**base)


@pytest.fixture(scope="module")
def server(voice):
    live = LiveServer(create_app(settings(), tts=voice))
    yield live
    live.stop()


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


def speech(client, text: str, fmt: str = "pcm", **extra) -> httpx.Response:
    r = client.post("/v1/audio/speech", json={"model": "llmvox", "input": text, "voice": "default",
                                              "response_format": fmt, **extra})
    assert r.status_code == 200, r.text
    return r


def metric(client, name: str) -> float:
    text = client.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---------------------------------------------------------------------------------------------


def test_health_root_and_request_ids(client):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["sample_rate"] == 24000 and body["workers"] == 2
    assert {"pcm", "wav", "flac"} <= set(body["formats"])
    assert len(r.headers["x-request-id"]) == 16
    r = client.get("/", headers={"X-Request-ID": "my-id-123"})
    assert r.headers["x-request-id"] == "my-id-123" and "usage" in r.json()
    r = client.options("/v1/audio/speech", headers={"Origin": "https://app.example", "Access-Control-Request-Method":
                                                    "POST", "Access-Control-Request-Headers": "authorization"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"  # preflight


def test_tts_streams_float32_and_ends(client):
    chunks = []
    with client.stream("POST", "/tts", json={"text": "Hello world. This is the original endpoint!"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["x-sample-rate"] == "24000"
        for part in r.iter_raw():
            chunks.append(part)
    data = b"".join(chunks)
    audio = np.frombuffer(data, "<f4")
    assert len(audio) == 2 * MAX_CODES * 320
    assert len(chunks) >= 2  # streamed in pieces, then the response ended
    pcm = np.frombuffer(speech(client, "Hello world. This is the original endpoint!").content, "<i2")
    assert np.array_equal(pcm, np.rint(np.clip(audio, -1, 1) * 32767).astype(np.int16))


def test_speech_formats(client):
    import soundfile as sf

    text = "Formats are many. All of them stream."
    pcm = np.frombuffer(speech(client, text).content, "<i2")
    assert len(pcm) == 2 * MAX_CODES * 320
    wav = speech(client, text, "wav")
    assert wav.headers["content-type"] == "audio/wav" and wav.content[:4] == b"RIFF"
    assert np.array_equal(np.frombuffer(wav.content[44:], "<i2"), pcm)
    flac = speech(client, text, "flac").content
    assert flac[:4] == b"fLaC"
    reader = sf.SoundFile(io.BytesIO(flac))  # streamed FLAC leaves the length unknown: read block by block
    got = []
    try:
        while block := reader.read(4800, dtype="int16").tolist():
            got.extend(block)
    except sf.LibsndfileError:  # libsndfile's reader stumbles at the end of a length-less stream
        pass
    assert len(got) >= len(pcm) * 0.8 and np.array_equal(np.asarray(got, np.int16), pcm[: len(got)])
    for fmt, ctype in (("mp3", "audio/mpeg"), ("opus", "audio/ogg")):
        r = speech(client, text, fmt)
        assert r.headers["content-type"] == ctype
        decoded, rate = sf.read(io.BytesIO(r.content), dtype="float32")
        assert rate == 24000 and abs(len(decoded) - len(pcm)) < 0.1 * len(pcm) and np.abs(decoded).max() > 0.001


def test_sse_stream_format(client):
    text = "Server sent events. Base sixty four audio."
    pcm = speech(client, text).content
    r = client.post("/v1/audio/speech", json={"input": text, "response_format": "pcm", "stream_format": "sse"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["output_tokens"] == 2 * MAX_CODES
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) >= 2
    assert b"".join(base64.b64decode(e["audio"]) for e in deltas) == pcm


def test_speed_changes_duration_not_pitch(client):
    normal = np.frombuffer(speech(client, "Speed test sentence.").content, "<i2")
    fast = np.frombuffer(speech(client, "Speed test sentence.", speed=2.0).content, "<i2")
    assert abs(len(fast) / len(normal) - 0.5) < 0.03
    # the stretcher itself: a 220 Hz tone stays at 220 Hz at any speed
    sr = 24000
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(sr) / sr)).astype(np.float32)
    for speed in (0.5, 1.5):
        ts = TimeStretcher(speed, sr)
        out = np.concatenate([ts.process(tone[i:i + 2000]) for i in range(0, sr, 2000)] + [ts.process([], final=True)])
        assert abs(len(out) / sr - 1 / speed) < 0.03
        spec = np.abs(np.fft.rfft(out[2400:-2400]))
        assert abs(np.argmax(spec) * sr / (len(out) - 4800) - 220) < 3


def test_concurrent_requests_are_byte_identical_to_sequential(server, client):
    texts = ["One two three. Four five!", "A different request here?", "Numbers like 42 and 7.",
             "Short.", "Hello world, this is a test.", "Another voice line. With two sentences.",
             "Streams never mix.", "The last one, number eight."]
    sequential = [speech(client, t).content for t in texts]
    results: dict[int, bytes] = {}

    def go(i: int) -> None:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
            results[i] = speech(c, texts[i]).content

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(8):
        assert results[i] == sequential[i], f"request {i} differs when run concurrently"


def test_disconnect_frees_the_stream(voice, record_property):
    live = LiveServer(create_app(settings(stream=StreamConfig(max_audio_length=500)), tts=voice))
    try:
        with httpx.Client(base_url=live.url, headers=AUTH, timeout=30) as client:
            text = "This is a long answer that the client abandons early. " * 8
            with client.stream("POST", "/v1/audio/speech", json={"input": text, "response_format": "pcm"}) as r:
                body = r.iter_raw()  # keep a reference: dropping the iterator closes the connection
                next(body)
                assert metric(client, "llmvox_active_streams") == 1
                assert metric(client, "llmvox_worker_active_segments") >= 1
            closed = time.perf_counter()
            freed = None
            while time.perf_counter() - closed < 2:
                if (metric(client, "llmvox_active_streams") == 0
                        and metric(client, "llmvox_worker_active_segments") == 0):
                    freed = time.perf_counter() - closed
                    break
                time.sleep(0.005)
            record_property("freed_after_s", freed)
            assert freed is not None and freed < 0.1, f"stream freed after {freed} s"
            assert metric(client, "llmvox_client_disconnects_total") == 1
            assert client.get("/health").json()["active_streams"] == 0
            ok = client.post("/tts", json={"text": "Next one."})
            assert ok.status_code == 200 and len(ok.content) == 500 * 320 * 4
    finally:
        live.stop()


@pytest.mark.parametrize("path,body,headers,status,code", [
    ("/v1/audio/speech", {"input": ""}, AUTH, 400, "empty_text"),
    ("/v1/audio/speech", {"input": "   \n "}, AUTH, 400, "empty_text"),
    ("/v1/audio/speech", {"input": "x" * 601}, AUTH, 413, "text_too_long"),
    ("/v1/audio/speech", {"input": "*** ###"}, AUTH, 400, "nothing_to_say"),
    ("/v1/audio/speech", {"input": 5}, AUTH, 422, "invalid_type"),
    ("/v1/audio/speech", {"input": "hi", "speed": "fast"}, AUTH, 422, "invalid_type"),
    ("/v1/audio/speech", {"input": "hi", "response_format": "aac"}, AUTH, 400, "invalid_response_format"),
    ("/v1/audio/speech", {"input": "hi", "stream_format": "chunks"}, AUTH, 400, "invalid_stream_format"),
    ("/v1/audio/speech", {"input": "hi", "speed": 9}, AUTH, 400, "invalid_speed"),
    ("/v1/audio/speech", {"model": "llmvox"}, AUTH, 400, "missing_field"),
    ("/v1/audio/speech", b'{"input": "unterminated', AUTH, 400, "invalid_json"),
    ("/v1/audio/speech", b"", AUTH, 400, "missing_body"),
    ("/tts", {"text": ["a", "list"]}, AUTH, 422, "invalid_type"),
    ("/tts", {"prompt": "wrong field"}, AUTH, 400, "missing_field"),
    ("/tts", {"text": "no key"}, {}, 401, "missing_api_key"),
    ("/tts", {"text": "bad key"}, {"Authorization": "Bearer nope"}, 401, "invalid_api_key"),
    ("/metrics", None, {}, 401, "missing_api_key"),
    ("/nowhere", None, AUTH, 404, "not_found"),
])
def test_bad_input_gets_a_clear_4xx(server, path, body, headers, status, code):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        if body is None:
            r = c.get(path, headers=headers)
        elif isinstance(body, bytes):
            r = c.post(path, content=body, headers={**headers, "Content-Type": "application/json"})
        else:
            r = c.post(path, json=body, headers=headers)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["code"] == code and err["message"]
        # and the server keeps serving
        assert c.get("/health").status_code == 200
        ok = c.post("/tts", json={"text": "Still here."}, headers=AUTH)
        assert ok.status_code == 200 and len(ok.content) == MAX_CODES * 320 * 4


def test_openai_client_reads_speech(server, client):
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    text = "The official client works. It streams."
    with api.audio.speech.with_streaming_response.create(model="llmvox", voice="alloy", input=text,
                                                         response_format="pcm") as response:
        data = b"".join(response.iter_bytes())
    assert data == speech(client, text).content
    with pytest.raises(openai.BadRequestError, match="nothing to say"):
        api.audio.speech.create(model="llmvox", voice="alloy", input=" ")


def test_websocket_text_flush_cancel_end(server):
    from websockets.sync.client import connect

    def recv_until(ws, kind, audio):
        events = []
        while True:
            msg = ws.recv(timeout=30)
            if isinstance(msg, bytes):
                audio.append(msg)
                continue
            event = json.loads(msg)
            events.append(event)
            if event["type"] == kind:
                return events

    url = f"ws://127.0.0.1:{server.port}/v1/stream?format=pcm"
    with connect(url, additional_headers=AUTH) as ws:
        ready = json.loads(ws.recv(timeout=10))
        assert ready["type"] == "ready" and ready["sample_rate"] == 24000 and ready["format"] == "pcm_s16le"
        # deltas without a sentence end: nothing is final until the flush
        for piece in ["Hel", "lo the", "re my fri", "end"]:
            ws.send(json.dumps({"type": "text", "text": piece}))
        ws.send(json.dumps({"type": "flush"}))
        audio: list[bytes] = []
        events = recv_until(ws, "flushed", audio)
        assert events[0] == {"type": "segment", "index": 0, "text": "Hello there my friend"}
        assert sum(len(a) for a in audio) == MAX_CODES * 320 * 2
        # a long text, cancelled after its first audio: nothing of it arrives after "cancelled"
        ws.send(json.dumps({"type": "text", "text": "A long text to cancel. " * 8}))
        ws.send(json.dumps({"type": "flush"}))
        first = ws.recv(timeout=30)
        while not isinstance(first, bytes):
            first = ws.recv(timeout=30)
        ws.send(json.dumps({"type": "cancel"}))
        late: list[bytes] = []
        recv_until(ws, "cancelled", late)
        # bad messages get an error event and the session goes on
        ws.send("not json")
        assert json.loads(ws.recv(timeout=10))["code"] == "invalid_json"
        ws.send(json.dumps({"type": "dance"}))
        assert json.loads(ws.recv(timeout=10))["code"] == "unknown_type"
        ws.send(json.dumps({"type": "text", "text": "After the cancel. "}))
        ws.send(json.dumps({"type": "end"}))
        audio = []
        events = recv_until(ws, "done", audio)
        assert [e["type"] for e in events] == ["segment", "done"]
        assert events[0]["index"] == 0 and events[0]["text"] == "After the cancel."
        assert sum(len(a) for a in audio) == MAX_CODES * 320 * 2
        assert events[-1]["audio_seconds"] == pytest.approx(MAX_CODES * 320 / 24000, abs=1e-3)
        from websockets.exceptions import ConnectionClosedOK

        with pytest.raises(ConnectionClosedOK):  # the server closed the socket after "done"
            ws.recv(timeout=5)


def test_websocket_needs_the_key(server):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as info:
        connect(f"ws://127.0.0.1:{server.port}/v1/stream")
    assert info.value.response.status_code == 401
    with connect(f"ws://127.0.0.1:{server.port}/v1/stream?api_key={KEY}") as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"


def test_limits_429_and_503_then_recovery(voice):
    live = LiveServer(create_app(settings(api_key=None, max_streams=1, max_queue=1, queue_timeout=0.5,
                                          stream=StreamConfig(max_audio_length=300)), tts=voice))
    try:
        with httpx.Client(base_url=live.url, timeout=30) as c:
            statuses: dict[str, int] = {}
            with c.stream("POST", "/v1/audio/speech", json={"input": "Hold the only slot. " * 6,
                                                            "response_format": "pcm"}) as held:
                body = held.iter_raw()  # keep a reference: dropping the iterator closes the connection
                next(body)

                def waiting():
                    with httpx.Client(base_url=live.url, timeout=30) as c2:
                        r = c2.post("/v1/audio/speech", json={"input": "I wait.", "response_format": "pcm"})
                        statuses["queued"] = r.status_code
                        statuses["queued_code"] = r.json()["error"]["code"]

                t = threading.Thread(target=waiting)
                t.start()
                deadline = time.time() + 5
                while c.get("/health").json()["queued_requests"] < 1 and time.time() < deadline:
                    time.sleep(0.01)
                r = c.post("/v1/audio/speech", json={"input": "No room.", "response_format": "pcm"})
                assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_streams"
                assert r.headers["retry-after"]
                t.join(10)
            assert statuses == {"queued": 503, "queued_code": "queue_timeout"}
            ok = c.post("/tts", json={"text": "Free again."})
            assert ok.status_code == 200 and len(ok.content) > 0
    finally:
        live.stop()


def test_graceful_shutdown_ends_streams_and_threads(voice):
    app = create_app(settings(api_key=None, stream=StreamConfig(max_audio_length=400)), tts=voice)
    live = LiveServer(app)
    engine = None
    got = []
    try:
        with httpx.Client(base_url=live.url, timeout=30) as c, \
                c.stream("POST", "/tts", json={"text": "A long text while the server stops. " * 4}) as r:
                engine = app.state.llmvox.engine
                for part in r.iter_raw():
                    got.append(part)
                    if len(got) == 1:
                        threading.Thread(target=live.stop).start()
    except httpx.HTTPError:
        pass  # the connection may be cut when the grace period ends
    live.thread.join(15)
    assert not live.thread.is_alive()
    assert got, "no audio before the shutdown"
    assert engine is not None and engine.active_streams == 0
    assert not any(w._thread.is_alive() for w in engine.workers)


@pytest.mark.slow
def test_llmvox_serve_command(parity_dir):
    port = free_port()
    cmd = [sys.executable, "-m", "llmvox", "serve", "--chat_type", "tts", "--api_host", "127.0.0.1",
           "--api_port", str(port), "--llmvox_checkpoint_path", str(parity_dir / "llmvox.pt"),
           "--encoder_model_path", str(parity_dir / "byt5_g2p"), "--tokenizer_path", str(parity_dir / "byt5_tokenizer"),
           "--wav_config_path", str(parity_dir / "wavtokenizer_small.yaml"),
           "--wav_model_path", str(parity_dir / "wavtokenizer.ckpt"), "--max_audio_length", "30", "--threads", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "server did not become healthy"
            time.sleep(0.2)
        r = httpx.post(f"{url}/v1/audio/speech", json={"model": "llmvox", "input": "Hello there.", "voice": "default",
                                                       "response_format": "pcm"}, timeout=60)
        assert r.status_code == 200 and len(r.content) == 30 * 320 * 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        log = proc.stdout.read()
        assert "POST /v1/audio/speech -> 200" in log
        request_line = next(line for line in log.splitlines() if "POST /v1/audio/speech -> 200" in line)
        assert "[-]" not in request_line  # the request id is in the log line
    finally:
        if proc.poll() is None:
            proc.kill()
