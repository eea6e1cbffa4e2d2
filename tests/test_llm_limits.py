"""Chat input bounded before the work: text and history limits, the prompt fitted to the real model's
context (the embedded SmolLM2 through llama.cpp, a tiny transformers model, llama.cpp's OpenAI-compatible
server), failures that end a turn cleanly, sampling values range-checked, and audio and images refused
from their size before they are decoded."""

from __future__ import annotations

import base64
import io
import math
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from llmvox.chat import ChatRequest, ChatSettings, ChatTurn, request_from_openai
from llmvox.errors import LLMVoXError
from llmvox.input_errors import InputError, InputTooLarge
from llmvox.llm.base import LLMBackend, fit_to_context


@pytest.fixture(scope="module")
def smollm2():
    from llmvox.llm.llamacpp import LlamaCppBackend

    llm = LlamaCppBackend(n_threads=1)
    yield llm
    llm.close()


WORDS = "the quick brown fox jumps over a lazy dog while seven cats watch quietly from the old wall".split()


def _text(n_words: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, n_words))


def test_overlong_chat_text_is_413_before_the_llm():
    with pytest.raises(LLMVoXError, match="the limit is 4096") as err:
        ChatRequest.from_body("text", {"text": "Tell me about cats. " * 10000}, ChatSettings())
    assert err.value.status == 413
    with pytest.raises(LLMVoXError) as err:
        request_from_openai([{"role": "user", "content": "hi"}] * 3000, ChatSettings(), llm_hears=False, has_asr=False)
    assert err.value.status == 413 and "1000" in str(err.value)


def test_long_history_is_trimmed_to_the_context_and_the_turn_answers(smollm2):
    history = []
    for i in range(40):  # about 40 x 2 x 110 tokens: far more than the 2048-token context
        history += [{"role": "user", "content": _text(100, i)}, {"role": "assistant", "content": _text(100, i + 99)}]
    request = ChatRequest(mode="text", text="What colour is the sky?", history=history)
    turn = ChatTurn(request, smollm2, settings=ChatSettings(max_tokens=16, temperature=0.0, seed=1))
    fitted, budget = smollm2.fit_messages(turn.messages(), 16)
    assert fitted[0]["role"] == "system" and fitted[-1]["content"] == "What colour is the sky?"
    assert 2 < len(fitted) < len(history) + 2 and budget == 16
    assert fitted[1:-1] == history[len(history) - (len(fitted) - 2):]  # the newest turns are kept
    assert turn.run().strip()
    assert turn.done and turn.error is None


def test_a_question_larger_than_the_context_is_413(smollm2):
    request = ChatRequest(mode="text", text=_text(3000))
    turn = ChatTurn(request, smollm2, settings=ChatSettings(max_text_chars=10**6))
    with pytest.raises(LLMVoXError, match="context is 2048 tokens") as err:
        turn.start()
    assert err.value.status == 413 and turn.done and turn.error


class _Broken(LLMBackend):
    name = "broken"

    def stream_chat(self, messages, **kwargs):
        raise ValueError("llama_decode returned -1")
        yield ""  # pragma: no cover - makes this a generator, as real backends are


def test_any_llm_failure_before_the_first_word_is_502_and_ends_the_turn():
    turn = ChatTurn(ChatRequest(mode="text", text="Hi"), _Broken())
    waiter = threading.Thread(target=turn.finished.wait, args=(5,))
    waiter.start()
    with pytest.raises(LLMVoXError, match="failed before answering") as err:
        turn.start()
    assert err.value.status == 502
    waiter.join(1)
    assert not waiter.is_alive() and turn.done and "ValueError" in turn.error
    snapshot = turn.snapshot()
    assert snapshot["done"] is True and snapshot["error"]


def test_history_limits_and_malformed_history_are_client_errors():
    big = [{"role": "user", "content": "x" * 100_000}, {"role": "assistant", "content": "y" * 100_001},
           {"role": "user", "content": "and now?"}]
    with pytest.raises(LLMVoXError, match="200,000 characters") as err:
        request_from_openai(big, ChatSettings(), llm_hears=False, has_asr=False)
    assert err.value.status == 413
    with pytest.raises(LLMVoXError, match="the user message has 5000 characters; the limit is 4096") as err:
        request_from_openai([{"role": "user", "content": [{"type": "text", "text": "a" * 5000}]}], ChatSettings(),
                            llm_hears=False, has_asr=False)
    assert err.value.status == 413
    odd = [{"role": "user", "content": [{"type": "text", "text": 5}]}, {"role": "user", "content": "hi"}]
    assert request_from_openai(odd, ChatSettings(), llm_hears=False, has_asr=False).history[0]["content"] == ""


def test_fitting_keeps_system_turns_and_never_opens_the_history_with_the_assistant():
    def words(kept):  # a stand-in tokenizer: one token a word, two around each message
        return sum(len(m["content"].split()) + 2 for m in kept)

    system = {"role": "system", "content": "be brief"}
    rule = {"role": "system", "content": "speak french"}
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": "w " * 10} for i in range(20)]
    question = {"role": "user", "content": "why?"}
    messages = [system, *history[:10], rule, *history[10:], question]
    fitted, budget = fit_to_context(messages, 500, 64 + 80, words, min_answer=64)
    assert fitted[0] is system and rule in fitted and fitted[-1] is question
    kept = [m for m in fitted if m["role"] != "system"][:-1]
    assert kept and kept[0]["role"] == "user" and kept == history[len(history) - len(kept):]
    assert words(fitted) <= 80 and budget == 144 - words(fitted)
    assert fit_to_context(messages, 500, 10_000, words) == (messages, 500)  # it fits: unchanged
    opening = [{"role": "assistant", "content": "hello!"}, question]
    assert fit_to_context(opening, 5, 10_000, words) == (opening, 5)  # nothing dropped, nothing reordered
    with pytest.raises(InputTooLarge, match="the question and system prompt are 20 tokens; the model's context is "
                                            "70 tokens, with 64 kept for the answer"):
        fit_to_context([system, {"role": "user", "content": "w " * 14}], 500, 70, words, min_answer=64)


def test_llamacpp_counts_the_prompt_as_its_chat_template_renders_it(smollm2):
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": _text(60, i)} for i in range(120)]
    messages = [*history, {"role": "user", "content": "And the sky?"}]  # no system prompt: the template adds one
    fitted, budget = smollm2.fit_messages(messages, 1000)
    llm = smollm2._llm
    rendered = smollm2._formatter()(messages=fitted).prompt
    assert "You are a helpful AI assistant named SmolLM" in rendered  # the template's own default system prompt
    prompt = len(llm.tokenize(rendered.encode(), add_bos=False, special=True))
    assert prompt + budget == llm.n_ctx() and budget >= 64 and fitted[0]["role"] == "user"
    dropped_one_more = smollm2._formatter()(messages=fitted[2:]).prompt
    assert len(llm.tokenize(dropped_one_more.encode(), add_bos=False, special=True)) < prompt


def test_an_llm_failure_while_fitting_or_mid_answer_ends_the_turn():
    class FitFails(_Broken):
        def fit_messages(self, messages, max_tokens):
            raise RuntimeError("tokenizer crashed")

    turn = ChatTurn(ChatRequest(mode="text", text="Hi"), FitFails())
    with pytest.raises(LLMVoXError, match=r"failed before answering \(RuntimeError\)") as err:
        turn.start()
    assert err.value.status == 502 and turn.done and "RuntimeError" in turn.error

    class MidAnswer(LLMBackend):
        def stream_chat(self, messages, **kwargs):
            yield "Cats are"
            raise RuntimeError("llama_decode returned -3")

    turn = ChatTurn(ChatRequest(mode="text", text="Hi"), MidAnswer())
    assert turn.run() == "Cats are Sorry, I lost my train of thought there."
    assert turn.done and "llama_decode returned -3" in turn.error


def test_a_started_turn_whose_answer_is_never_read_is_finished_by_cancel(smollm2):
    turn = ChatTurn(ChatRequest(mode="text", text="Say hi."), smollm2, settings=ChatSettings(max_tokens=8))
    turn.start()  # the first word is out; then the speech fails to start and the route cancels the turn
    turn.cancel()
    assert turn.done and turn.finished.wait(0) and list(turn.deltas()) == []
    assert smollm2._lock.acquire(timeout=1)  # the stream was closed: the model is free for the next turn
    smollm2._lock.release()


def test_a_broken_recogniser_is_503_and_ends_the_turn():
    class BrokenASR:
        def task_for(self, language, target):
            return language, "transcribe"

        def transcribe(self, audio, **kwargs):
            raise RuntimeError("CUDA failed with error out of memory")

    request = ChatRequest(mode="voice", audio=np.zeros(16000, np.float32))
    turn = ChatTurn(request, _Broken(), asr=BrokenASR())
    with pytest.raises(LLMVoXError, match=r"speech recognition failed \(RuntimeError\)") as err:
        turn.start()
    assert err.value.status == 503 and turn.done and turn.error


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("temperature", -5, "temperature must be a number in [0, 2] (got -5.0)"),
    ("temperature", math.inf, "temperature must be a number in [0, 2] (got inf)"),
    ("top_p", math.nan, "top_p must be a number in (0, 1] (got nan)"),
    ("top_p", 0, "top_p must be a number in (0, 1] (got 0.0)"),
    ("max_tokens", 0, "max_tokens must be at least 1 (got 0)"),
    ("max_completion_tokens", -3, "max_completion_tokens must be at least 1 (got -3)"),
])
def test_bad_sampling_values_are_400_naming_the_field(field, value, expected):
    from llmvox.errors import LLMVoXError
    from llmvox.server.chat_routes import CompletionRequest, _request_settings

    body = CompletionRequest(messages=[{"role": "user", "content": "hi"}], **{field: value})
    with pytest.raises(LLMVoXError) as err:
        _request_settings(ChatSettings(), body)
    assert err.value.status == 400 and str(err.value) == expected and err.value.body()["error"]["param"] == field
    good = CompletionRequest(messages=[], temperature=0, top_p=1, max_tokens=5000)
    assert (lambda s: (s.temperature, s.top_p, s.max_tokens))(_request_settings(ChatSettings(), good)) == (0, 1, 1000)


@pytest.fixture()
def chat_app(smollm2):
    """The chat routes over the real SmolLM2 with the server's own error handlers (text only: no voice)."""
    from types import SimpleNamespace

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from llmvox.server.app import _install_error_handlers
    from llmvox.server.chat_routes import ChatState, chat_router
    from llmvox.server.metrics import Metrics

    no_voices = SimpleNamespace(voices={}, resolve=lambda voice, param: voice)  # resolves, but none loaded
    server = SimpleNamespace(metrics=Metrics(lambda: 0, lambda: 0, lambda: None), engine=None, slots=None,
                             voices=no_voices, engine_for=lambda voice: None,
                             draining=False, formats=["pcm", "wav"], sample_rate=24000)  # no voice: 503 to speak
    state = ChatState(llm=smollm2, server=server, settings=ChatSettings(max_tokens=8, temperature=0.0))
    app = FastAPI()
    app.state.llmvox = server
    _install_error_handlers(app)
    app.include_router(chat_router(state))
    with TestClient(app) as client:
        yield client, state


def test_the_routes_answer_json_errors_and_failed_turns_are_done_at_once(chat_app, smollm2):
    client, state = chat_app
    r = client.post("/textchat", json={"text": "Tell me about cats. " * 10000})
    assert r.status_code == 413 and "the limit is 4096" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}] * 3000})
    assert r.status_code == 413 and r.json()["error"]["code"] == "input_too_large"
    for sampling, field in [('"temperature": -5', "temperature"), ('"top_p": NaN', "top_p")]:
        raw = '{"messages": [{"role": "user", "content": "hi"}], ' + sampling + "}"  # NaN as clients send it
        r = client.post("/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "system", "content": _text(3000)},
                                                               {"role": "user", "content": "Why?"}]})
    assert r.status_code == 413 and "context is 2048 tokens" in r.json()["error"]["message"]
    for path, body in [("/textchat", {"text": "Say hi."}),  # the first word comes; then the voice cannot start
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})]:
        state.llm = _Broken() if path != "/textchat" else smollm2
        r = client.post(path, json=body)
        assert r.status_code in (502, 503) and r.json()["error"]["message"], r.text
        turn = list(state.transcripts._items.values())[-1]
        t0 = time.monotonic()
        snapshot = client.get(f"/v1/transcripts/{turn.id}", params={"wait": 3}).json()
        assert time.monotonic() - t0 < 1 and snapshot["done"] is True and snapshot["error"], snapshot


# What OpenAI-compatible servers answer to a prompt over the model's context (llama-cpp-python's server, word
# for word; vLLM and OpenAI send the same shape), before any text or as an event inside the stream.
CONTEXT_ERROR = {"error": {"message": "This model's maximum context length is 2048 tokens. However, you requested "
                           "4039 tokens (4031 in the messages, 8 in the completion). Please reduce the length of "
                           "the messages or completion.", "type": "invalid_request_error", "param": "messages",
                           "code": "context_length_exceeded"}}


@pytest.fixture()
def refusing_remote():
    """A loopback HTTP server answering /v1/chat/completions with the path's status and CONTEXT_ERROR."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            status, kind = {"/400/v1/chat/completions": (400, "json"), "/401/v1/chat/completions": (401, "json"),
                            "/event/v1/chat/completions": (200, "sse")}[self.path]
            error = CONTEXT_ERROR if status != 401 else {"error": {"message": "Incorrect API key provided"}}
            payload = (json.dumps(error) if kind == "json" else f"data: {json.dumps(error)}\n\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if kind == "json" else "text/event-stream")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_remote_llm_refusing_the_prompt_is_a_client_error_with_its_message(refusing_remote):
    from llmvox.llm.openai_backend import OpenAIBackend

    for where in ("400", "event"):
        backend = OpenAIBackend(f"{refusing_remote}/{where}/v1", model="m")
        turn = ChatTurn(ChatRequest(mode="text", text="Tell me about cats."), backend)
        with pytest.raises(LLMVoXError, match="too long for the LLM server's model: This model's maximum context "
                                            "length is 2048 tokens") as err:
            turn.start()
        assert err.value.status == 413 and turn.done and turn.error
        backend.close()
    backend = OpenAIBackend(f"{refusing_remote}/401/v1", model="m")
    turn = ChatTurn(ChatRequest(mode="text", text="Tell me about cats."), backend)
    with pytest.raises(LLMVoXError, match="the LLM failed before answering: the LLM server answered HTTP 401: "
                                        "Incorrect API key provided$") as err:
        turn.start()  # the server's own configuration is wrong, not the question
    assert err.value.status == 502 and turn.done and turn.error
    backend.close()


@pytest.mark.slow
def test_a_real_remote_llm_that_fails_before_answering_is_502(tmp_path):
    pytest.importorskip("llama_cpp.server")
    from _chat_models import free_port, start_llamacpp_server, stop_process

    from llmvox.llm.llamacpp import default_gguf_path
    from llmvox.llm.openai_backend import OpenAIBackend

    port = free_port()
    process = start_llamacpp_server(default_gguf_path(), port, tmp_path / "server.log")
    try:
        backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", model="smollm2")
        bad = ChatTurn(ChatRequest(mode="text", text="hi", history=[{"role": "robot", "content": "x"}]), backend)
        with pytest.raises(LLMVoXError, match=r"the LLM failed before answering: the LLM server answered HTTP \d+: "
                                            r"7 validation errors") as err:
            bad.start()  # llama-cpp-python's server answers an unknown role with an HTTP 500 on many lines
        assert err.value.status == 502 and bad.done and bad.error and "\n" not in bad.error
        # llama-cpp-python's server breaks off a streamed prompt over its context (an empty 200, or a dropped
        # connection): that is still a 502, not a 500
        long = ChatTurn(ChatRequest(mode="text", text=_text(3000)), backend, settings=ChatSettings(max_tokens=8))
        with pytest.raises(LLMVoXError, match="^the LLM failed before answering: the LLM server") as err:
            long.start()
        assert err.value.status == 502 and long.done and long.error
        backend.close()
    finally:
        stop_process(process)


def test_transformers_backend_fits_its_positions(tmp_path):
    pytest.importorskip("transformers")
    from _chat_models import build_causal_lm

    from llmvox.llm.hf_generate import context_size
    from llmvox.llm.transformers_backend import TransformersBackend

    llm = TransformersBackend(build_causal_lm(tmp_path, n_positions=256))
    assert context_size(llm.model, llm.tokenizer) == 256
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": "the cat sat on the mat. " * 3}
               for i in range(40)]
    turn = ChatTurn(ChatRequest(mode="text", text="hello world", history=history), llm,
                    settings=ChatSettings(max_tokens=1000, temperature=0.0, system_prompt="Answer briefly."))
    fitted, budget = llm.fit_messages(turn.messages(), 1000)
    prompt = llm.prompt_inputs(fitted)["input_ids"].shape[-1]
    assert fitted[0]["role"] == "system" and fitted[1]["role"] == "user" and 2 < len(fitted) < 42
    assert prompt + budget == 256 and budget >= 64
    start = llm.tokens_generated
    assert turn.run() and turn.error is None and llm.tokens_generated - start <= budget
    too_long = ChatTurn(ChatRequest(mode="text", text="the cat sat on the mat. " * 40), llm)
    with pytest.raises(LLMVoXError, match="the model's context is 256 tokens") as err:
        too_long.start()
    assert err.value.status == 413 and too_long.done


def test_pcm_longer_than_the_limit_is_refused_before_conversion():
    from llmvox.asr.input import decode_audio_base64

    pcm = base64.b64encode(np.zeros(16000 * 61, "<i2").tobytes()).decode()
    with pytest.raises(InputTooLarge, match=r"61\.0 s .* the limit is 60 s"):
        decode_audio_base64(pcm, max_seconds=60)
    assert len(decode_audio_base64(pcm)) == 16000 * 61  # without a limit, as before


def test_audio_file_length_comes_from_its_header_and_a_lying_header_is_capped():
    from llmvox.asr.input import decode_file

    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(16000 * 90, np.int16), 16000, format="FLAC")
    with pytest.raises(InputTooLarge, match=r"90\.0 s long; the limit is 60 s"):
        decode_file(buffer.getvalue(), 16000, "audio_base64", max_seconds=60)
    raw = bytearray(io.BytesIO(_wav_bytes(90)).getvalue())
    raw[40:44] = (0xFFFFFFFF).to_bytes(4, "little")  # a streamed WAV: "unknown" data size
    samples_or_error = None
    try:
        samples_or_error = decode_file(bytes(raw), 16000, "audio_base64", max_seconds=60)
    except InputTooLarge as exc:
        samples_or_error = exc
    assert isinstance(samples_or_error, InputTooLarge)


def _wav_bytes(seconds: float) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(16000 * seconds), np.int16), 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_corrupt_audio_error_names_no_object():
    from llmvox.asr.input import decode_file

    with pytest.raises(InputError) as err:
        decode_file(b"RIFF" + bytes(200), 16000, "audio_base64")
    assert "0x" not in str(err.value) and "BytesIO" not in str(err.value)
    assert "not a readable audio file" in str(err.value)


def test_image_limits_use_the_flags_unit_and_are_413():
    from PIL import Image

    from llmvox.llm.images import ImageLimits, load_image

    limits = ImageLimits(max_bytes=20 * 1024 * 1024)
    with pytest.raises(InputTooLarge, match=r"the limit is 20 MB"):
        load_image(b"\x89PNG" + bytes(21 * 1024 * 1024), limits=limits)
    with pytest.raises(InputTooLarge, match=r"the limit is 20 MB"):  # refused from the base64 length
        load_image("A" * (30 * 1024 * 1024), limits=limits)
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")  # 400 M pixels in a small file
    with pytest.raises(InputTooLarge, match="pixels"):
        load_image(bomb.getvalue(), limits=limits)
