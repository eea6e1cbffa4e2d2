"""The server's defaults for precision and workers: `--dtype auto` and the default worker count."""

from __future__ import annotations

import argparse

import pytest
import torch

from llmvox import device as devices
from llmvox.api import LLMVoX, default_voice_path
from llmvox.device import decoder_dtype, default_workers
from llmvox.errors import LLMVoXError

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_computes_in_the_stored_precision_only_where_the_device_has_it(monkeypatch, native):
    monkeypatch.setattr(devices, "native_bf16", lambda device: native)
    assert decoder_dtype("auto", torch.bfloat16, CPU) == (torch.bfloat16 if native else torch.float32)
    assert decoder_dtype("auto", torch.float32, CPU) == torch.float32  # every original checkpoint: exact codes
    assert decoder_dtype("float32", torch.bfloat16, CPU) == torch.float32  # an explicit choice wins
    assert decoder_dtype("bfloat16", torch.float32, CPU) == torch.bfloat16


def test_an_unknown_precision_is_a_clear_error():
    with pytest.raises(LLMVoXError, match="unknown dtype 'int4'.*auto, float32 or bfloat16"):
        decoder_dtype("int4", torch.float32, CPU)


def test_native_bf16_follows_the_cpu_flags(monkeypatch, tmp_path):
    import builtins

    cpuinfo = tmp_path / "cpuinfo"
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        return real_open(cpuinfo if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert devices.native_bf16(CPU)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert not devices.native_bf16(CPU)


@pytest.mark.parametrize(("cores", "device", "workers"), [(2, "cpu", 1), (1, "cpu", 1), (4, "cpu", 2),
                                                          (16, "cpu", 2), (2, "cuda:0", 2)])
def test_default_workers_by_device_and_cores(monkeypatch, cores, device, workers):
    monkeypatch.setattr(devices.os, "cpu_count", lambda: cores)
    assert default_workers(device) == workers


def _serve_args(*argv: str) -> argparse.Namespace:
    from llmvox.cli.serve import add_serve_args

    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    return parser.parse_args(list(argv))


def test_serve_resolves_the_worker_default_and_keeps_an_explicit_count(monkeypatch):
    from llmvox.cli.serve import settings_from_args

    monkeypatch.setattr(devices.os, "cpu_count", lambda: 2)
    args = _serve_args()
    assert args.dtype == "auto" and args.num_workers is None
    assert settings_from_args(args).num_workers == 1
    assert settings_from_args(_serve_args("--num_workers", "2")).num_workers == 2
    with pytest.raises(LLMVoXError, match="num_workers must be at least 1"):
        settings_from_args(_serve_args("--num_workers", "0"))


def test_a_voice_knows_the_precision_its_weights_are_stored_in(tmp_path):
    assert LLMVoX.from_bundle(default_voice_path()).stored_dtype == torch.bfloat16  # the embedded voice
    from llmvox.bundle import save_bundle
    from llmvox.codec.config import CodecConfig
    from llmvox.codec.wavtokenizer import WavTokenizer
    from llmvox.model.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    codec = WavTokenizer(CodecConfig(encoder_filters=4, encoder_dimension=32, encoder_lstm_layers=1,
                                     codebook_size=512, backbone_dim=32, backbone_intermediate_dim=64,
                                     backbone_layers=1)).eval()
    gpt = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=64, block_size=64, vocab_size=512)).eval()
    save_bundle(tmp_path / "fp32", gpt, torch.randn(386, 32), codec)
    assert LLMVoX.from_bundle(tmp_path / "fp32").stored_dtype == torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_set_decoder_dtype_moves_the_embedded_voice_only_where_bf16_is_native(monkeypatch, native):
    from llmvox.device import set_decoder_dtype

    monkeypatch.setattr(devices, "native_bf16", lambda device: native)
    voice = LLMVoX.from_bundle(default_voice_path())
    want = torch.bfloat16 if native else torch.float32
    assert set_decoder_dtype(voice, "auto") == want
    assert {p.dtype for p in voice.decoder.gpt.parameters()} == {want}


@pytest.mark.parametrize("command", [["synthesize", "--text", "hi", "--out", "x.wav"], ["eval", "--json", "x.json", "--sentences", "s.txt"],
                                     ["serve"], ["bench", "stream", "--json", "x.json"]])
def test_every_command_that_loads_a_voice_defaults_to_auto_precision(command):
    from llmvox.cli import build_parser

    args = build_parser().parse_args(command)
    assert args.dtype == "auto"
    with pytest.raises(SystemExit):  # the choices are the same everywhere
        build_parser().parse_args([*command, "--dtype", "float16"])
