"""Tiny real models for the chat tests, built offline in seconds.

Each builder trains a small byte-level BPE tokenizer, gives it a chat template, instantiates a
transformers model of a few thousand random weights and saves both with `save_pretrained`, so the
backends load them exactly as they would load a downloaded checkpoint.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CORPUS = ["hello world, the cat sat on the mat.", "what is this image about? it is a picture of a cat.",
          "the answer is short and friendly, spoken by a person."]

# A ChatML-like template that also renders image and audio parts (as Qwen/LLaVA templates do).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<image>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|pad|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _finish(model, tokenizer, folder: Path, *, suppress_eos: bool) -> Path:
    """Save with EOS ids set; `suppress_eos` makes answers run to max_tokens (for cancellation tests)."""
    vocab = tokenizer.get_vocab()
    eos, pad = vocab["<|im_end|>"], vocab["<|pad|>"]
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.generation_config.bos_token_id = None
    if suppress_eos:
        model.generation_config.suppress_tokens = [eos]
    model.save_pretrained(folder)
    return folder


def build_causal_lm(folder: Path, *, arch: str = "llama", n_positions: int = 4096, suppress_eos: bool = True) -> Path:
    """A 2-layer Llama (or GPT-2 with a short context, which fails when generation runs past it)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer()
    vocab = tokenizer.get_vocab()
    torch.manual_seed(0)
    if arch == "llama":
        config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=n_positions,
                             eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<|pad|>"], bos_token_id=None)
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=4, n_positions=n_positions,
                            eos_token_id=vocab["<|im_end|>"], bos_token_id=None, pad_token_id=vocab["<|pad|>"])
        model = GPT2LMHeadModel(config)
    tokenizer.save_pretrained(folder)
    return _finish(model, tokenizer, folder, suppress_eos=suppress_eos)


def build_vlm(folder: Path) -> Path:
    """A LLaVA-architecture image-text-to-text model (CLIP vision tower + Llama) with its processor."""
    import torch
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = make_tokenizer()
    vocab = tokenizer.get_vocab()
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=28, patch_size=14, projection_dim=32),
        text_config=dict(model_type="llama", vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, eos_token_id=vocab["<|im_end|>"],
                         pad_token_id=vocab["<|pad|>"], bos_token_id=None),
        image_token_id=vocab["<image>"], vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", image_token="<image>",
                               chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1)
    processor.save_pretrained(folder)
    return _finish(model, tokenizer, folder, suppress_eos=False)


def build_audio_lm(folder: Path) -> Path:
    """A Qwen2-Audio-architecture model (Whisper-style audio encoder + Qwen2) with its processor."""
    import torch
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    tokenizer = make_tokenizer()
    vocab = tokenizer.get_vocab()
    config = Qwen2AudioConfig(
        audio_config=dict(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
                          num_mel_bins=80, max_source_positions=1500),
        text_config=dict(model_type="qwen2", vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<|pad|>"]),
        audio_token_index=vocab["<|AUDIO|>"],
    )
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(config)
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80, sampling_rate=16000),
                                    tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(folder)
    return _finish(model, tokenizer, folder, suppress_eos=False)


def png_bytes(width: int = 40, height: int = 30, seed: int = 0) -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# llama-cpp-python's own OpenAI-compatible server, with llama.cpp's extra CPU buffers switched off the
# same way LlamaCppBackend loads (they crash inside some VMs; see llmvox/llm/llamacpp.py).
_SERVER_MAIN = """
import runpy
from llmvox.llm.llamacpp import _model_params_without_extra_buffers
with _model_params_without_extra_buffers():
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def start_llamacpp_server(gguf: Path, port: int, log_path: Path, timeout: float = 120.0) -> subprocess.Popen:
    """Start `python -m llama_cpp.server` on 127.0.0.1:port and wait until it lists its model."""
    import httpx

    log = open(log_path, "wb")  # noqa: SIM115 - closed when the process is stopped
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVER_MAIN, "--model", str(gguf), "--model_alias", "smollm2", "--host", "127.0.0.1",
         "--port", str(port), "--n_threads", "1", "--n_ctx", "2048", "--verbose", "False"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    process._llmvox_log = log  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited early:\n{Path(log_path).read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1.0).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_process(process)
    raise RuntimeError("llama_cpp.server did not come up in time")


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log = getattr(process, "_llmvox_log", None)
    if log is not None:
        log.close()


QUESTION = "What is the capital of France?"


def speak(text: str = QUESTION) -> tuple[np.ndarray, int]:
    """The teacher voice (hibari-tts, 24 kHz) saying `text`."""
    from llmvox.train.teachers import HibariTeacher

    return HibariTeacher(threads=1).speak(text)
