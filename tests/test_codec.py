"""WavTokenizer codec: parity with the original code, checkpoint formats, CLI, audio I/O, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from llmvox.audio import is_silent, load_audio, save_audio
from llmvox.cli import main as cli_main
from llmvox.codec.checkpoint import (
    codec_state_for_bundle,
    load_wavtokenizer,
    ours_to_original,
    save_lightning_checkpoint,
    wavtokenizer_from_bundle,
)
from llmvox.codec.config import CodecConfig
from llmvox.errors import LLMVoXError

torch.set_num_threads(1)

TOL = 1e-4


def rel_l2(actual, expected) -> float:
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def decode(codec, codes: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return codec.decode_codes(torch.from_numpy(codes).reshape(1, -1)).numpy()


# --- parity with the original code -----------------------------------------------------------


def test_encode_matches_original(small_codec, parity_ref):
    wav = torch.from_numpy(parity_ref["enc_wav"])[None]
    with torch.inference_mode():
        features, codes = small_codec.encode_with_features(wav)
        plain = small_codec.encode(wav)
    assert codes.dtype == torch.int64 and codes.shape == (1, 150)
    np.testing.assert_array_equal(codes.numpy(), parity_ref["enc_codes"][0])
    np.testing.assert_array_equal(plain.numpy(), codes.numpy())
    assert features.shape == (1, 512, 150)
    assert rel_l2(features.numpy(), parity_ref["enc_features"]) < TOL


def test_decode_matches_original(small_codec, parity_ref):
    audio = decode(small_codec, parity_ref["dec_codes"])
    assert audio.shape == (1, 48000) and audio.dtype == np.float32
    assert rel_l2(audio, parity_ref["dec_audio"]) < TOL
    gpt_audio = decode(small_codec, parity_ref["gpt_codes"])
    assert rel_l2(gpt_audio, parity_ref["gpt_audio"]) < TOL


def test_chunked_decode_matches_original_stream(small_codec, parity_ref):
    """The original server decoded codes 0-9 and 10-39 as separate calls."""
    codes = parity_ref["gpt_codes"]
    chunks = [decode(small_codec, codes[:10])[0], decode(small_codec, codes[10:40])[0]]
    assert [len(c) for c in chunks] == list(parity_ref["gpt_stream_chunk_lens"])
    assert rel_l2(np.concatenate(chunks), parity_ref["gpt_stream_audio"]) < TOL


def test_codebook_and_features(small_codec, parity_ref):
    assert small_codec.sample_rate == 24000 and small_codec.hop_length == 320
    assert small_codec.codebook_size == 4096 and small_codec.feature_dim == 512
    table = small_codec.codebook
    assert table.shape == (4096, 512)
    codes = torch.from_numpy(parity_ref["dec_codes"][:7])[None]
    features = small_codec.codes_to_features(codes)
    assert features.shape == (1, 512, 7)
    torch.testing.assert_close(features[0].T, table[codes[0]], rtol=0, atol=0)
    with pytest.raises(ValueError, match="codes must lie"):
        small_codec.codes_to_features(torch.tensor([[4096]]))
    with torch.inference_mode():
        assert small_codec.decode_codes(torch.tensor([[5]])).shape == (1, 320)
        assert small_codec.decode_codes(torch.zeros(1, 0, dtype=torch.long)).shape == (1, 0)
        assert small_codec.encode(torch.full((1, 5), 0.1)).shape == (1, 1)  # shorter than any pad
        assert small_codec.encode(torch.full((1, 321), 0.1)).shape == (1, 2)


def test_weight_norm_kept_for_training_gives_same_result(codec_paths, small_codec, parity_ref):
    trainable = load_wavtokenizer(*codec_paths, fold_weight_norm=False)
    names = [n for n, _ in trainable.named_parameters()]
    assert "encoder.model.0.conv.weight_g" in names and "encoder.model.0.conv.weight_v" in names
    wav = torch.from_numpy(parity_ref["enc_wav"][:24000])[None]
    with torch.no_grad():
        a = trainable.encode_with_features(wav)
    b = small_codec.encode_with_features(wav)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    # Gradients reach both halves of the weight-norm pair.
    trainable.train()
    latents = trainable.encoder(wav[:, :3200].unsqueeze(1))
    latents.square().mean().backward()
    conv = trainable.encoder.model[0].conv
    assert conv.weight_g.grad is not None and conv.weight_v.grad is not None


# --- checkpoint formats ----------------------------------------------------------------------


def test_saved_lightning_checkpoint_has_original_layout(tmp_path, codec_paths, small_codec, parity_ref):
    original = torch.load(codec_paths[1], map_location="cpu", weights_only=True)["state_dict"]
    kept = {k for k in original if not k.startswith(("multiperioddisc.", "multiresddisc.", "dac.", "melspec_loss."))}
    out = tmp_path / "resaved.ckpt"
    save_lightning_checkpoint(small_codec, out)  # a folded model writes g/v again
    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert set(saved["state_dict"]) == kept
    for key in kept:
        assert saved["state_dict"][key].shape == original[key].shape, key
    reloaded = load_wavtokenizer(codec_paths[0], out)
    assert rel_l2(decode(reloaded, parity_ref["dec_codes"]), parity_ref["dec_audio"]) < TOL
    with torch.inference_mode():
        codes = reloaded.encode(torch.from_numpy(parity_ref["enc_wav"])[None])
    np.testing.assert_array_equal(codes.numpy(), parity_ref["enc_codes"][0])


def test_key_renames_are_inverse():
    assert ours_to_original("encoder.model.1.block.1.conv.weight_v") == (
        "feature_extractor.encodec.encoder.model.1.block.1.conv.conv.weight_v"
    )
    assert ours_to_original("encoder.model.13.lstm.weight_ih_l0") == (
        "feature_extractor.encodec.encoder.model.13.lstm.weight_ih_l0"
    )
    assert ours_to_original("quantizer.embed") == "feature_extractor.encodec.quantizer.vq.layers.0._codebook.embed"
    assert ours_to_original("backbone.pos_net.2.q.weight") == "backbone.pos_net.2.q.weight"


def test_bundle_tensors_round_trip(tmp_path, small_codec, parity_ref):
    from safetensors.torch import load_file, save_file

    tensors = codec_state_for_bundle(small_codec)
    assert all(v.dtype == torch.float32 for v in tensors.values())
    save_file(tensors, str(tmp_path / "codec.safetensors"))
    config = CodecConfig.from_dict(small_codec.config.to_dict()).to_dict()
    assert config == small_codec.config.to_dict()
    rebuilt = wavtokenizer_from_bundle(config, load_file(str(tmp_path / "codec.safetensors")))
    assert rel_l2(decode(rebuilt, parity_ref["dec_codes"]), parity_ref["dec_audio"]) < TOL
    broken = dict(tensors)
    broken.pop("backbone.embed.bias")
    with pytest.raises(LLMVoXError, match=r"missing keys \[backbone\.embed\.bias\]"):
        wavtokenizer_from_bundle(config, broken)


def test_full_size_checkpoint_loads_and_decodes(full_size_codec_files):
    config_path, ckpt_path = full_size_codec_files
    codec = load_wavtokenizer(config_path, ckpt_path)
    cfg = codec.config
    assert (cfg.backbone_dim, cfg.backbone_intermediate_dim, cfg.backbone_layers) == (768, 2304, 12)
    assert len(codec.backbone.convnext) == 12
    assert codec.codebook.shape == (4096, 512)
    codes = np.array([1, 453, 4095, 17, 2000], dtype=np.int64)
    audio = decode(codec, codes)
    assert audio.shape == (1, 5 * 320) and np.isfinite(audio).all()
    with torch.inference_mode():
        enc = codec.encode(torch.randn(2, 4000) * 0.1)
    assert enc.shape == (2, 13) and int(enc.max()) < 4096


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_encode_decode_match_original(tmp_path, codec_paths, parity_ref):
    cfg, ckpt = (str(p) for p in codec_paths)
    wav = tmp_path / "in.wav"
    sf.write(wav, parity_ref["enc_wav"], 24000, subtype="FLOAT")
    codes_out = tmp_path / "codes.npy"
    argv = ["codec", "encode", str(wav), "--wav_config_path", cfg, "--wav_model_path", ckpt, "--out", str(codes_out)]
    assert cli_main(argv) == 0
    codes = np.load(codes_out)
    assert codes.dtype == np.int64 and codes.shape == (150,)
    np.testing.assert_array_equal(codes, parity_ref["enc_codes"][0, 0])

    codes_in = tmp_path / "dec_codes.npy"
    np.save(codes_in, parity_ref["dec_codes"])
    npy_out = tmp_path / "out.npy"
    assert cli_main(["codec", "decode", str(codes_in), "--wav-config-path", cfg, "--wav-model-path", ckpt,
                     "--out", str(npy_out)]) == 0
    audio = np.load(npy_out)
    assert audio.dtype == np.float32 and audio.shape == (48000,)
    assert rel_l2(audio, parity_ref["dec_audio"][0]) < TOL

    wav_out = tmp_path / "out.wav"
    assert cli_main(["codec", "decode", str(codes_in), "--wav_config_path", cfg, "--wav_model_path", ckpt,
                     "--out", str(wav_out)]) == 0
    data, rate = sf.read(wav_out, dtype="float32")
    assert rate == 24000 and rel_l2(data, parity_ref["dec_audio"][0]) < TOL


def test_cli_bundle_source(tmp_path, small_codec, parity_ref):
    """`--bundle` reads only the codec part of an llmvox bundle folder."""
    from safetensors.torch import save_file

    folder = tmp_path / "bundle"
    folder.mkdir()
    save_file(codec_state_for_bundle(small_codec), str(folder / "codec.safetensors"))
    import json

    from llmvox.bundle import BUNDLE_FORMAT, BUNDLE_VERSION

    (folder / "config.json").write_text(json.dumps(
        {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "codec": small_codec.config.to_dict()}))
    codes_in = tmp_path / "codes.npy"
    np.save(codes_in, parity_ref["gpt_codes"])
    out = tmp_path / "out.npy"
    assert cli_main(["codec", "decode", str(codes_in), "--bundle", str(folder), "--out", str(out)]) == 0
    assert rel_l2(np.load(out), parity_ref["gpt_audio"][0]) < TOL


def test_cli_errors_are_one_line(tmp_path, codec_paths, capsys):
    cfg, ckpt = (str(p) for p in codec_paths)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(4800, dtype=np.float32), 24000)
    cases = [
        (["codec", "encode", str(tmp_path / "nope.wav"), "--wav_config_path", cfg, "--wav_model_path", ckpt,
          "--out", str(tmp_path / "c.npy")], "audio file not found"),
        (["codec", "encode", str(silent), "--wav_config_path", cfg, "--wav_model_path", ckpt,
          "--out", str(tmp_path / "c.npy")], "is silent"),
        (["codec", "decode", str(tmp_path / "none.npy"), "--wav_config_path", cfg, "--wav_model_path", ckpt,
          "--out", str(tmp_path / "o.wav")], "codes file not found"),
        (["codec", "encode", str(silent), "--out", str(tmp_path / "c.npy")], "--wav_config_path and --wav_model_path"),
    ]
    for argv, message in cases:
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("llmvox: error:") and message in err, err
        assert "\n" not in err and "Traceback" not in err
    bad_codes = tmp_path / "bad.npy"
    np.save(bad_codes, np.array([1, 2, 5000]))
    assert cli_main(["codec", "decode", str(bad_codes), "--wav_config_path", cfg, "--wav_model_path", ckpt,
                     "--out", str(tmp_path / "o.npy")]) == 2
    assert "codes must lie in [0, 4096)" in capsys.readouterr().err


def test_cli_subprocess_has_no_traceback(tmp_path, codec_paths):
    not_ckpt = tmp_path / "model.ckpt"
    not_ckpt.write_text("this is not a checkpoint\n")
    wav = tmp_path / "a.wav"
    sf.write(wav, np.full(2400, 0.1, dtype=np.float32), 24000)
    proc = subprocess.run(
        [sys.executable, "-m", "llmvox", "codec", "encode", str(wav), "--wav_config_path", str(codec_paths[0]),
         "--wav_model_path", str(not_ckpt), "--out", str(tmp_path / "c.npy")],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("llmvox: error:") and "not a readable PyTorch checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- bad checkpoints and configs ---------------------------------------------------------------


def test_missing_paths(tmp_path, codec_paths):
    with pytest.raises(LLMVoXError, match="codec checkpoint not found"):
        load_wavtokenizer(codec_paths[0], tmp_path / "missing.ckpt")
    with pytest.raises(LLMVoXError, match="codec config not found"):
        load_wavtokenizer(tmp_path / "missing.yaml", codec_paths[1])


def test_not_a_checkpoint(tmp_path, codec_paths):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00\x01 definitely not a zip or a pickle" * 10)
    with pytest.raises(LLMVoXError, match="not a readable PyTorch checkpoint"):
        load_wavtokenizer(codec_paths[0], garbage)
    other = tmp_path / "other.ckpt"
    torch.save({"model": {"w": torch.zeros(2)}}, other)
    with pytest.raises(LLMVoXError, match="not a WavTokenizer checkpoint"):
        load_wavtokenizer(codec_paths[0], other)
    not_yaml = tmp_path / "bad.yaml"
    not_yaml.write_text("model: [unclosed\n")
    with pytest.raises(LLMVoXError, match="not valid YAML"):
        load_wavtokenizer(not_yaml, codec_paths[1])
    wrong_schema = tmp_path / "wrong.yaml"
    wrong_schema.write_text("model:\n  init_args:\n    head: {}\n")
    with pytest.raises(LLMVoXError, match="model.init_args"):
        load_wavtokenizer(wrong_schema, codec_paths[1])


def test_config_not_matching_checkpoint(full_size_codec_files, codec_paths):
    with pytest.raises(LLMVoXError, match="does not match checkpoint") as info:
        load_wavtokenizer(full_size_codec_files[0], codec_paths[1])
    message = str(info.value)
    assert "backbone.embed.weight (128, 512, 7) (model expects (768, 512, 7))" in message
    assert "missing keys" in message and "backbone.convnext.2.gamma" in message


def test_strict_keys(tmp_path, codec_paths):
    ckpt = torch.load(codec_paths[1], map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]
    del state["backbone.pos_net.2.q.bias"]
    state["backbone.extra.weight"] = torch.zeros(3)
    state["feature_extractor.encodec.decoder.model.0.conv.conv.bias"] = torch.zeros(3)  # ignored
    path = tmp_path / "edited.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(LLMVoXError) as info:
        load_wavtokenizer(codec_paths[0], path)
    message = str(info.value)
    assert "missing keys [backbone.pos_net.2.q.bias]" in message
    assert "unexpected keys [backbone.extra.weight]" in message
    assert "decoder" not in message


def test_config_round_trip_and_validation(codec_paths):
    cfg = CodecConfig.from_yaml(codec_paths[0])
    assert (cfg.backbone_dim, cfg.backbone_intermediate_dim, cfg.backbone_layers) == (128, 384, 2)
    assert cfg.downsample_ratios == [8, 5, 4, 2] and cfg.codebook_size == 4096
    assert (cfg.n_fft, cfg.hop_length, cfg.padding, cfg.adanorm_num_embeddings) == (1280, 320, "same", 4)
    assert CodecConfig.from_yaml_dict(cfg.to_yaml_dict()) == cfg
    small = CodecConfig(encoder_filters=16, encoder_dimension=64, codebook_size=512, backbone_dim=64,
                        backbone_intermediate_dim=128, backbone_layers=2)
    assert CodecConfig.from_yaml_dict(small.to_yaml_dict()) == small
    with pytest.raises(LLMVoXError, match="hop_length"):
        CodecConfig(hop_length=256)
    with pytest.raises(LLMVoXError, match="unknown fields"):
        CodecConfig.from_dict({"bogus": 1})


def test_small_custom_codec_runs():
    """Our own smaller configs (codec training) build and run end to end."""
    from llmvox.codec.wavtokenizer import WavTokenizer

    cfg = CodecConfig(encoder_filters=8, encoder_dimension=32, encoder_lstm_layers=1, codebook_size=64,
                      backbone_dim=32, backbone_intermediate_dim=64, backbone_layers=1)
    model = WavTokenizer(cfg).eval()
    with torch.inference_mode():
        features, codes = model.encode_with_features(torch.randn(1, 3200))
        audio = model.decode(features)
    assert features.shape == (1, 32, 10) and codes.shape == (1, 10) and audio.shape == (1, 3200)


# --- audio I/O -------------------------------------------------------------------------------


def test_resample_16k_stereo(tmp_path, small_codec):
    rate, seconds = 16000, 1.5
    t = np.arange(int(rate * seconds)) / rate
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    right = 0.1 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "stereo16k.wav"
    sf.write(path, np.stack([left, right], axis=1).astype(np.float32), rate, subtype="PCM_16")
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.shape == (36000,)
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 24000 / len(audio) - 440) < 2
    assert abs(np.max(np.abs(audio[1000:-1000])) - 0.3) < 0.01  # mean of the channels
    assert np.allclose(load_audio(path.read_bytes()), audio)
    with torch.inference_mode():
        codes = small_codec.encode(torch.from_numpy(audio)[None])
    assert codes.shape == (1, 113)  # ceil(36000 / 320)


def test_bad_audio_files(tmp_path):
    with pytest.raises(LLMVoXError, match="audio file not found"):
        load_audio(tmp_path / "missing.wav")
    fake = tmp_path / "fake.wav"
    fake.write_text("RIFF? no, just text pretending to be a wav file\n" * 20)
    with pytest.raises(LLMVoXError, match="not a readable audio file"):
        load_audio(fake)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 24000)
    with pytest.raises(LLMVoXError, match="contains no audio samples"):
        load_audio(empty)
    with pytest.raises(LLMVoXError, match="empty"):
        load_audio(b"")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(2400, dtype=np.float32), 24000)
    assert is_silent(load_audio(silent)) and not is_silent(np.array([0.0, 0.2]))


def test_save_audio_formats(tmp_path):
    samples = (np.sin(np.arange(2400) / 10) * 1.5).astype(np.float32)  # beyond full scale on purpose
    save_audio(tmp_path / "a.npy", samples[None], 24000)
    loaded = np.load(tmp_path / "a.npy")
    assert loaded.shape == (2400,) and loaded.dtype == np.float32
    save_audio(tmp_path / "a.wav", samples, 24000)
    data, rate = sf.read(tmp_path / "a.wav", dtype="float32")
    assert rate == 24000 and np.array_equal(data, samples)
    with pytest.raises(LLMVoXError, match="extension"):
        save_audio(tmp_path / "a.xyz", samples, 24000)


@pytest.mark.parametrize("length,left,right", [(50, 3, 3), (50, 0, 5), (50, 4, 0), (3, 6, 6), (1, 2, 2), (7, 6, 1)])
def test_reflect_pad_matches_torch_reflect(length, left, right):
    """The fast mirrored-slice padding equals F.pad(mode='reflect') (with zeros first when too short)."""
    import torch.nn.functional as F

    from llmvox.codec.wavtokenizer import _reflect_pad

    x = torch.randn(2, 3, length)
    extra = max(left, right) - length + 1 if length <= max(left, right) else 0
    want = F.pad(F.pad(x, (0, extra)), (left, right), mode="reflect")
    want = want[..., : want.shape[-1] - extra] if extra else want
    assert torch.equal(_reflect_pad(x, left, right), want)
