"""LLM backends with real models: tiny transformers models built offline, the bundled SmolLM2 GGUF on
llama.cpp, and llama-cpp-python's own OpenAI-compatible server on loopback."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from _chat_models import (
    build_audio_lm,
    build_causal_lm,
    build_vlm,
    free_port,
    png_bytes,
    start_llamacpp_server,
    stop_process,
)

from llmvox.errors import LLMVoXError
from llmvox.llm.hf_generate import StopText

pytest.importorskip("transformers")

MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "hello world"}]
CAPITAL = [{"role": "system", "content": "You answer in one short sentence."},
           {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory):
    return build_causal_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="module")
def tiny_lm(tiny_lm_dir):
    from llmvox.llm.transformers_backend import TransformersBackend

    return TransformersBackend(tiny_lm_dir)


def reference_greedy(backend, messages, max_new_tokens):
    """What transformers' own generate() makes from the same prompt, greedily (no streaming)."""
    inputs = backend.prompt_inputs(messages)
    with torch.inference_mode():
        out = backend.model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                                     pad_token_id=backend.pad_token_id)
    return backend.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def consume_then_cancel(backend, after: int, **kwargs) -> tuple[int, int]:
    """Read `after` deltas, set cancel, drain; return the tokens made by then and 0.3 s later."""
    cancel = threading.Event()
    start = backend.tokens_generated
    for i, _ in enumerate(backend.stream_chat(MESSAGES, cancel=cancel, **kwargs)):
        if i + 1 == after:
            cancel.set()
    stopped = backend.tokens_generated - start
    time.sleep(0.3)
    return stopped, backend.tokens_generated - start


# ---- stop strings ------------------------------------------------------------------------------
def test_stop_text_cuts_across_delta_boundaries():
    stops = StopText(["<|eot_id|>", "END"])
    out = [stops.feed(d) for d in ["Hello", " wor", "ld<|eo", "t_id|> ignored"]]
    assert "".join(out) == "Hello world" and stops.stopped
    stops = StopText(["END"])
    assert stops.feed("tail E") == "tail " and stops.flush() == "E"  # a prefix that never completed
    assert StopText(None).feed("x") == "x"


# ---- transformers ------------------------------------------------------------------------------
def test_transformers_prompt_uses_the_chat_template(tiny_lm):
    ids = tiny_lm.prompt_inputs(MESSAGES)["input_ids"][0]
    text = tiny_lm.tokenizer.decode(ids)
    assert text == ("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nhello world<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_transformers_stream_matches_plain_generate(tiny_lm):
    deltas = list(tiny_lm.stream_chat(MESSAGES, max_tokens=24, temperature=0))
    assert len(deltas) > 1  # it streamed in pieces
    assert "".join(deltas) == reference_greedy(tiny_lm, MESSAGES, 24)


def test_transformers_sampling_is_seeded_and_counts_tokens(tiny_lm):
    before = tiny_lm.tokens_generated
    a = tiny_lm.chat(MESSAGES, max_tokens=16, temperature=1.0, seed=3)
    assert tiny_lm.tokens_generated - before == 16  # EOS is suppressed in this model: runs to max_tokens
    assert a == tiny_lm.chat(MESSAGES, max_tokens=16, temperature=1.0, seed=3)
    assert a != tiny_lm.chat(MESSAGES, max_tokens=16, temperature=1.0, seed=4)


def test_transformers_stop_string_and_eos_token(tiny_lm_dir, tiny_lm):
    from llmvox.llm.transformers_backend import TransformersBackend

    full = tiny_lm.chat(MESSAGES, max_tokens=24, temperature=0)
    stop = full[len(full) // 2: len(full) // 2 + 2]
    cut = tiny_lm.chat(MESSAGES, max_tokens=24, temperature=0, stop=[stop])
    assert cut == full[: full.index(stop)]
    # --eos_token: a token of the greedy answer becomes an end-of-turn token, so the answer ends there
    inputs = tiny_lm.prompt_inputs(MESSAGES)
    with torch.inference_mode():
        ids = tiny_lm.model.generate(**inputs, do_sample=False, max_new_tokens=24)[0, inputs["input_ids"].shape[1]:]
    token = tiny_lm.tokenizer.convert_ids_to_tokens(int(ids[5]))
    ended = TransformersBackend(tiny_lm_dir, eos_token=token)
    assert tiny_lm.tokenizer.convert_tokens_to_ids(token) in ended.eos_token_ids
    short = ended.chat(MESSAGES, max_tokens=24, temperature=0)
    assert len(short) < len(full) and full.startswith(short)
    unknown = TransformersBackend(tiny_lm_dir, eos_token="<|eot_id|>")  # not in this vocabulary: ignored
    assert unknown.eos_token_ids == tiny_lm.eos_token_ids


def test_transformers_cancel_stops_the_model(tiny_lm):
    stopped, later = consume_then_cancel(tiny_lm, 3, max_tokens=3000, temperature=1.0)
    assert stopped < 100 and later == stopped


def test_transformers_closing_the_stream_stops_the_model(tiny_lm):
    stream = tiny_lm.stream_chat(MESSAGES, max_tokens=3000, temperature=1.0)
    before = tiny_lm.tokens_generated
    for _ in range(3):
        next(stream)
    stream.close()  # the consumer went away without cancelling
    stopped = tiny_lm.tokens_generated
    time.sleep(0.3)
    assert stopped - before < 100 and tiny_lm.tokens_generated == stopped


def test_transformers_failure_mid_answer_is_an_llmvox_error(tmp_path):
    from llmvox.llm.transformers_backend import TransformersBackend

    # GPT-2 with a 64-position context cannot write past it: a real failure inside generate()
    backend = TransformersBackend(build_causal_lm(tmp_path, arch="gpt2", n_positions=64))
    got = []
    with pytest.raises(LLMVoXError, match="the LLM failed while generating"):
        for delta in backend.stream_chat(MESSAGES, max_tokens=200, temperature=1.0):
            got.append(delta)
    assert got  # it failed after writing something


def test_transformers_load_errors(tmp_path):
    from llmvox.llm.transformers_backend import TransformersBackend

    with pytest.raises(LLMVoXError, match="cannot load the LLM"):
        TransformersBackend(tmp_path / "missing")
    with pytest.raises(LLMVoXError, match="CUDA is not available"):
        TransformersBackend(tmp_path, device="cuda:0")


# ---- vision and audio models -------------------------------------------------------------------
def last_logits(backend, inputs):
    with torch.inference_mode():
        return backend.model(**inputs).logits[0, -1]


def image_message(image, text="what is this image about?"):
    return [{"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


def test_vlm_answers_about_an_image(tmp_path):
    from llmvox.llm.images import load_image
    from llmvox.llm.vlm import VisionLanguageBackend

    backend = VisionLanguageBackend(build_vlm(tmp_path))
    messages = image_message(load_image(png_bytes(64, 48)))
    inputs = backend.prompt_inputs(messages)
    assert inputs["pixel_values"].shape[-2:] == (28, 28)
    image_id = backend.tokenizer.convert_tokens_to_ids("<image>")
    assert int((inputs["input_ids"] == image_id).sum()) == 4  # one per 14-px patch of the 28-px image
    deltas = list(backend.stream_chat(messages, max_tokens=12, temperature=0))
    assert "".join(deltas) == reference_greedy(backend, messages, 12)
    # the picture really reaches the model: another picture moves the next-token logits
    other = backend.prompt_inputs(image_message(load_image(png_bytes(64, 48, seed=9))))
    assert not torch.allclose(last_logits(backend, inputs), last_logits(backend, other), atol=1e-5)
    with pytest.raises(LLMVoXError, match="does not take audio"):
        list(backend.stream_chat([{"role": "user", "content": [
            {"type": "audio", "audio": np.zeros(16000, np.float32), "sampling_rate": 16000}]}]))


def test_multimodal_model_hears_audio(tmp_path):
    from llmvox.llm.multimodal import MultimodalBackend

    backend = MultimodalBackend(build_audio_lm(tmp_path))
    assert backend.sampling_rate == 16000
    rng = np.random.default_rng(0)
    speech = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    messages = [{"role": "user", "content": [{"type": "audio", "audio": speech, "sampling_rate": 16000},
                                             {"type": "text", "text": "answer"}]}]
    inputs = backend.prompt_inputs(messages)
    assert "input_features" in inputs
    answer = "".join(backend.stream_chat(messages, max_tokens=12, temperature=0))
    assert answer == reference_greedy(backend, messages, 12)
    other = [{"role": "user", "content": [{"type": "audio", "audio": np.roll(speech, 4000), "sampling_rate": 16000},
                                          {"type": "text", "text": "answer"}]}]
    assert not torch.allclose(last_logits(backend, inputs), last_logits(backend, backend.prompt_inputs(other)),
                              atol=1e-5)


# ---- selection --------------------------------------------------------------------------------
def test_backend_guess_from_checkpoint():
    from llmvox.llm.select import guess_backend

    assert guess_backend(None) == "llamacpp"
    assert guess_backend("model.Q4.gguf") == "llamacpp"
    assert guess_backend("http://127.0.0.1:8000/v1") == "openai"
    assert guess_backend("meta-llama/Llama-3.1-8B-Instruct") == "transformers"
    assert guess_backend("Qwen/Qwen2.5-VL-3B-Instruct", "visual_speech") == "vlm"
    assert guess_backend("some/model", "multimodal") == "multimodal"
    assert guess_backend("some/model", "text", llm_base_url="http://x:1") == "openai"
    with pytest.raises(LLMVoXError, match="visual_speech needs --llm_checkpoint"):
        guess_backend(None, "visual_speech")


def test_backend_from_args(tiny_lm_dir, tmp_path):
    from llmvox.llm.select import backend_from_args
    from llmvox.llm.transformers_backend import TransformersBackend

    assert isinstance(backend_from_args(str(tiny_lm_dir)), TransformersBackend)
    with pytest.raises(LLMVoXError, match="GGUF model file not found"):
        backend_from_args(str(tmp_path / "nope.gguf"))
    with pytest.raises(LLMVoXError, match="unknown --llm_backend"):
        backend_from_args(str(tiny_lm_dir), "tensorrt")
    with pytest.raises(LLMVoXError, match="needs --llm_base_url"):
        backend_from_args(None, "openai")


def test_add_llm_args_keeps_existing_flags():
    import argparse

    from llmvox.llm.select import add_llm_args

    parser = argparse.ArgumentParser()
    parser.add_argument("--eos_token", default="<|end|>")
    add_llm_args(parser)  # must not clash with the flag the parser already has
    args = parser.parse_args(["--llm-checkpoint", "m.gguf", "--llm_top_k", "5"])
    assert (args.llm_checkpoint, args.llm_top_k, args.eos_token) == ("m.gguf", 5, "<|end|>")


# ---- llama.cpp (the bundled SmolLM2) -------------------------------------------------------------
@pytest.fixture(scope="module")
def gguf_path():
    pytest.importorskip("llama_cpp")
    from llmvox.llm.llamacpp import default_gguf_path

    return default_gguf_path()


@pytest.fixture(scope="module")
def smollm(gguf_path):
    from llmvox.llm.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(gguf_path, n_threads=1)
    yield backend
    backend.close()


def test_llamacpp_bundled_model_answers(smollm):
    answer = smollm.chat(CAPITAL, max_tokens=24, temperature=0)
    assert "paris" in answer.lower()


def test_llamacpp_cancel_stops_generation(smollm):
    stopped, later = consume_then_cancel(smollm, 3, max_tokens=1000, temperature=1.0)
    assert stopped < 20 and later == stopped


# ---- OpenAI-compatible server (llama-cpp-python's own, on loopback) -------------------------------
@pytest.fixture(scope="module")
def openai_server(gguf_path, tmp_path_factory):
    """(base URL, log file) of a llama_cpp.server serving the bundled GGUF as model 'smollm2'."""
    pytest.importorskip("llama_cpp.server")
    port = free_port()
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    process = start_llamacpp_server(gguf_path, port, log)
    yield f"http://127.0.0.1:{port}", log
    stop_process(process)


@pytest.fixture(scope="module")
def openai_url(openai_server):
    return openai_server[0]


@pytest.mark.slow
def test_openai_backend_streams_from_a_real_server(openai_server):
    from llmvox.llm.openai_backend import OpenAIBackend

    openai_url, log = openai_server
    backend = OpenAIBackend(openai_url)  # no /v1 and no model: both are found
    assert backend.base_url.endswith("/v1") and backend.model == "smollm2"
    deltas = list(backend.stream_chat(CAPITAL, max_tokens=24, temperature=0))
    assert len(deltas) > 2 and "paris" in "".join(deltas).lower()
    assert backend.tokens_generated == len(deltas)
    stopped, later = consume_then_cancel(backend, 3, max_tokens=1000, temperature=1.0)
    assert stopped < 20 and later == stopped
    deadline = time.monotonic() + 5  # closing the connection stopped the server's own generation
    while "Disconnected from client" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "Disconnected from client" in log.read_text()
    # the server still answers after a cancelled stream
    assert "paris" in backend.chat(CAPITAL, max_tokens=24, temperature=0).lower()


@pytest.mark.slow
def test_openai_backend_errors(openai_url):
    from llmvox.llm.openai_backend import OpenAIBackend

    with pytest.raises(LLMVoXError, match="cannot reach the LLM server"):
        OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1")
    backend = OpenAIBackend(openai_url + "/v1", model="smollm2")
    with pytest.raises(LLMVoXError, match="answered HTTP"):
        list(backend.stream_chat([{"role": "robot", "content": "hi"}], max_tokens=8))  # no such role: 422
    with pytest.raises(LLMVoXError, match="must start with http"):
        OpenAIBackend("ftp://example")


def test_openai_messages_carry_images_and_audio():
    import base64
    import io

    from PIL import Image

    from llmvox.llm.images import load_image
    from llmvox.llm.openai_backend import normalize_base_url, to_openai_messages

    assert normalize_base_url("http://h:1/v1/chat/completions") == "http://h:1/v1"
    assert normalize_base_url("http://h:1/") == "http://h:1/v1"
    image = load_image(png_bytes(20, 10))
    out = to_openai_messages([{"role": "user", "content": [
        {"type": "image", "image": image}, {"type": "audio", "audio": np.zeros(800, np.float32)},
        {"type": "text", "text": "what?"}]}])
    url = out[0]["content"][0]["image_url"]["url"]
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.size == (20, 10)
    wav = base64.b64decode(out[0]["content"][1]["input_audio"]["data"])
    assert wav[:4] == b"RIFF" and out[0]["content"][2] == {"type": "text", "text": "what?"}


def test_sampling_defaults_suit_the_loaded_llm_and_flags_still_win():
    """The embedded 135M SmolLM2 gets a low temperature and a plain prompt; any other LLM the original's
    defaults; a flag given explicitly wins either way."""
    from llmvox.chat_flags import chat_flags, settings_from_args
    from llmvox.llm.select import DEFAULT_SYSTEM_PROMPT, EMBEDDED_LLM_DEFAULTS

    embedded = settings_from_args(chat_flags())
    assert (embedded.temperature, embedded.top_p) == (0.2, 0.9)
    assert embedded.system_prompt == EMBEDDED_LLM_DEFAULTS["system_prompt"]
    other = settings_from_args(chat_flags({"llm_checkpoint": "meta-llama/Llama-3.1-8B-Instruct"}))
    assert (other.temperature, other.top_p, other.top_k) == (0.7, 0.95, 40)
    assert other.system_prompt == DEFAULT_SYSTEM_PROMPT
    given = settings_from_args(chat_flags({"llm_temperature": 0.9, "system_prompt": "Be terse."}))
    assert (given.temperature, given.system_prompt) == (0.9, "Be terse.")
    assert settings_from_args(chat_flags({"system_prompt": ""})).system_prompt is None  # "" = no system prompt
