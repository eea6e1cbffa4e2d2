"""The abuse suite: hostile and careless clients against a real `llmvox serve` on loopback.

Each case asserts the status, a message that says what is wrong without internal detail, and that a
normal request right after still succeeds. The servers run the embedded voice, SmolLM2 and Whisper
base, as a user's would, with short timeouts so the slow-client cases take seconds.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from llmvox.bench.stream import ServerProcess

pytestmark = pytest.mark.slow

KEY = "abuse-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_STREAMS = 4
LEAKS = ("Traceback", "object at 0x", 'File "', ".py", "/site-packages/")


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM starts again from the current RSS


@pytest.fixture(scope="module")
def voice_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("abuse") / "voice.log"
    server = ServerProcess(["--api_key", KEY, "--max_streams", str(MAX_STREAMS), "--queue_timeout", "8",
                            "--read_timeout", "2", "--send_timeout", "3", "--idle_timeout", "3", "--max_body_mb", "8",
                            "--threads", "1", "--dtype", "bfloat16"], log, chat_type="voice")
    server.log_path = log
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tts_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("abuse") / "tts.log"
    server = ServerProcess(["--threads", "1"], log, chat_type="tts")
    server.log_path = log
    yield server
    server.stop()


def _still_serves(url: str, headers: dict | None = None) -> None:
    r = httpx.post(f"{url}/v1/audio/speech", headers=headers or AUTH, timeout=60,
                   json={"input": "Still here.", "response_format": "wav"})
    assert r.status_code == 200 and len(r.content) > 1000, r.text[:300]


def _clear(r: httpx.Response, status: int, *words: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    error = r.json()["error"]
    message = error["message"]
    assert not any(leak in message for leak in LEAKS), message
    for word in words:
        assert word.lower() in message.lower(), message
    assert r.headers.get("x-request-id")
    return error


def _wav(seconds: float, rate: int = 16000, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * rate), np.int16), rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


TINY_PNG = _b64(bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                              "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"))

# (name, method, path, body (json-able, or bytes), extra headers, status, words the message must hold)
CASES = [
    ("bad json", "POST", "/v1/audio/speech", b"{not json", {}, 400, ("JSON",)),
    ("missing input", "POST", "/v1/audio/speech", {"model": "llmvox"}, {}, 400, ("input",)),
    ("empty input", "POST", "/v1/audio/speech", {"input": "  "}, {}, 400, ("empty",)),
    ("unknown format", "POST", "/v1/audio/speech", {"input": "Hi.", "response_format": "xyz"}, {}, 400, ("xyz",)),
    ("speed out of range", "POST", "/v1/audio/speech", {"input": "Hi.", "speed": 9}, {}, 400, ("speed",)),
    ("symbols only", "POST", "/v1/audio/speech", {"input": "*** ### ***"}, {}, 400, ("speakable",)),
    ("text too long", "POST", "/v1/audio/speech", {"input": "a " * 3000}, {}, 413, ("limit",)),
    ("digits multiply", "POST", "/v1/audio/speech", {"input": "9" * 4000}, {}, 413, ("spelled out", "4096")),
    ("tts digits multiply", "POST", "/tts", {"text": "12345678 " * 400}, {}, 413, ("spelled out",)),
    ("wrong content type", "POST", "/v1/audio/speech", b'{"input": "Hi."}', {"Content-Type": "text/plain"}, 415,
     ("application/json", "text/plain")),
    ("invalid utf-8", "POST", "/v1/audio/speech", b'{"input": "caf\xe9"}', {}, 400, ("UTF-8",)),
    ("overlong chat text", "POST", "/textchat", {"text": "Tell me about cats. " * 10000}, {}, 413, ("limit",)),
    ("huge history", "POST", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hello there"}] * 3000}, {}, 413, ()),
    ("temperature -5", "POST", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "Hi"}], "temperature": -5}, {}, 400, ("temperature",)),
    ("top_p NaN", "POST", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "Hi"}], "top_p": NaN}', {}, 400, ("top_p",)),
    ("bad base64 audio", "POST", "/voicechat", {"audio_base64": "!!!notbase64"}, {}, 400, ("base64",)),
    ("corrupt wav", "POST", "/voicechat", {"audio_base64": _b64(b"RIFF" + os.urandom(400))}, {}, 400,
     ("not a readable audio file",)),
    ("silent audio", "POST", "/voicechat", {"audio_base64": _b64(_wav(2.0))}, {}, 422, ("silent",)),
    ("audio too long", "POST", "/voicechat", {"audio_base64": _b64(_wav(61.0, 8000))}, {}, 413, ("60",)),
    ("image on a voice server", "POST", "/vlmschat", {"audio_base64": _b64(_wav(1.0)), "image_base64": TINY_PNG},
     {}, 409, ("visual_speech",)),
    ("unknown transcript", "GET", "/v1/transcripts/nope", None, {}, 404, ("nope",)),
    ("unknown path", "GET", "/v1/nothing-here", None, {}, 404, ()),
    ("wrong method", "GET", "/v1/audio/speech", None, {}, 405, ()),
    ("no key", "POST", "/v1/audio/speech", {"input": "Hi."}, {"Authorization": ""}, 401, ("API key",)),
    ("wrong key", "POST", "/v1/audio/speech", {"input": "Hi."}, {"Authorization": "Bearer nope"}, 401, ("invalid",)),
    ("no key, bad json", "POST", "/textchat", b"{oops", {"Authorization": ""}, 401, ("API key",)),
    ("no key, metrics", "GET", "/metrics", None, {"Authorization": ""}, 401, ()),
    ("foreign origin", "POST", "/v1/audio/speech", {"input": "Hi."}, {"Origin": "https://evil.example"}, 403,
     ("evil.example", "--cors_origins")),
    ("rebound host name", "GET", "/metrics", None, {"Host": "evil.example:5003"}, 421, ("localhost",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_a_clear_error_and_the_server_goes_on(voice_server, case):
    _name, method, path, body, extra, status, words = case
    headers = {**AUTH, **{k: v for k, v in extra.items() if v}}
    if extra.get("Authorization") == "":
        headers.pop("Authorization")
    content = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    if content is not None:
        headers.setdefault("Content-Type", "application/json")
    r = httpx.request(method, voice_server.url + path, content=content, headers=headers, timeout=60)
    _clear(r, status, *words)
    _still_serves(voice_server.url)


def _raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 30.0) -> tuple[bytes, float]:
    """Send bytes on a plain socket; return the answer's first bytes and how long it took."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _content_length(answer):
            piece = sock.recv(65536)  # the head and the body may come in separate segments
            if not piece:
                break
            answer += piece
    return answer, time.perf_counter() - started


def _content_length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_unauthenticated_huge_body_is_refused_before_it_is_read(voice_server):
    pid = voice_server.proc.pid
    idle = _rss_mb(pid)
    _reset_peak(pid)
    head = (f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1:{voice_server.port}\r\nContent-Type: application/json"
            f"\r\nContent-Length: {200 * 1024 * 1024}\r\n\r\n").encode()
    answer, seconds = _raw_request(voice_server.port, head, b"{" + b" " * 65536)
    assert answer.startswith(b"HTTP/1.1 401") and b"API key" in answer, answer[:300]
    assert seconds < 2.0
    # with the key, a body over --max_body_mb is refused from its Content-Length, and when it has none, as it arrives
    answer, seconds = _raw_request(voice_server.port, head.replace(b"Content-Type", f"Authorization: Bearer {KEY}\r\n"
                                                                   "Content-Type".encode()), b"{")
    assert answer.startswith(b"HTTP/1.1 413") and b"--max_body_mb" in answer and seconds < 2.0, answer[:300]

    def chunks():
        piece = b" " * (1024 * 1024)
        for _ in range(200):
            yield piece

    r = httpx.post(voice_server.url + "/v1/audio/speech", content=chunks(), timeout=30,
                   headers={**AUTH, "Content-Type": "application/json"})
    _clear(r, 413, "--max_body_mb")
    assert _rss_mb(pid, "VmHWM") - idle < 200
    _still_serves(voice_server.url)


def test_six_hours_of_silence_are_refused_from_the_header(voice_server):
    flac = _wav(6 * 3600, 16000, "FLAC", "PCM_16")
    assert len(flac) < 8 * 1024 * 1024 * 3 / 4  # fits the body limit once base64-encoded
    pid = voice_server.proc.pid
    idle = _rss_mb(pid)
    _reset_peak(pid)
    started = time.perf_counter()
    r = httpx.post(voice_server.url + "/voicechat", json={"audio_base64": _b64(flac)}, headers=AUTH, timeout=60)
    seconds = time.perf_counter() - started
    _clear(r, 413, "21600", "60")
    assert seconds < 2.0, seconds
    assert _rss_mb(pid, "VmHWM") - idle < 200
    _still_serves(voice_server.url)


def test_slow_body_times_out_and_frees_nothing_it_did_not_take(voice_server):
    head = (f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1:{voice_server.port}\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n").encode()
    answer, seconds = _raw_request(voice_server.port, head, b'{"input": ')
    assert answer.startswith(b"HTTP/1.1 408") and b"--read_timeout" in answer, answer[:300]
    assert 1.5 < seconds < 6
    _still_serves(voice_server.url)


def test_idle_and_non_reading_clients_cannot_starve_a_normal_request(voice_server):
    """Four times --max_streams WebSockets that say nothing, and --max_streams /tts clients that never read
    their answers, leave the server able to answer a normal request within its queue timeout."""
    from websockets.sync.client import connect

    sockets = [connect(f"ws://127.0.0.1:{voice_server.port}/v1/stream?api_key={KEY}") for _ in range(4 * MAX_STREAMS)]
    for ws in sockets:
        assert json.loads(ws.recv())["type"] == "ready"
    body = json.dumps({"text": "This answer is never read by the client that asked for it. " * 4}).encode()
    head = (f"POST /tts HTTP/1.1\r\nHost: 127.0.0.1:{voice_server.port}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    stuck = []
    for _ in range(MAX_STREAMS):
        sock = socket.create_connection(("127.0.0.1", voice_server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(head + body)
        stuck.append(sock)
    try:
        # their answers are generated whether or not they read them; then their slots are free again,
        # while the clients still sit on unread audio (before: each slot stayed held until its client read)
        deadline = time.time() + 90
        while httpx.get(voice_server.url + "/health").json()["active_streams"] and time.time() < deadline:
            time.sleep(0.2)
        assert httpx.get(voice_server.url + "/health").json()["active_streams"] == 0
        started = time.perf_counter()
        _still_serves(voice_server.url)
        assert time.perf_counter() - started < 8  # --queue_timeout
        # the idle WebSockets are closed by --idle_timeout (3 s) with an explanation
        message = json.loads(sockets[0].recv(timeout=10))
        assert message["code"] == "idle_timeout" and "--idle_timeout" in message["message"]
    finally:
        for ws in sockets:
            ws.close()
        for sock in stuck:
            sock.close()
    deadline = time.time() + 10
    while httpx.get(voice_server.url + "/health").json()["active_streams"] and time.time() < deadline:
        time.sleep(0.1)
    assert httpx.get(voice_server.url + "/health").json()["active_streams"] == 0


def test_disconnect_storm_leaves_no_stream_behind(voice_server):
    def leave_after_first_chunk() -> None:
        with httpx.stream("POST", voice_server.url + "/v1/audio/speech", headers=AUTH, timeout=60,
                          json={"input": "A sentence that nobody waits to hear the end of.", "response_format": "pcm"}
                          ) as r:
            assert r.status_code in (200, 429, 503)
            for _ in r.iter_bytes():
                break

    threads = [threading.Thread(target=leave_after_first_chunk) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    deadline = time.time() + 5
    while httpx.get(voice_server.url + "/health").json()["active_streams"] and time.time() < deadline:
        time.sleep(0.05)
    assert httpx.get(voice_server.url + "/health").json()["active_streams"] == 0
    _still_serves(voice_server.url)


def test_transcript_ids_are_the_servers_and_unguessable(voice_server):
    ids = []
    for question in ("Say yes.", "Say no."):
        r = httpx.post(voice_server.url + "/textchat", json={"text": question}, timeout=120,
                       headers={**AUTH, "X-Request-ID": "shared-id-1"})
        assert r.status_code == 200
        ids.append(r.headers["x-llmvox-request-id"])
    assert ids[0] != ids[1] and all(len(i) == 32 and i != "shared-id-1" for i in ids)
    questions = [httpx.get(f"{voice_server.url}/v1/transcripts/{i}", headers=AUTH).json()["question"] for i in ids]
    assert questions == ["Say yes.", "Say no."]
    r = httpx.get(voice_server.url + "/v1/transcripts/shared-id-1", headers=AUTH)
    _clear(r, 404)


def test_oversized_image_is_413_with_the_flags_unit(tmp_path):
    from llmvox.input_errors import InputTooLarge
    from llmvox.llm.images import ImageLimits, load_image

    with pytest.raises(InputTooLarge, match=r"the limit is 20(\.0)? MB"):
        load_image(b"\x89PNG" + b"0" * (21 * 1024 * 1024), limits=ImageLimits(max_bytes=20 * 1024 * 1024))


def test_safe_defaults(tts_server):
    url, port = tts_server.url, tts_server.port
    assert "listening on http://127.0.0.1" in Path(tts_server.log_path).read_text()
    r = httpx.options(url + "/v1/audio/speech", headers={"Origin": "https://evil.example",
                                                        "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    r = httpx.post(url + "/v1/audio/speech", json={"input": "Hi."}, headers={"Origin": "https://evil.example"})
    _clear(r, 403, "evil.example")
    # the server's own page may call it
    r = httpx.post(url + "/v1/audio/speech", json={"input": "Hi.", "response_format": "wav"},
                   headers={"Origin": f"http://127.0.0.1:{port}"})
    assert r.status_code == 200
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as denied:
        connect(f"ws://127.0.0.1:{port}/v1/stream", origin="https://evil.example")
    assert denied.value.response.status_code == 403
    with connect(f"ws://127.0.0.1:{port}/v1/stream", origin=f"http://127.0.0.1:{port}") as ws:
        assert json.loads(ws.recv())["type"] == "ready"
    r = httpx.post(url + "/textchat", json={"text": "Hi"})
    _clear(r, 409, "--chat_type tts", "/textchat")
    _still_serves(url, headers={})


def test_an_unhandled_error_keeps_the_request_id_and_the_connection(parity_dir):
    """A route that breaks answers 500 JSON with the request id, names no exception, and the client's
    keep-alive connection stays usable (before: the 500 had no X-Request-ID and the next request on the
    connection was reset)."""
    import torch
    import uvicorn

    from llmvox.api import LLMVoX
    from llmvox.bench.stream import free_port
    from llmvox.server.app import create_app
    from llmvox.server.settings import ServerSettings

    torch.set_num_threads(1)
    voice = LLMVoX.from_original(str(parity_dir / "llmvox.pt"), str(parity_dir / "byt5_g2p"),
                                 str(parity_dir / "wavtokenizer_small.yaml"), str(parity_dir / "wavtokenizer.ckpt"),
                                 max_audio_length=20)
    app = create_app(ServerSettings(chat_type="tts", threads=1, num_workers=1), tts=voice)

    @app.get("/broken")
    async def broken():
        raise ValueError("secret internal detail")

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(3):
                r = client.get("/broken", headers={"X-Request-ID": "trace-me-1"})
                error = _clear(r, 500, "trace-me-1")
                assert "secret" not in error["message"] and "ValueError" not in error["message"]
                assert r.headers["x-request-id"] == "trace-me-1"
                assert client.get("/health").status_code == 200
    finally:
        server.should_exit = True
        thread.join(15)


def test_idle_server_exits_quickly_on_sigterm(tmp_path):
    server = ServerProcess(["--threads", "1"], tmp_path / "exit.log", chat_type="voice")
    with httpx.Client(base_url=server.url) as keep_alive:
        assert keep_alive.get("/health").status_code == 200
        started = time.perf_counter()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(30)
        seconds = time.perf_counter() - started
    server.stop()
    assert server.proc.returncode == 0 and seconds < 3, seconds


def test_float_fields_reject_nan_in_speech(voice_server):
    r = httpx.post(voice_server.url + "/v1/audio/speech", content=b'{"input": "Hi.", "speed": NaN}',
                   headers={**AUTH, "Content-Type": "application/json"})
    _clear(r, 400, "speed")
    _still_serves(voice_server.url)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))

