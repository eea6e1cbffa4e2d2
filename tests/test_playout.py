"""Stall accounting: the listener's clock (`PlayoutClock`) and the per-endpoint gaps and stalled seconds
in `/metrics`, through the real server on loopback with the parity voice."""

from __future__ import annotations

import time

import httpx
import pytest
from fastapi import Request
from test_server import AUTH, MAX_CODES, LiveServer, settings, voice  # noqa: F401 - `voice`: the parity voice

from llmvox.engine.config import StreamConfig
from llmvox.engine.playout import PlayoutClock
from llmvox.server.app import create_app
from llmvox.server.audio_out import make_encoder
from llmvox.server.utterance import Utterance, audio_body

PAUSE = 1.5  # seconds the slow writer waits between its sentences; a sentence is MAX_CODES / 75 s of audio


def test_playout_clock_counts_gaps_and_stalled_seconds():
    clock = PlayoutClock(100)  # 100 units a second
    assert clock.heard(50, now=10.0) == 0 and clock.dry_at == pytest.approx(10.5)
    assert clock.heard(50, now=10.4) == 0  # in time: the buffer still held 0.1 s
    assert clock.dry_at == pytest.approx(11.0)
    assert clock.heard(20, now=11.3) == pytest.approx(0.3)  # ran dry at 11.0: a 0.3 s gap
    assert clock.dry_at == pytest.approx(11.5)  # playback goes on from 11.3
    assert clock.heard(0, now=20.0) == 0  # nothing heard: nothing counted
    assert clock.heard(10, now=11.5) == 0  # exactly on time is not a gap
    assert (clock.gaps, clock.received, clock.first) == (1, 130, 10.0)
    assert clock.stall == pytest.approx(0.3) and clock.seconds == pytest.approx(1.3)
    assert clock.due(100) == pytest.approx(11.3)


def metric_lines(url: str, name: str, endpoint: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", headers=AUTH, timeout=10).text
    out = {}
    for line in text.splitlines():
        if line.startswith(name) and f'endpoint="{endpoint}"' in line:
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


@pytest.fixture(scope="module")
def live(voice):  # noqa: F811 - the parity voice fixture
    app = create_app(settings(stream=StreamConfig(max_audio_length=MAX_CODES, chunk_policy="adaptive")), tts=voice)

    @app.post("/test/slow-writer")
    async def slow_writer(request: Request):
        """An answer whose text comes slowly (an LLM that pauses between sentences): audible gaps."""
        state = request.app.state.llmvox

        def deltas():
            yield "Hello there my friend. "
            time.sleep(PAUSE)
            yield "Here is the rest of it."

        async with Utterance(state, "/test/slow-writer") as utterance:
            utterance.speak(deltas())
            body = audio_body(utterance.events(), make_encoder("pcm", state.sample_rate))
            return utterance.respond(body, media_type="audio/pcm", headers={})

    server = LiveServer(app)
    yield server
    server.stop()


def test_metrics_count_gaps_and_stalled_seconds_per_endpoint(live):
    with httpx.Client(base_url=live.url, headers=AUTH, timeout=60) as client:
        for _ in range(3):  # the parity voice is far faster than real time
            r = client.post("/v1/audio/speech", json={"model": "llmvox", "input": "Hello world. Once more.",
                                                      "voice": "default", "response_format": "pcm"})
            assert r.status_code == 200 and len(r.content) == 2 * MAX_CODES * 320 * 2
        r = client.post("/test/slow-writer")
        assert r.status_code == 200 and len(r.content) == 2 * MAX_CODES * 320 * 2
    speech = metric_lines(live.url, "llmvox_stream_", "/v1/audio/speech")
    assert speech['llmvox_stream_playback_gaps_count{endpoint="/v1/audio/speech"}'] == 3
    assert speech['llmvox_stream_stall_seconds_count{endpoint="/v1/audio/speech"}'] == 3
    assert speech['llmvox_stream_stall_seconds_sum{endpoint="/v1/audio/speech"}'] >= 0
    slow = metric_lines(live.url, "llmvox_stream_", "/test/slow-writer")
    # the second sentence's audio was sent after the first sentence's audio had played out: about PAUSE
    # minus its MAX_CODES / 75 s (minus the time to first audio), plus any stall of a loaded machine
    assert slow['llmvox_stream_playback_gaps_count{endpoint="/test/slow-writer"}'] == 1
    assert slow['llmvox_stream_playback_gaps_sum{endpoint="/test/slow-writer"}'] >= 1
    assert slow['llmvox_stream_playback_gaps_bucket{endpoint="/test/slow-writer",le="0.0"}'] == 0
    stalled = slow['llmvox_stream_stall_seconds_sum{endpoint="/test/slow-writer"}']
    assert 0.3 < stalled < PAUSE + 3.0
