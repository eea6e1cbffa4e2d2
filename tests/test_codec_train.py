"""`llmvox codec train`: a tiny codec learns, saves in the original layout, loads back, resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from llmvox.codec.config import CodecConfig
from llmvox.codec.wavtokenizer import CodebookQuantizer
from llmvox.errors import LLMVoXError
from llmvox.train.codec_checkpoints import CKPT_FILE, CONFIG_FILE, EVAL_LOG, STATE_FILE, iter_jsonl
from llmvox.train.codec_config import CodecTrainSettings
from llmvox.train.codec_trainer import CodecTrainer
from llmvox.train.ema_codebook import EmaCodebook

RATE = 24000

TINY_YAML = """\
model:
  class_path: decoder.experiment.WavTokenizer
  init_args:
    sample_rate: 24000
    initial_learning_rate: 1.0e-2
    num_warmup_steps: 2
    mel_loss_coeff: 45
    feature_extractor:
      class_path: decoder.feature_extractors.EncodecFeatures
      init_args:
        encodec_model: encodec_24khz
        bandwidths: [6.6, 6.6, 6.6, 6.6]
        num_quantizers: 1
        dowmsamples: [8, 5, 4, 2]
        vq_bins: 32
        vq_kmeans: 5
        encoder_filters: 4
        encoder_dimension: 32
        encoder_lstm_layers: 1
    backbone:
      class_path: decoder.models.VocosBackbone
      init_args:
        input_channels: 32
        dim: 32
        intermediate_dim: 64
        num_layers: 2
        adanorm_num_embeddings: 4
    head:
      class_path: decoder.heads.ISTFTHead
      init_args: {dim: 32, n_fft: 1280, hop_length: 320, padding: same}
data:
  init_args:
    train_params: {num_samples: 12000, batch_size: 4}
trainer:
  max_steps: 40
llmvox_train:
  encoder_lr_scale: 0.1
  commit_weight: 1.0
  kmeans_init_batches: 2
  kmeans_iters: 5
  eval_every: 1000
  save_every: 1000
  log_every: 5
  eval_clips: 1
  eval_max_seconds: 1.0
  threads: 1
"""


def _speechlike(seed: int, seconds: float = 1.5) -> np.ndarray:
    """Voiced harmonic stretches with a gliding pitch, separated by noise bursts and pauses."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    f0 = rng.uniform(90, 220) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = (np.sin(2 * np.pi * rng.uniform(2, 4) * t) > -0.3).astype(np.float64)
    audio = 0.2 * voiced * envelope + 0.03 * rng.standard_normal(n) * (1 - envelope)
    return audio.astype(np.float32)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    import soundfile as sf

    folder = tmp_path_factory.mktemp("codec_data")
    wavs = folder / "wavs"
    wavs.mkdir()
    items = []
    for i in range(5):
        sf.write(str(wavs / f"c{i}.wav"), _speechlike(i), RATE, subtype="FLOAT")
        items.append({"speech_folder": str(wavs), "speech_file": f"c{i}.wav", "answer_text": f"clip {i}",
                      "id": f"c{i}"})
    path = folder / "data.json"
    path.write_text(json.dumps(items))
    return path


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("codec_cfg") / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


def _trainer(tiny_yaml: Path, data: Path, out: Path, **overrides) -> CodecTrainer:
    from llmvox.train.codec_config import settings_from_yaml

    torch.set_num_threads(1)
    doc = yaml.safe_load(tiny_yaml.read_text())
    settings = CodecTrainSettings.from_dict({**settings_from_yaml(doc), **overrides})
    return CodecTrainer(CodecConfig.from_yaml(tiny_yaml), settings, data, out, progress=False)


def test_settings_come_from_the_original_yaml_keys(tiny_yaml):
    from llmvox.train.codec_config import settings_from_yaml

    found = settings_from_yaml(yaml.safe_load(tiny_yaml.read_text()))
    assert found["learning_rate"] == pytest.approx(1e-2)
    assert found["warmup_steps"] == 2
    assert found["batch_size"] == 4
    assert found["segment_seconds"] == pytest.approx(0.5)
    assert found["max_steps"] == 40
    assert found["eval_clips"] == 1


def test_tiny_codec_learns_saves_and_loads(tiny_yaml, tiny_dataset, tmp_path):
    from llmvox.codec.checkpoint import load_wavtokenizer

    trainer = _trainer(tiny_yaml, tiny_dataset, tmp_path / "run")
    assert len(trainer.eval_clips) == 1 and len(trainer.data.clips) == 4
    fixed = trainer.data.batch(10_000, 4, stream=7)
    before = trainer.reconstruction_loss(fixed)
    trainer.fit()
    after = trainer.reconstruction_loss(fixed)
    assert trainer.step == 40
    # 40 steps of a tiny codec: the weighted spectral loss on unseen crops falls (~254 -> ~236 here;
    # without optimiser steps it would not move at all).
    assert after < 0.95 * before, (before, after)

    # the original Lightning layout, readable by the core loader, same codes and audio as the trainer
    raw = torch.load(tmp_path / "run" / CKPT_FILE, map_location="cpu", weights_only=True)
    assert "pytorch-lightning_version" in raw
    keys = set(raw["state_dict"])
    assert any(k.startswith("feature_extractor.encodec.encoder.model.0.conv.conv.weight_g") for k in keys)
    assert "feature_extractor.encodec.quantizer.vq.layers.0._codebook.embed" in keys
    assert any(k.startswith("backbone.") for k in keys) and any(k.startswith("head.") for k in keys)
    loaded = load_wavtokenizer(tmp_path / "run" / CONFIG_FILE, tmp_path / "run" / CKPT_FILE)
    assert loaded.codebook_size == 32
    audio = fixed[:2]
    trainer.model.eval()
    with torch.no_grad():
        codes_trained = trainer.model.encode(audio)
        codes_loaded = loaded.encode(audio)
        assert torch.equal(codes_trained, codes_loaded)
        np.testing.assert_allclose(loaded.decode_codes(codes_loaded).numpy(),
                                   trainer.model.decode_codes(codes_trained).numpy(), atol=1e-4)


def test_straight_through_gradient_reaches_the_encoder(tiny_yaml, tiny_dataset, tmp_path):
    trainer = _trainer(tiny_yaml, tiny_dataset, tmp_path / "st", commit_weight=0.0)
    audio = trainer.data.batch(0, 2)
    out = trainer.forward(audio, update_codebook=False)
    assert out.codes is not None  # quantised: the decoder saw codebook rows
    trainer.mel_loss(out.audio_hat, audio).backward()
    grad = trainer.model.encoder.model[0].conv.weight_v.grad
    assert grad is not None and float(grad.abs().sum()) > 0


def test_resume_reproduces_the_uninterrupted_run(tiny_yaml, tiny_dataset, tmp_path):
    straight = _trainer(tiny_yaml, tiny_dataset, tmp_path / "straight", max_steps=8)
    straight_logs = [straight.train_step() for _ in range(8)]

    first = _trainer(tiny_yaml, tiny_dataset, tmp_path / "split", max_steps=8)
    first.fit(stop_at=5)  # saves the full state at its end
    assert first.step == 5
    del first
    resumed = CodecTrainer(CodecConfig(), CodecTrainSettings(), tiny_dataset, tmp_path / "split",
                           resume=True, progress=False)
    assert resumed.step == 5
    resumed_logs = [resumed.train_step() for _ in range(3)]
    for got, want in zip(resumed_logs, straight_logs[5:], strict=True):
        assert got["loss"] == want["loss"]
        assert got["commit"] == want["commit"]
    for (name, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_codebook_trains_by_ema_and_reseeds_dead_codes(tiny_yaml, tiny_dataset, tmp_path):
    trainer = _trainer(tiny_yaml, tiny_dataset, tmp_path / "ema")
    assert not trainer.codebook.initialised
    trainer.train_step()  # k-means initialisation, then the first EMA update
    assert trainer.codebook.initialised
    embed = trainer.model.quantizer.embed.clone()
    sizes = trainer.model.quantizer.cluster_size.clone()
    logs = trainer.train_step()
    assert not torch.equal(embed, trainer.model.quantizer.embed)
    assert not torch.equal(sizes, trainer.model.quantizer.cluster_size)
    # the counts are an EMA (decay 0.99) of the frames per batch (4 crops x 38 frames)
    assert logs["reseeded"] == 0
    frames = 4 * 38
    expected = 0.99 * float(sizes.sum()) + 0.01 * frames
    assert float(trainer.model.quantizer.cluster_size.sum()) == pytest.approx(expected, rel=1e-4)

    # a codebook whose rows 2..7 were never used: they are re-seeded with batch vectors
    q = CodebookQuantizer(8, 3)
    ema = EmaCodebook(q, decay=0.9, dead_fraction=0.5)
    torch.manual_seed(0)
    vectors = torch.randn(40, 3)
    ema.kmeans_init(vectors, iters=0, frames_per_batch=40)
    q.cluster_size.copy_(torch.tensor([20.0, 20.0, 0, 0, 0, 0, 0, 0]))
    batch = torch.randn(16, 3) + 10.0
    reseeded = ema.update(batch, torch.zeros(16, dtype=torch.long))
    assert reseeded == 6
    for row in q.embed[2:]:
        assert torch.isclose(batch, row[None]).all(dim=1).any()  # every re-seeded row is a batch vector
    assert torch.all(q.cluster_size[2:] == 2.0)  # one uniform share (16 frames / 8 codes)


def test_recenter_follows_a_shift_of_the_latents():
    q = CodebookQuantizer(4, 2)
    ema = EmaCodebook(q)
    vectors = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).repeat(5, 1)
    ema.kmeans_init(vectors, iters=3, frames_per_batch=20)
    before = q.embed.clone()
    ema.recenter(vectors.mean(0) + torch.tensor([5.0, -3.0]))
    torch.testing.assert_close(q.embed, before + torch.tensor([5.0, -3.0]))
    torch.testing.assert_close(q.embed_avg / q.cluster_size[:, None], q.embed, rtol=1e-3, atol=1e-3)


def test_freeze_encoder_keeps_codes_fixed(tiny_yaml, tiny_dataset, tmp_path):
    trainer = _trainer(tiny_yaml, tiny_dataset, tmp_path / "phase_a", max_steps=4)
    trainer.fit()
    phase_b = CodecTrainer(CodecConfig(), CodecTrainSettings(), tiny_dataset, tmp_path / "phase_a", resume=True,
                           overrides={"freeze_encoder": True, "max_steps": 8}, progress=False)
    assert phase_b.settings.schedule_start == 4
    encoder = {k: v.clone() for k, v in phase_b.model.state_dict().items() if not k.startswith(("backbone", "head"))}
    head = phase_b.model.head.out.weight.clone()
    phase_b.fit()
    for key, value in encoder.items():
        assert torch.equal(value, phase_b.model.state_dict()[key]), key
    assert not torch.equal(head, phase_b.model.head.out.weight)

    # the phase-A export tokenises exactly as the frozen encoder that phase B trains on
    from llmvox.bundle import load_bundle_codec

    final = tmp_path / "phase_a" / "milestones" / "phaseA_final"
    exported = load_bundle_codec(final, "cpu")
    audio = phase_b.data.batch(123, 3)
    with torch.no_grad():
        trained_on = phase_b.forward(audio, update_codebook=False).codes
        assert torch.equal(exported.encode(audio), trained_on)
    fingerprint = json.loads((final / "config.json").read_text())["codes_fingerprint"]
    assert fingerprint == phase_b.codes_fingerprint()
    assert json.loads((final / "config.json").read_text())["phase"] == "A"


def test_milestone_export_loads_as_a_codec_bundle(tiny_yaml, tiny_dataset, tmp_path):
    from llmvox.bundle import load_bundle_codec

    trainer = _trainer(tiny_yaml, tiny_dataset, tmp_path / "ms", max_steps=3, eval_every=3)
    trainer.fit()
    records = list(iter_jsonl(tmp_path / "ms" / EVAL_LOG))
    assert [r["step"] for r in records] == [3]
    assert np.isfinite(records[0]["mel_distance"]) and records[0]["perplexity"] >= 1
    folder = tmp_path / "ms" / "milestones" / "latest_phaseA"
    config = json.loads((folder / "config.json").read_text())
    assert config["step"] == 3 and config["storage_dtype"].startswith("float16")
    codec = load_bundle_codec(folder, "cpu")
    torch.testing.assert_close(codec.codebook, trainer.model.quantizer.embed, rtol=2e-3, atol=2e-3)
    assert (tmp_path / "ms" / "milestones" / "step_0000003" / "codec.safetensors").is_file()


def test_training_can_start_from_a_milestone_export(tiny_yaml, tiny_dataset, tmp_path):
    """A committed milestone (inference weights only) lets a fresh machine continue the codec."""
    trainer = _trainer(tiny_yaml, tiny_dataset, tmp_path / "first", max_steps=3, eval_every=3)
    trainer.fit()
    folder = tmp_path / "first" / "milestones" / "latest_phaseA"
    again = CodecTrainer(CodecConfig.from_yaml(tiny_yaml), trainer.settings, tiny_dataset, tmp_path / "again",
                         progress=False, init_weights=folder)
    codes = torch.randint(0, again.model.codebook_size, (1, 12))
    trainer.model.eval()
    again.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(again.model.decode_codes(codes), trainer.model.decode_codes(codes),
                                   rtol=2e-2, atol=2e-3)  # the milestone is stored in float16
    other = tmp_path / "other.yaml"
    other.write_text(tiny_yaml.read_text().replace("num_layers: 2", "num_layers: 3"))
    with pytest.raises(LLMVoXError, match="other codec sizes"):
        CodecTrainer(CodecConfig.from_yaml(other), trainer.settings, tiny_dataset, tmp_path / "x",
                     progress=False, init_weights=folder)


def test_cli_trains_resumes_and_refuses_to_overwrite(tiny_yaml, tiny_dataset, tmp_path, capsys):
    from llmvox.cli import main

    out = tmp_path / "cli"
    common = ["codec", "train", "--data-path", str(tiny_dataset), "--out-dir", str(out), "--no-progress"]
    assert main([*common, "--config", str(tiny_yaml), "--max-steps", "2", "--no-bf16"]) == 0
    state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
    assert state["step"] == 2 and state["settings"]["bf16"] is False
    assert main([*common, "--config", str(tiny_yaml), "--max_steps", "3"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*common, "--resume", "--max_steps", "3"]) == 0
    assert torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)["step"] == 3
    assert main(["codec", "train", "--data_path", str(tiny_dataset), "--out_dir", str(tmp_path / "none"),
                 "--resume"]) == 2


def test_adversarial_steps_train_the_discriminators_and_resume(tiny_yaml, tiny_dataset, tmp_path):
    trainer = _trainer(tiny_yaml, tiny_dataset, tmp_path / "gan", max_steps=2, adversarial=True, batch_size=2,
                       log_every=1)
    before = [p.detach().clone() for p in trainer.disc.parameters()]
    trainer.fit()
    records = list(iter_jsonl(tmp_path / "gan" / "train.jsonl"))
    assert records and {"disc", "gen", "fm"} <= set(records[-1])
    assert all(np.isfinite(records[-1][k]) for k in ("disc", "gen", "fm", "loss"))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.disc.parameters(), strict=True))
    state = torch.load(tmp_path / "gan" / STATE_FILE, map_location="cpu", weights_only=True)
    assert state["disc"] is not None and state["disc_optimizer"] is not None
    resumed = CodecTrainer(CodecConfig(), CodecTrainSettings(), tiny_dataset, tmp_path / "gan", resume=True,
                           overrides={"max_steps": 3}, progress=False)
    for (name, a), b in zip(resumed.disc.state_dict().items(), trainer.disc.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_phase_derivative_loss_ignores_phase_offsets_but_not_frequency():
    from llmvox.train.losses import PhaseDerivativeLoss

    loss = PhaseDerivativeLoss()
    t = torch.arange(RATE // 2) / RATE
    tone = torch.sin(2 * torch.pi * 200 * t)[None]
    shifted = torch.sin(2 * torch.pi * 200 * t + 1.3)[None]
    detuned = torch.sin(2 * torch.pi * 223 * t)[None]
    noise = 0.5 * torch.randn(1, RATE // 2, generator=torch.Generator().manual_seed(0))
    assert float(loss(tone, tone)) < 1e-5
    assert float(loss(shifted, tone)) < 0.1  # ~0.07: only the padded edges differ
    assert float(loss(detuned, tone)) > 0.5
    assert float(loss(noise, tone)) > 0.5


def test_init_weights_from_a_milestone_keeps_its_codes(tiny_yaml, tiny_dataset, tmp_path):
    from llmvox.cli import main

    trainer = _trainer(tiny_yaml, tiny_dataset, tmp_path / "src", max_steps=3, eval_every=3)
    trainer.fit()
    milestone = tmp_path / "src" / "milestones" / "latest_phaseA"
    out = tmp_path / "fresh"
    assert main(["codec", "train", "--config", str(tiny_yaml), "--data_path", str(tiny_dataset), "--out_dir",
                 str(out), "--init_weights", str(milestone), "--freeze_encoder", "--max_steps", "2",
                 "--no_progress"]) == 0
    from llmvox.codec.checkpoint import load_wavtokenizer

    continued = load_wavtokenizer(out / CONFIG_FILE, out / CKPT_FILE)
    audio = trainer.data.batch(55, 2)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(continued.encode(audio), trainer.model.encode(audio))


def test_export_every_writes_milestones_whatever_the_eval_says(tiny_yaml, tiny_dataset, tmp_path):
    trainer = _trainer(tiny_yaml, tiny_dataset, tmp_path / "ex", max_steps=4, export_every=2)
    trainer.fit()
    folders = sorted(p.name for p in (tmp_path / "ex" / "milestones").iterdir())
    assert folders == ["step_0000002", "step_0000004"]
    assert json.loads((tmp_path / "ex" / "milestones" / "step_0000004" / "config.json").read_text())["step"] == 4


def test_vq_warmup_rescales_grown_latents_before_kmeans(tiny_yaml, tiny_dataset, tmp_path):
    """After an unquantised warm-up the latents are rescaled exactly (the decoder's output is unchanged)
    and the codebook is k-means initialised on the rescaled latents: no commitment blow-up."""
    trainer = _trainer(tiny_yaml, tiny_dataset, tmp_path / "w", vq_warmup_steps=2, max_steps=4)
    trainer.fit(stop_at=2)
    assert not trainer.codebook.initialised
    with torch.no_grad():  # let the latents "grow" as in a long warm-up
        last = trainer.model.encoder.model[-1].conv
        last.weight_g.mul_(500.0)
        last.bias.mul_(500.0)
    audio = trainer.data.batch(123, 2, stream=5)
    trainer.model.eval()
    with torch.no_grad():
        before = trainer.model.decode(trainer.model.encoder(audio[:, None]))
        trainer._match_latent_scale(1.0)
        latents = trainer.model.encoder(audio[:, None])
        after = trainer.model.decode(latents)
    torch.testing.assert_close(after, before, rtol=1e-3, atol=1e-4)
    assert 0.25 < float(latents.std(dim=2).mean()) < 4.0
    trainer.model.train()
    logs = trainer.train_step()  # step 3: k-means happens here
    assert trainer.codebook.initialised and logs["commit"] < 10.0
