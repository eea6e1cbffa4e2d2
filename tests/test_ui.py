"""The browser UI end to end: headless Chromium (Debian's `chromium`, driven by Playwright) against the
real server on a loopback port, with the parity voice, a tiny random vision-language model, the embedded
Whisper, and Chromium's fake microphone playing the teacher voice asking a question.

What the page played is read from `window.__llmvoxStats` (every AudioBuffer it scheduled, per turn);
what the server did is read from its `/metrics` and `/v1/transcripts`. Screenshots of every mode go to
a temporary folder (or to $LLMVOX_UI_SCREENSHOTS), printed at the end of each test.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from _chat_models import QUESTION, build_audio_lm, build_vlm, free_port, png_bytes, speak
from test_server import LiveServer, voice  # noqa: F401 - `voice` is the parity voice fixture

from llmvox.engine.config import StreamConfig
from llmvox.server.app import create_app
from llmvox.server.settings import ServerSettings

pytest.importorskip("playwright")
pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 24000
MAX_CODES = 24  # codes per sentence: the random voice never ends a sentence itself
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 "--autoplay-policy=no-user-gesture-required"]
LEAD_SILENCE, TAIL_SILENCE = 1.0, 1.6  # seconds around the question in the fake microphone's loop


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def normalise(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalpha() or c == " ").strip()


def metric(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---- models and servers ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vlm_folder(tmp_path_factory) -> Path:
    """The tiny LLaVA of the chat tests, told never to end its answer (so a barge-in has something to cut)."""
    folder = build_vlm(tmp_path_factory.mktemp("ui_vlm"))
    config_path = folder / "generation_config.json"
    config = json.loads(config_path.read_text())
    config["suppress_tokens"] = [config["eos_token_id"]]
    config_path.write_text(json.dumps(config))
    return folder


def start_server(voice, chat_type: str, llm_checkpoint: Path, **options) -> LiveServer:  # noqa: F811
    chat_options = {"llm_checkpoint": str(llm_checkpoint), "llm_max_tokens": 12, "llm_temperature": 0.0,
                    "asr_threads": 2, "system_prompt": "Answer in one short sentence.", **options}
    settings = ServerSettings(chat_type=chat_type, threads=1, num_workers=2, chat_options=chat_options,
                              stream=StreamConfig(max_audio_length=MAX_CODES))
    app = create_app(settings, tts=voice)
    live = LiveServer(app)
    live.state = app.state.llmvox
    live.chat = live.state.extras["chat"]
    return live


@pytest.fixture(scope="module")
def ui_server(voice, vlm_folder):  # noqa: F811
    """chat type visual_speech: text, voice and picture+voice chat (Whisper base recognises the speech)."""
    pytest.importorskip("faster_whisper")
    live = start_server(voice, "visual_speech", vlm_folder)
    yield live
    live.stop()
    live.chat.llm.close()


@pytest.fixture(scope="module")
def multimodal_server(voice, tmp_path_factory):  # noqa: F811
    """chat type multimodal: a tiny Qwen2-Audio-style model hears the question itself (no ASR)."""
    live = start_server(voice, "multimodal", build_audio_lm(tmp_path_factory.mktemp("ui_alm")))
    yield live
    live.stop()
    live.chat.llm.close()


@pytest.fixture(scope="module")
def proxy_factory():
    """run_ui's proxy (the same app `llmvox ui` serves) on a loopback port, in front of any upstream."""
    from llmvox.server.ui_proxy import create_proxy_app

    started = []

    def start(upstream: str) -> LiveServer:
        live = LiveServer(create_proxy_app(upstream, connect_timeout=2.0))
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()


# ---- the browser ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def question_wav(tmp_path_factory) -> tuple[Path, float]:
    """The teacher voice asking QUESTION, with silence around it, as the fake microphone's 48 kHz WAV."""
    pytest.importorskip("hibari")
    import soundfile as sf

    from llmvox.audio import resample

    audio, rate = speak(QUESTION)
    audio = resample(audio, rate, 48000)
    loop = np.concatenate([np.zeros(int(LEAD_SILENCE * 48000), np.float32), audio,
                           np.zeros(int(TAIL_SILENCE * 48000), np.float32)])
    path = tmp_path_factory.mktemp("ui_mic") / "question.wav"
    sf.write(path, loop, 48000, subtype="PCM_16")
    return path, len(loop) / 48000


@pytest.fixture(scope="module")
def playwright():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as instance:
        yield instance


@pytest.fixture(scope="module")
def browser(playwright, question_wav, tmp_path_factory):
    """Chromium with a fresh profile, microphone and camera allowed, the microphone playing `question_wav`."""
    wav, _ = question_wav
    profile = tmp_path_factory.mktemp("ui_chromium_profile")
    context = playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, accept_downloads=True,
        args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}"],
        viewport={"width": 1000, "height": 1000})
    context.set_default_timeout(30_000)
    yield context
    context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("LLMVOX_UI_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("ui_screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


class Page:
    """A page of the UI with its JavaScript errors collected (any of them fails the test)."""

    def __init__(self, context, url: str, *, wait_ready: bool = True):
        self.page = context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.goto(url)
        if wait_ready:
            self.page.wait_for_function("window.__llmvoxStats && window.__llmvoxStats.ready")

    def stats(self) -> dict:
        return self.page.evaluate("window.__llmvoxStats")

    def wait(self, condition: str, timeout: float = 30_000) -> None:
        self.page.wait_for_function(f"(() => {{ const s = window.__llmvoxStats; return {condition}; }})()",
                                    timeout=timeout)

    def wait_turn_played(self, index: int, timeout: float = 60_000) -> dict:
        """Until turn `index` got all its audio and the page finished playing it."""
        self.wait(f"s.turns.length > {index} && s.turns[{index}].status !== 'running' && s.state === 'ready'",
                  timeout)
        turn = self.stats()["turns"][index]
        assert turn["status"] == "done", turn
        return turn

    def shot(self, folder: Path, name: str) -> Path:
        path = folder / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path

    def close(self) -> None:
        self.page.close()
        assert not self.errors, self.errors


def assert_played(turn: dict) -> None:
    """The turn's audio was scheduled as AudioBuffers that add up to everything the server sent, each
    starting exactly where the one before ends, except where the page counted a gap (audio arriving
    after the previous buffer had finished playing)."""
    assert turn["buffers"] >= 1 and turn["bytes"] > 0 and turn["bytes"] % 4 == 0
    assert turn["seconds"] == pytest.approx(turn["bytes"] / 4 / SAMPLE_RATE, abs=1e-6)
    assert turn["seconds"] == pytest.approx(turn["audioSeconds"], abs=1e-6)
    assert 0 < turn["ttfa"] <= turn["total"] and turn["rtf"] == pytest.approx(turn["total"] / turn["audioSeconds"])
    schedule = turn["schedule"]
    assert len(schedule) == turn["buffers"]
    joins = [start - (prev + length) for (prev, length), (start, _) in zip(schedule, schedule[1:], strict=False)]
    assert all(j == pytest.approx(0, abs=1e-9) or j > 0 for j in joins)
    assert sum(j > 1e-9 for j in joins) == turn["gaps"]


def transcript(url: str, request_id: str) -> dict:
    return httpx.get(f"{url}/v1/transcripts/{request_id}", params={"wait": 10}, timeout=15).json()


# ---- tests ---------------------------------------------------------------------------------------
def test_text_turn_plays_streamed_audio_and_shows_the_answer(browser, ui_server, shots):
    ui = Page(browser, ui_server.url + "/")
    page = ui.page
    assert page.locator("#tab-multimodal").get_attribute("title").startswith("Not available on this server")
    page.click("#tab-text")
    page.fill("#text-input", "Hello there, who are you?")
    page.click("#send-text")
    turn = ui.wait_turn_played(0)
    assert_played(turn)
    said = transcript(ui_server.url, turn["requestId"])
    assert said["question"] == "Hello there, who are you?" and said["done"]
    assert turn["answer"] == said["answer"] and said["answer"]
    assert page.locator(".turn .question").first.inner_text() == "Hello there, who are you?"
    assert "real-time factor" in page.locator(".turn .metrics").first.inner_text()
    assert page.locator("#chunk-info").text_content().count("codes") >= 2  # chunk schedule shown read-only
    # download: a WAV with exactly what was played
    with page.expect_download() as info:
        page.click("#download")
    path = info.value.path()
    import soundfile as sf

    audio, rate = sf.read(path)
    assert rate == SAMPLE_RATE and len(audio) == round(turn["audioSeconds"] * SAMPLE_RATE)
    # replay schedules the same audio again
    before = ui.stats()["seconds"]
    page.click("#replay")
    ui.wait("s.state === 'ready'")
    assert ui.stats()["seconds"] - before == pytest.approx(turn["seconds"], abs=1e-6)
    page.click("summary")  # settings open, for the screenshot
    ui.shot(shots, "text")
    ui.close()


def test_read_aloud_speaks_the_text_with_tts(browser, ui_server, shots):
    """The "Read aloud" tab (every chat type, --chat_type tts included): the original POST /tts stream."""
    text = "Hello world. This is read aloud!"
    expected = httpx.post(ui_server.url + "/tts", json={"text": text}, timeout=60).content
    ui = Page(browser, ui_server.url + "/#tts")
    page = ui.page
    page.fill("#tts-input", text)
    page.press("#tts-input", "Enter")
    turn = ui.wait_turn_played(0)
    assert_played(turn)
    assert turn["bytes"] == len(expected) and turn["requestId"] is None  # no chat turn, no transcript
    ui.shot(shots, "read_aloud")
    ui.close()


def test_keyboard_only_text_turn(browser, ui_server, shots):
    ui = Page(browser, ui_server.url + "/")
    page = ui.page
    assert ui.stats()["mode"] == "visual_speech"  # the server's --chat_type picks the first tab
    for _ in range(6):  # Tab from the top of the page reaches the selected tab...
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "tab-visual_speech":
            break
    assert page.evaluate("document.activeElement.id") == "tab-visual_speech"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", ""), "keyboard focus must be visible"
    page.keyboard.press("Home")  # ...arrows/Home move between modes...
    assert page.evaluate("document.activeElement.id") == "tab-text"
    assert page.get_attribute("#tab-text", "aria-selected") == "true"
    page.keyboard.press("Tab")  # ...and Tab enters the message box
    assert page.evaluate("document.activeElement.id") == "text-input"
    page.keyboard.type("Say something nice.")
    page.keyboard.press("Enter")
    assert_played(ui.wait_turn_played(0))
    assert page.locator("#status").get_attribute("role") == "status"
    assert page.locator("#log").get_attribute("role") == "log"
    ui.shot(shots, "keyboard")
    ui.close()


def test_float32_reader_handles_pieces_off_the_sample_grid(browser, ui_server):
    """The page's stream decoder, in the browser: bytes split anywhere give the same float32 samples."""
    ui = Page(browser, ui_server.url + "/")
    samples = ui.page.evaluate("""async () => {
        const { Float32Reader } = await import('./ui/api.js');
        const values = new Float32Array([0.5, -0.25, 1e-3, -1, 0.125, 3.5]);
        const bytes = new Uint8Array(values.buffer);
        const reader = new Float32Reader();
        const out = [];
        for (const [a, b] of [[0, 1], [1, 6], [6, 7], [7, 13], [13, 16], [16, 24]]) {
            out.push(...reader.push(bytes.slice(a, b)));
        }
        return { out, leftover: reader.leftover };
    }""")
    assert samples == {"out": [0.5, -0.25, pytest.approx(1e-3), -1, 0.125, 3.5], "leftover": 0}
    ui.close()


def test_voice_turn_from_the_microphone(browser, ui_server, question_wav, shots):
    """Hands-free: the fake microphone's silence, then the question; the page hears it start and stop."""
    ui = Page(browser, ui_server.url + "/#voice")
    page = ui.page
    assert ui.stats()["mode"] == "voice"
    page.evaluate("document.getElementById('live-voice').checked = false")  # the page's own VAD + /voicechat
    page.check("#handsfree")
    ui.wait("s.state === 'recording'", 15_000)  # speech detected
    turn = ui.wait_turn_played(0, 60_000)
    page.uncheck("#handsfree")
    assert_played(turn)
    assert normalise(turn["question"]) == normalise(QUESTION)  # Whisper heard the teacher voice
    assert normalise(page.locator(".turn .question").first.inner_text()) == normalise(QUESTION)
    said = transcript(ui_server.url, turn["requestId"])
    assert said["done"] and said["answer"] == turn["answer"]
    ui.shot(shots, "voice")
    ui.close()


def test_picture_turn_uploads_a_file_and_push_to_talk(browser, ui_server, question_wav, shots, tmp_path):
    _, loop_seconds = question_wav
    picture = tmp_path / "cat.png"
    picture.write_bytes(png_bytes(64, 48, seed=3))
    ui = Page(browser, ui_server.url + "/#visual_speech")
    page = ui.page
    page.set_input_files("#visual-file", str(picture))
    page.wait_for_selector("#visual-thumbs img[alt='Picture: cat.png']")
    # push-to-talk with the keyboard shortcut: hold T for one loop of the fake microphone
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.down("t")
    ui.wait("s.state === 'recording'", 10_000)
    page.wait_for_timeout(int((loop_seconds - 0.3) * 1000))
    page.keyboard.up("t")
    turn = ui.wait_turn_played(0, 60_000)
    assert_played(turn)
    assert turn["mode"] == "visual_speech" and normalise(turn["question"]) == normalise(QUESTION)
    assert page.locator(".turn .turn-images img").count() == 1
    said = transcript(ui_server.url, turn["requestId"])
    assert said["mode"] == "visual_speech" and said["done"]
    ui.shot(shots, "picture")
    ui.close()


def test_multimodal_turn_with_several_pictures(browser, multimodal_server, question_wav, shots, tmp_path):
    _, loop_seconds = question_wav
    files = []
    for seed in range(2):
        files.append(tmp_path / f"picture{seed}.png")
        files[-1].write_bytes(png_bytes(40, 30, seed=seed))
    ui = Page(browser, multimodal_server.url + "/")
    page = ui.page
    assert ui.stats()["mode"] == "multimodal"
    assert page.locator("#panel-voice .unavailable").inner_text().startswith("Not available")
    page.set_input_files("#multi-file", [str(f) for f in files])
    page.wait_for_function("document.querySelectorAll('#multi-thumbs img').length === 2")
    page.click("#panel-multimodal .camera-toggle")  # a third picture: a snapshot of Chromium's fake webcam
    page.wait_for_function("document.getElementById('camera').videoWidth > 0")
    page.click("#panel-multimodal .camera-snap")
    page.wait_for_selector("#multi-thumbs img[alt='Picture: snapshot-1.jpg']")
    ui.shot(shots, "multimodal_camera")
    page.click("#panel-multimodal .camera-toggle")  # camera off again
    talk = page.locator("#talk")  # push-to-talk with the mouse: hold the button
    talk.hover()
    page.mouse.down()
    ui.wait("s.state === 'recording'", 10_000)
    page.wait_for_timeout(int((loop_seconds - 0.3) * 1000))
    page.mouse.up()
    turn = ui.wait_turn_played(0, 60_000)
    assert_played(turn)
    said = transcript(multimodal_server.url, turn["requestId"])
    assert said["mode"] == "multimodal" and said["question"] is None and said["done"]  # the model heard it
    assert page.locator(".turn .turn-images img").count() == 3
    ui.shot(shots, "multimodal")
    ui.close()


@contextmanager
def long_answers(server):
    """The server's LLM answers at length (3000 tokens, sampled) while inside the block."""
    chat = server.chat
    settings = chat.settings
    chat.settings = replace(settings, max_tokens=3000, temperature=1.0)
    try:
        yield chat
    finally:
        chat.settings = settings


def barge_in(ui: Page, server, stop, shots: Path | None = None) -> float:
    """Ask for a long story, wait for its speech, `stop()` it; checks the server cancelled it all.
    Returns the seconds the server took to free the stream."""
    page = ui.page
    with long_answers(server) as chat:
        tokens_before = chat.llm.tokens_generated
        index = len(ui.stats()["turns"])
        page.fill("#text-input", "Tell me a very long story about a dragon.")
        page.press("#text-input", "Enter")
        ui.wait(f"s.turns.length > {index} && s.turns[{index}].buffers > 0", 30_000)  # speaking
        assert metric(server.url, "llmvox_active_streams") == 1
        if shots:
            ui.shot(shots, "barge_in_speaking")
        disconnects = metric(server.url, "llmvox_client_disconnects_total")
        stop()
        stopped_at = time.monotonic()
        while metric(server.url, "llmvox_active_streams") > 0 and time.monotonic() - stopped_at < 5:
            time.sleep(0.02)
        freed_after = time.monotonic() - stopped_at
        assert metric(server.url, "llmvox_active_streams") == 0
        turn = ui.stats()["turns"][index]
        assert turn["status"] == "stopped"
        said = transcript(server.url, turn["requestId"])
        assert said["cancelled"] and said["done"]
        generated = chat.llm.tokens_generated - tokens_before
        time.sleep(0.5)
        assert generated < 3000 and chat.llm.tokens_generated - tokens_before == generated  # the LLM stopped
        assert metric(server.url, "llmvox_client_disconnects_total") == disconnects + 1
        assert page.is_disabled("#stop") and ui.stats()["state"] == "ready"
    return freed_after


def test_barge_in_cancels_the_answer_on_the_server(browser, ui_server, shots):
    ui = Page(browser, ui_server.url + "/#text")
    freed_after = barge_in(ui, ui_server, lambda: ui.page.keyboard.press("Escape"), shots)
    print(f"barge-in: the server freed the stream {freed_after:.3f} s after Escape")
    ui.shot(shots, "barge_in_stopped")
    ui.close()


def test_through_the_run_ui_proxy(browser, ui_server, proxy_factory, shots):
    proxy = proxy_factory(ui_server.url)
    ui = Page(browser, proxy.url + "/#text")
    page = ui.page
    assert ui_server.url in page.locator("#server-line").inner_text()  # "through the UI proxy"
    page.fill("#text-input", "Hello through the proxy.")
    page.press("#text-input", "Enter")
    turn = ui.wait_turn_played(0)
    assert_played(turn)
    assert transcript(ui_server.url, turn["requestId"])["question"] == "Hello through the proxy."
    # the Stop button, through the proxy: the proxy hangs up on the server at once
    freed_after = barge_in(ui, ui_server, lambda: page.click("#stop"))
    print(f"barge-in through the proxy: the server freed the stream {freed_after:.3f} s after Stop")
    # a server-side 4xx in plain words: a system prompt over the server's limit
    page.click("summary")
    page.uncheck("#prompt-default")
    page.fill("#system-prompt", "x" * 4500)
    page.fill("#text-input", "Hello again.")
    page.press("#text-input", "Enter")
    ui.wait("s.turns.length > 2 && s.turns[2].status === 'error'")
    message = page.locator("#error-text").inner_text()
    assert message.startswith("The server could not use this request.") and "4000" in message
    assert page.locator("#error").get_attribute("role") == "alert"
    ui.close()


def test_api_key_entered_in_settings(browser, ui_server, shots):
    """A server started with --api_key: the page asks for the key, then every call carries it."""
    settings = ui_server.state.settings
    settings.api_key = "ui-test-key"
    try:
        ui = Page(browser, ui_server.url + "/#text")
        page = ui.page
        page.wait_for_selector("#error:not([hidden])")
        assert page.locator("#error-text").inner_text().startswith("This server needs an API key.")
        assert page.locator("#settings").get_attribute("open") is not None  # opened where the key goes
        ui.shot(shots, "api_key_needed")
        page.fill("#api-key", "ui-test-key")
        page.press("#api-key", "Tab")  # "change": the page connects again, with the key
        page.wait_for_selector("#error", state="hidden")
        page.fill("#text-input", "Hello with a key.")
        page.press("#text-input", "Enter")
        assert_played(ui.wait_turn_played(0))
        ui.close()
    finally:
        settings.api_key = None


def test_per_request_system_prompt_reaches_the_llm(ui_server):
    """The chat endpoints' optional `system_prompt` (what the Settings box sends) changes the answer;
    greedy decoding makes the same prompt give the same answer."""
    def answer(**extra) -> str:
        r = httpx.post(ui_server.url + "/textchat", json={"text": "Hello there.", **extra}, timeout=60)
        assert r.status_code == 200 and r.content
        return transcript(ui_server.url, r.headers["x-llmvox-request-id"])["answer"]

    server_prompt = answer()
    own = answer(system_prompt="You are a pirate. Talk like one.")
    assert own == answer(system_prompt="You are a pirate. Talk like one.")
    assert own != server_prompt and answer(system_prompt="") not in (own, server_prompt)
    too_long = httpx.post(ui_server.url + "/textchat", json={"text": "Hi.", "system_prompt": "x" * 4001}, timeout=60)
    assert too_long.status_code == 422 and too_long.json()["error"]["param"] == "system_prompt"


def test_server_down_is_shown_in_words(browser, proxy_factory, shots):
    dead = f"http://127.0.0.1:{free_port()}"
    proxy = proxy_factory(dead)
    ui = Page(browser, proxy.url + "/", wait_ready=False)
    page = ui.page
    page.wait_for_selector("#error:not([hidden])")
    message = page.locator("#error-text").inner_text()
    assert f"can't reach the llmvox server at {dead}" in message and "--ip and --port" in message
    assert page.locator("#error-retry").is_visible()
    ui.shot(shots, "server_down")
    ui.close()


def test_microphone_denied_is_shown_in_words(playwright, ui_server, shots):
    """A browser that refuses the microphone (headless Chromium without the fake permission prompt)."""
    args = [a for a in CHROMIUM_ARGS if a != "--use-fake-ui-for-media-stream"]
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
    try:
        ui = Page(browser.new_context(viewport={"width": 1000, "height": 700}), ui_server.url + "/#voice")
        page = ui.page
        page.focus("#talk")
        page.keyboard.press("Enter")  # a short press: starts recording, if the microphone opens
        page.wait_for_selector("#error:not([hidden])")
        message = page.locator("#error-text").inner_text()
        assert message.startswith("Access to the microphone was blocked.") and "address bar" in message
        assert page.get_attribute("#talk", "aria-pressed") == "false"
        ui.shot(shots, "microphone_denied")
        ui.close()
    finally:
        browser.close()


def test_websocket_relay_through_the_proxy(ui_server, proxy_factory):
    """run_ui also relays WS /v1/stream (the page does not use it; other clients of the proxy may)."""
    from websockets.sync.client import connect

    proxy = proxy_factory(ui_server.url)
    audio = b""
    with connect(proxy.url.replace("http", "ws") + "/v1/stream?format=f32", max_size=None) as ws:
        ready = json.loads(ws.recv(timeout=10))
        assert ready["type"] == "ready" and ready["sample_rate"] == SAMPLE_RATE
        ws.send(json.dumps({"type": "text", "text": "Relayed speech."}))
        ws.send(json.dumps({"type": "end"}))
        while True:
            message = ws.recv(timeout=30)
            if isinstance(message, bytes):
                audio += message
                continue
            event = json.loads(message)
            if event["type"] == "done":
                break
    assert len(audio) > 0 and len(audio) == round(event["audio_seconds"] * SAMPLE_RATE) * 4


@pytest.mark.skipif(not os.environ.get("LLMVOX_UI_README_SCREENSHOT"),
                    reason="regenerates docs/ui.png: set LLMVOX_UI_README_SCREENSHOT=1")
def test_readme_screenshot(browser, voice, shots):  # noqa: F811
    """docs/ui.png: a voice turn and a text turn with the embedded SmolLM2 (real answers on screen)."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("faster_whisper")
    options = {"llm_max_tokens": 40, "llm_temperature": 0.0, "asr_threads": 2,
               "system_prompt": "You answer in one short sentence."}
    settings = ServerSettings(chat_type="voice", threads=1, chat_options=options,
                              stream=StreamConfig(max_audio_length=MAX_CODES))
    app = create_app(settings, tts=voice)
    live = LiveServer(app)
    try:
        ui = Page(browser, live.url + "/#voice")
        page = ui.page
        page.evaluate("document.getElementById('live-voice').checked = false")  # stats.turns: /voicechat
        page.check("#handsfree")
        turn = ui.wait_turn_played(0, 90_000)
        page.uncheck("#handsfree")
        assert normalise(turn["question"]) == normalise(QUESTION)
        page.click("#tab-text")
        page.fill("#text-input", "Name three colours of the rainbow.")
        page.press("#text-input", "Enter")
        ui.wait_turn_played(1, 90_000)
        page.wait_for_timeout(300)
        page.set_viewport_size({"width": 1000, "height": 760})
        path = ui.shot(shots, "readme")
        shutil.copy(path, REPO / "docs" / "ui.png")
        ui.close()
    finally:
        live.stop()
        app.state.llmvox.extras["chat"].llm.close()


def test_run_ui_entry_point_serves_the_page_and_reports_a_dead_server(tmp_path):
    """`python run_ui.py --ip --port --ui_port` (the original's flags) as a real process."""
    import subprocess
    import sys

    ui_port, dead_port = free_port(), free_port()
    log = open(tmp_path / "run_ui.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([sys.executable, str(REPO / "run_ui.py"), "--ip", "127.0.0.1", "--port", str(dead_port),
                                "--ui_port", str(ui_port)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{ui_port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                page = httpx.get(url + "/", headers={"Accept": "text/html"}, timeout=2)
                break
            except httpx.HTTPError:
                assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "run_ui.log").read_text()
                time.sleep(0.1)
        assert page.status_code == 200 and 'src="ui/app.js"' in page.text
        assert httpx.get(url + "/ui/app.js").headers["content-type"].startswith("text/javascript")
        info = httpx.get(url + "/v1/info")
        assert info.status_code == 502 and info.json()["error"]["code"] == "upstream_unreachable"
        assert f"127.0.0.1:{dead_port}" in info.json()["error"]["message"]
    finally:
        process.terminate()
        process.wait(10)
        log.close()
    assert f"open {url}/" in (tmp_path / "run_ui.log").read_text()


# ---- hands-free over WS /v1/realtime (llmvox/server/static/realtime.js) ----------------------------------
LIVE_KEY = "ui-live-key"
BARGE_PAUSE = 10.0  # s of silence after the question in the barge-in test's microphone


@pytest.fixture(scope="module")
def live_server():
    """chat type voice with the embedded voice, SmolLM2 and Whisper, behind an API key (the page's socket
    carries it as ?api_key=, since a browser WebSocket cannot send headers)."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("faster_whisper")
    from llmvox.api import LLMVoX

    options = {"llm_max_tokens": 24, "llm_temperature": 0.0, "asr_threads": 2,
               "system_prompt": "You answer in one short sentence."}
    settings = ServerSettings(chat_type="voice", api_key=LIVE_KEY, threads=1, num_workers=1, chat_options=options,
                              idle_timeout=60)
    app = create_app(settings, tts=LLMVoX.from_pretrained())
    live = LiveServer(app)
    live.state = app.state.llmvox
    live.chat = live.state.extras["chat"]
    yield live
    live.stop()
    live.chat.llm.close()


@pytest.fixture(scope="module")
def pausing_browser(playwright, question_wav, tmp_path_factory):
    """Chromium whose microphone asks the question, then stays silent for BARGE_PAUSE s before asking again:
    the answer to the first question is playing when the second one starts, however slow this machine is."""
    import soundfile as sf

    wav, _ = question_wav
    audio, rate = sf.read(wav, dtype="float32")
    path = tmp_path_factory.mktemp("ui_mic_pause") / "question_pause.wav"
    sf.write(path, np.concatenate([audio, np.zeros(int(BARGE_PAUSE * rate), np.float32)]), rate, subtype="PCM_16")
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path_factory.mktemp("ui_chromium_profile_pause")), executable_path=CHROMIUM, headless=True,
        args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={path}"], viewport={"width": 1000, "height": 1000})
    context.set_default_timeout(30_000)
    yield context
    context.close()


def keyed_page(browser, server) -> Page:
    """The page with the live server's key entered in Settings."""
    ui = Page(browser, server.url + "/#voice")
    page = ui.page
    page.wait_for_selector("#error:not([hidden])")  # the page asks for the key
    page.fill("#api-key", LIVE_KEY)
    page.press("#api-key", "Tab")
    page.wait_for_selector("#error", state="hidden")
    return ui


def live_page(browser, server, *, barge_in: bool, prompt: str | None = None) -> Page:
    """The Voice tab with the key entered in Settings and hands-free switched on (the live conversation);
    `prompt`: the page's own system prompt (sent as the session's instructions)."""
    ui = keyed_page(browser, server)
    page = ui.page
    if barge_in:
        page.check("#barge-voice")
    if prompt is not None:
        page.uncheck("#prompt-default")
        page.fill("#system-prompt", prompt)
    page.check("#handsfree")
    ui.wait("s.live.state === 'listening'", 15_000)
    return ui


def live_turn(ui: Page, condition: str, timeout: float) -> dict:
    """The first answer of the live conversation for which `condition` (about `t`) holds."""
    ui.wait(f"s.live.turns.some((t) => {condition})", timeout)
    return ui.page.evaluate(f"window.__llmvoxStats.live.turns.find((t) => {condition})")


def assert_live_played(turn: dict) -> None:
    """Every pcm16 sample of the answer the page received was scheduled, the buffers back to back."""
    assert turn["buffers"] >= 1 and turn["bytes"] > 0
    assert turn["seconds"] == pytest.approx(turn["bytes"] / 2 / SAMPLE_RATE, abs=1e-6)
    schedule = turn["schedule"]
    joins = [start - (prev + length) for (prev, length), (start, _) in zip(schedule, schedule[1:], strict=False)]
    assert len(schedule) == turn["buffers"] and sum(j > 1e-9 for j in joins) == turn["gaps"]
    assert all(j == pytest.approx(0, abs=1e-9) or j > 0 for j in joins)


def live_transcript(server, turn: dict) -> dict:
    turn_id = turn["metadata"]["llmvox_turn_id"]
    return httpx.get(f"{server.url}/v1/transcripts/{turn_id}", params={"wait": 10}, timeout=15,
                     headers={"Authorization": f"Bearer {LIVE_KEY}"}).json()


def test_live_resampler_and_pcm16_in_the_browser(browser, live_server):
    """realtime.js's parts in Chromium: 48 kHz frames -> 16 kHz keeps a 440 Hz tone and drops a 12 kHz one
    (frame boundaries leave no trace), pcm16 base64 round-trips, and the played time of a schedule."""
    ui = Page(browser, live_server.url + "/")
    result = ui.page.evaluate("""async () => {
        const rt = await import('./ui/realtime.js');
        const r = new rt.StreamResampler(48000, 16000);
        const x = new Float32Array(48000);
        for (let i = 0; i < x.length; i++) {
            x[i] = 0.5 * Math.sin(2 * Math.PI * 440 * i / 48000) + 0.3 * Math.sin(2 * Math.PI * 12000 * i / 48000);
        }
        const out = [];
        for (let i = 0; i < x.length; i += 960) out.push(...r.push(x.subarray(i, i + 960)));
        let err = 0;
        for (let j = 200; j < out.length - 200; j++) err += (out[j] - 0.5 * Math.sin(2 * Math.PI * 440 * j / 16000)) ** 2;
        const back = Array.from(rt.pcm16Floats(rt.pcm16Base64(new Float32Array([0, 0.5, -0.5, 1, -1]))));
        return { n: out.length, rms: Math.sqrt(err / (out.length - 400)), back,
                 played: rt.playedSeconds([[1, 0.2], [1.2, 0.2], [2, 0.2]], 1.3) };
    }""")
    assert abs(result["n"] - 16000) <= 20 and result["rms"] < 0.005
    assert result["back"] == pytest.approx([0, 0.5, -0.5, 1, -1], abs=1 / 32768)  # one pcm16 step
    assert result["played"] == pytest.approx(0.3)
    ui.close()


def test_live_conversation_answers_a_spoken_question(browser, live_server, shots):
    """Hands-free on the Voice tab: the fake microphone streams over WS /v1/realtime, the server's VAD ends
    the turn, Whisper's transcript and the answer's words appear, its audio deltas are played."""
    ui = live_page(browser, live_server, barge_in=False)
    page = ui.page
    turn = live_turn(ui, "t.status === 'done' && t.audioSeconds !== undefined", 120_000)
    page.uncheck("#handsfree")
    ui.wait("s.live.state === 'off'")
    assert_live_played(turn)
    live = ui.stats()["live"]
    assert live["sentMs"] > 1000 and live["events"]["input_audio_buffer.speech_stopped"] >= 1 and not live["errors"]
    entry = page.locator(".turn").first
    assert normalise(entry.locator(".question").inner_text()) == normalise(QUESTION)  # Whisper heard it
    said = live_transcript(live_server, turn)
    assert said["done"] and said["answer"] and normalise(said["answer"]) == normalise(turn["answer"])
    assert normalise(entry.locator(".answer").inner_text()) == normalise(turn["answer"])
    # per-turn latency: end of speech -> first audio, from response.done's metadata and the page's clock
    assert float(turn["metadata"]["end_of_speech_to_first_audio_ms"]) == pytest.approx(turn["serverLatencyMs"])
    assert turn["serverLatencyMs"] > 0 and turn["ttfa"] > 0
    assert "end of speech → first audio" in entry.locator(".metrics").inner_text()
    print(f"live turn: end of speech -> first audio {turn['serverLatencyMs']:.0f} ms (server), "
          f"{turn['ttfa'] * 1000:.0f} ms in the page; {turn['seconds']:.2f} s of speech")
    ui.shot(shots, "live")
    ui.close()


def test_live_conversation_speaking_interrupts_the_answer(pausing_browser, live_server, shots):
    """With "speaking interrupts the answer": a long answer plays, the fake microphone's next question
    (it loops) starts, the page silences the answer at once and tells the server how much it played."""
    with long_answers(live_server):
        ui = live_page(pausing_browser, live_server, barge_in=True, prompt="Whatever you are asked, tell a very "
                       "long story about a dragon and a knight, in many long sentences.")
        page = ui.page
        cut = "t.status === 'interrupted' && t.buffers > 0"
        turn = live_turn(ui, cut, 180_000)
        assert turn["sourcesAfterStop"] == 0  # every scheduled buffer stopped, on speech_started
        received_ms = turn["bytes"] / 2 * 1000 / SAMPLE_RATE
        assert 0 < turn["playedMs"] <= received_ms
        assert turn["playedMs"] > 1000  # it played for a while (the microphone was silent) before the cut
        index = page.evaluate(f"window.__llmvoxStats.live.turns.findIndex((t) => {cut})")
        # the server cut the assistant item where the page said it stopped playing
        ui.wait(f"s.live.turns[{index}].truncatedMs === s.live.turns[{index}].playedMs", 30_000)
        after = ui.stats()["live"]["turns"][index]
        assert after["buffers"] == turn["buffers"] and after["bytes"] == turn["bytes"]  # nothing played after
        # response.done: "cancelled" when the cut came while the server was still sending; "completed" when
        # a fast machine had already sent all of it and the cut fell in the page's buffer (still truncated)
        assert after["serverStatus"] in ("cancelled", "completed") and after["metadata"] is not None
        if after["serverStatus"] == "completed":
            assert turn["playedMs"] < received_ms
        assert live_transcript(live_server, after)["done"]
        print(f"barge-in: {turn['playedMs']} ms of {received_ms:.0f} ms received had played; "
              f"{len(ui.stats()['live']['turns'])} answers so far")
        assert "(interrupted)" in page.locator(".turn.stopped .answer").first.inner_text()
        ui.shot(shots, "live_interrupted")
        page.uncheck("#handsfree")
        ui.close()


def test_the_word_being_heard_is_highlighted(browser, live_server):
    """With a voice that has word timestamps (the embedded one), a text turn's answer is shown as its
    spoken words, the one being heard highlighted while it plays, none once it has played. Hands-free
    stays off: its microphone (the fake one asks a question) would start a voice turn beside this one."""
    ui = keyed_page(browser, live_server)
    page = ui.page
    page.click("#tab-text")
    page.fill("#text-input", "Tell me about the moon.")
    page.click("#send-text")
    page.wait_for_selector(".turn .answer span.speaking", timeout=60_000)  # a word lit while it plays
    page.wait_for_function("document.querySelectorAll('.turn .answer span.speaking').length === 0",
                           timeout=60_000)
    words = [t.strip() for t in page.locator(".turn .answer span").all_inner_texts()]
    assert len(words) >= 3 and all(words)
    ui.close()
