"""Several voices in one server: the embedded voice and the parity checkpoints saved as a bundle (two
different decoders and codecs), loaded from one `--voices DIR` as `llmvox serve` loads them, served on
loopback, each picked by `voice` on every endpoint and compared with a server of that voice alone."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import httpx
import pytest
import torch
from test_server import LiveServer

from llmvox.engine.config import StreamConfig
from llmvox.errors import LLMVoXError
from llmvox.server.app import create_app
from llmvox.server.settings import ServerSettings

MAX_CODES = 40  # the parity voice never ends a sentence: cap it
TEXT = "Hello there my friend."


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def settings(**kw) -> ServerSettings:
    # fixed chunks: the audio does not depend on how fast this machine is, so two servers agree
    base = dict(chat_type="tts", threads=1, num_workers=1,
                stream=StreamConfig(max_audio_length=MAX_CODES, chunk_policy="fixed"))
    base.update(kw)
    return ServerSettings(**base)


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory, parity_dir) -> Path:
    """DIR/default (the embedded bundle), DIR/parity (`llmvox convert` of the parity files), and a
    folder that is not a bundle (skipped)."""
    from llmvox.api import LLMVoX, default_voice_path

    root = tmp_path_factory.mktemp("voices")
    shutil.copytree(default_voice_path(), root / "default", ignore=shutil.ignore_patterns("samples"))
    LLMVoX.from_original(str(parity_dir / "llmvox.pt"), str(parity_dir / "byt5_g2p"),
                         str(parity_dir / "wavtokenizer_small.yaml"),
                         str(parity_dir / "wavtokenizer.ckpt")).save_pretrained(root / "parity")
    (root / "notes").mkdir()
    return root


def serve_args(*argv: str) -> argparse.Namespace:
    from llmvox.cli.serve import add_serve_args

    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    return parser.parse_args(list(argv))


def load(*argv: str):
    from llmvox.cli.serve_voices import load_voices

    return load_voices(serve_args(*argv))


@pytest.fixture(scope="module")
def servers(voices_dir):
    """The two-voice server (from --voices DIR) and a server of each voice alone."""
    from llmvox.api import LLMVoX

    voices, default = load("--voices", str(voices_dir))
    assert list(voices) == ["default", "parity"] and default == "default"
    live = {"both": LiveServer(create_app(settings(), voices=voices, default_voice=default))}
    for name in ("default", "parity"):
        live[name] = LiveServer(create_app(settings(), tts=LLMVoX.from_pretrained(voices_dir / name)))
    yield live
    for server in live.values():
        server.stop()


def speech(server, voice: str = "alloy") -> bytes:
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    return client.audio.speech.create(model="llmvox", voice=voice, input=TEXT, response_format="pcm").content


def test_voices_are_listed(servers):
    both = servers["both"]
    listed = httpx.get(both.url + "/v1/audio/voices").json()
    assert listed["object"] == "list" and listed["default"] == "default"
    by_name = {v["name"]: v for v in listed["data"]}
    assert list(by_name) == ["default", "parity"]
    assert [v["default"] for v in listed["data"]] == [True, False]
    for v in listed["data"]:
        assert v["sample_rate"] == 24000 and v["text_frontend"] == "byt5" and v["language"] == "en"
        assert v["disk_bytes"] > 1_000_000 and v["memory_bytes"] > 1_000_000
        assert v["codec_shared_with"] is None  # two different codecs
    health = httpx.get(both.url + "/health").json()
    assert health["voice"] == "default" and health["voices"] == ["default", "parity"]
    info = httpx.get(both.url + "/v1/info").json()
    assert [v["name"] for v in info["voices"]] == ["default", "parity"] and info["voice"]["name"] == "default"
    alone = httpx.get(servers["parity"].url + "/health").json()
    assert alone["voices"] == ["llmvox"]  # a lone voice keeps its own name (the bundle's config name)


def test_openai_speech_picks_each_voice(servers):
    both = servers["both"]
    default, parity = speech(both, "default"), speech(both, "parity")
    assert len(default) > 0 and len(parity) > 0 and default != parity
    assert default == speech(servers["default"])  # as the server of that voice alone says it
    assert parity == speech(servers["parity"])
    assert speech(both, "alloy") == default  # OpenAI's names speak with the default voice
    no_voice = httpx.post(both.url + "/v1/audio/speech", json={"input": TEXT, "response_format": "pcm"})
    assert no_voice.content == default and no_voice.headers["x-llmvox-voice"] == "default"


def test_tts_route_picks_each_voice(servers):
    both, alone = servers["both"], servers["parity"]
    picked = httpx.post(both.url + "/tts", json={"text": TEXT, "voice": "parity"})
    assert picked.status_code == 200 and picked.headers["x-llmvox-voice"] == "parity"
    assert picked.content == httpx.post(alone.url + "/tts", json={"text": TEXT}).content
    assert picked.content != httpx.post(both.url + "/tts", json={"text": TEXT}).content


def ws_audio(server, query: str = "", first: dict | None = None) -> tuple[dict, bytes]:
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{server.port}/v1/stream?format=pcm{query}") as ws:
        ready = json.loads(ws.recv(timeout=10))
        ws.send(json.dumps({"type": "text", "text": TEXT, **(first or {})}))
        ws.send(json.dumps({"type": "end"}))
        audio = []
        while True:
            msg = ws.recv(timeout=30)
            if isinstance(msg, bytes):
                audio.append(msg)
            elif json.loads(msg)["type"] in ("done", "error"):
                assert json.loads(msg)["type"] == "done", msg
                return ready, b"".join(audio)


def test_websocket_picks_a_voice_by_query_or_first_message(servers):
    both = servers["both"]
    ready, by_query = ws_audio(both, "&voice=parity")
    assert ready["voice"] == "parity"
    _, by_message = ws_audio(both, first={"voice": "parity"})
    _, default = ws_audio(both)
    _, alone = ws_audio(servers["parity"])
    assert by_query == by_message == alone and by_query != default
    assert default == ws_audio(servers["default"])[1]


def test_an_unknown_voice_is_a_400_listing_the_voices(servers):
    import openai
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    both = servers["both"]
    with pytest.raises(openai.BadRequestError) as caught:
        speech(both, "nobody")
    error = caught.value.body
    assert error["code"] == "invalid_voice" and error["param"] == "voice"
    assert "default, parity" in error["message"] and "nobody" in error["message"]
    response = httpx.post(both.url + "/tts", json={"text": TEXT, "voice": "nobody"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_voice"
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{both.port}/v1/stream?voice=nobody")
    assert refused.value.response.status_code == 400
    with connect(f"ws://127.0.0.1:{both.port}/v1/stream") as ws:  # in a message: an error, the session goes on
        json.loads(ws.recv(timeout=10))
        ws.send(json.dumps({"type": "text", "text": TEXT, "voice": "nobody"}))
        event = json.loads(ws.recv(timeout=10))
        assert event["type"] == "error" and event["code"] == "invalid_voice" and "parity" in event["message"]
    assert len(speech(both, "parity")) > 0  # the server keeps serving
    assert httpx.get(both.url + "/health").json()["active_streams"] == 0


def test_voices_dir_with_a_bad_bundle_is_one_startup_line(voices_dir, tmp_path, capsys):
    from llmvox.cli import main

    bad = tmp_path / "voices"
    shutil.copytree(voices_dir / "parity", bad / "good")
    (bad / "broken").mkdir()
    (bad / "broken" / "config.json").write_text("{not json")
    code = main(["serve", "--voices", str(bad), "--chat_type", "tts", "--threads", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"llmvox: error: --voices {bad}: broken: ")
    with pytest.raises(LLMVoXError, match="no bundle folders"):
        load("--voices", str(tmp_path / "voices" / "broken"))


def test_bundle_flags_name_voices(voices_dir):
    voices, default = load("--bundle", f"anna={voices_dir / 'parity'}", "--bundle", str(voices_dir / "default"),
                           "--default_voice", "default")
    assert list(voices) == ["anna", "default"] and default == "default"
    voices, default = load("--bundle", str(voices_dir / "parity"))  # one voice, as before: its own name
    assert list(voices) == ["llmvox"] and default == "llmvox"
    with pytest.raises(LLMVoXError, match="a second voice named 'llmvox'"):
        load("--bundle", str(voices_dir / "parity"), "--bundle", f"x={voices_dir / 'default'}",
             "--bundle", str(voices_dir / "parity"))
    with pytest.raises(LLMVoXError, match="not one of the voices"):
        load("--voices", str(voices_dir), "--default_voice", "nobody")
    with pytest.raises(LLMVoXError, match="--revision needs a hub id"):
        load("--voices", str(voices_dir), "--revision", "v1")


def test_same_codec_is_shared_and_counted_once(voices_dir):
    from llmvox.api import LLMVoX
    from llmvox.server.voices import VoiceSet

    a, b = (LLMVoX.from_pretrained(voices_dir / "default") for _ in range(2))
    voices = VoiceSet({"a": a, "b": b})
    assert a.codec is b.codec  # the second copy of the same codec is freed
    listed = {v["name"]: v for v in voices.listing()}
    codec_bytes = sum(t.numel() * t.element_size() for t in a.codec.state_dict().values())
    assert listed["b"]["codec_shared_with"] == "a"
    assert listed["a"]["memory_bytes"] - listed["b"]["memory_bytes"] >= codec_bytes * 0.9


@pytest.fixture(scope="module")
def chat_servers(voices_dir):
    """The two voices behind the chat routes (text chat with the bundled SmolLM2, greedy), and the
    parity voice alone behind them."""
    pytest.importorskip("llama_cpp")
    options = {"llm_max_tokens": 12, "llm_temperature": 0.0, "system_prompt": "You answer in one short sentence."}
    voices, default = load("--voices", str(voices_dir))
    both = create_app(settings(chat_type="text", chat_options=options), voices=voices, default_voice=default)
    alone = create_app(settings(chat_type="text", chat_options=options), voices={"parity": voices["parity"]})
    servers = [LiveServer(both), LiveServer(alone)]
    yield servers
    for server, app in zip(servers, (both, alone), strict=True):
        server.stop()
        app.state.llmvox.extras["chat"].llm.close()


@pytest.mark.slow
def test_chat_routes_speak_with_the_chosen_voice(chat_servers):
    chat_server, alone = chat_servers

    def textchat(voice: str | None, server=chat_server) -> httpx.Response:
        body = {"text": "What is the capital of France?", **({"voice": voice} if voice else {})}
        return httpx.post(server.url + "/textchat", json=body, timeout=120)

    default, parity = textchat(None), textchat("parity")
    assert default.status_code == parity.status_code == 200
    assert default.headers["x-llmvox-voice"] == "default" and parity.headers["x-llmvox-voice"] == "parity"
    assert len(default.content) > 0 and len(parity.content) > 0 and default.content != parity.content
    assert parity.content == textchat(None, alone).content  # the same answer, said as the voice alone says it
    unknown = textchat("nobody")
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "invalid_voice"
    completion = httpx.post(chat_server.url + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "Hi"}], "modalities": ["text", "audio"],
        "audio": {"voice": "nobody", "format": "pcm16"}})
    assert completion.status_code == 400 and completion.json()["error"]["param"] == "audio.voice"


def realtime_audio(server, session: dict) -> tuple[list[dict], bytes]:
    """A realtime session: `session.update` with `session`, one text item, one response's audio."""
    import base64

    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{server.port}/v1/realtime") as ws:
        ws.send(json.dumps({"type": "session.update", "session": session}))
        ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}}))
        ws.send(json.dumps({"type": "response.create"}))
        events, audio = [], b""
        while True:
            event = json.loads(ws.recv(timeout=60))
            events.append(event)
            if event["type"] == "response.output_audio.delta":
                audio += base64.b64decode(event["delta"])
            if event["type"] == "response.done":
                return events, audio


@pytest.mark.slow
def test_realtime_session_picks_a_voice(chat_servers):
    server = chat_servers[0]
    events, default = realtime_audio(server, {"voice": "alloy"})
    errors = [e for e in events if e["type"] == "error"]
    assert not errors and len(default) > 0
    events, parity = realtime_audio(server, {"type": "realtime", "audio": {"output": {"voice": "parity"}}})
    assert len(parity) > 0 and parity != default
    events, _ = realtime_audio(server, {"voice": "nobody"})
    error = next(e["error"] for e in events if e["type"] == "error")
    assert error["code"] == "invalid_voice" and "parity" in error["message"]
