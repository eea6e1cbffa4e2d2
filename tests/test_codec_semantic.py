"""Semantic distillation: the Whisper feature store (real embedded Whisper base) and its codec loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llmvox.errors import LLMVoXError
from llmvox.train.codec_data import load_clips
from llmvox.train.codec_trainer import CodecTrainer
from llmvox.train.semantic import FRAME_RATE, SemanticStore, build_semantic_store
from tests.test_codec_train import _trainer, tiny_dataset, tiny_yaml  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def store(tiny_dataset, tmp_path_factory) -> Path:  # noqa: F811
    folder = tmp_path_factory.mktemp("semantic")
    clips = load_clips(tiny_dataset)
    build_semantic_store(clips[:3], folder, progress=False)
    build_semantic_store(clips, folder, progress=False)  # resumes: only the last two are computed
    return folder


def test_store_holds_whisper_frames_for_every_clip(store, tiny_dataset):  # noqa: F811
    s = SemanticStore(store)
    clips = load_clips(tiny_dataset)
    assert set(s.index) == {c.id for c in clips} and s.dim == 512
    for clip in clips:  # 1.5 s clips -> 75 Whisper frames at 50 Hz
        frames = s.frames(clip.id)
        assert frames.shape == (int(clip.frames / clip.rate * FRAME_RATE), 512)
        assert np.isfinite(frames.astype(np.float32)).all() and float(np.abs(frames).mean()) > 0.1
    # different audio, different features (a constant or zero store would pass the checks above)
    a, b = (s.frames(c.id).astype(np.float32) for c in clips[:2])
    assert float(np.abs(a - b).mean()) > 0.1


def test_window_interpolates_and_standardises(store):
    s = SemanticStore(store)
    raw = (s.frames("c0").astype(np.float32) - s.mean) / s.std
    # at the store's own rate the window is the stored frames; past the end it is zero
    np.testing.assert_allclose(s.window("c0", 0.0, 80, FRAME_RATE)[:75], raw, rtol=1e-5, atol=1e-4)
    assert not s.window("c0", 0.0, 80, FRAME_RATE)[75:].any()
    # half-way between two frames: their mean
    mid = s.window("c0", 0.01, 1, FRAME_RATE)[0]
    np.testing.assert_allclose(mid, (raw[0] + raw[1]) / 2, rtol=1e-4, atol=1e-4)


def test_semantic_loss_trains_the_probe_and_reaches_the_encoder(tiny_yaml, tiny_dataset, store, tmp_path):  # noqa: F811
    trainer = _trainer(tiny_yaml, tiny_dataset, tmp_path / "run", semantic_weight=10.0, semantic_dir=str(store),
                       learning_rate=3e-3, encoder_lr_scale=1.0, mel_weight=0.0, stft_weight=0.0, commit_weight=0.0)
    audio, crops = trainer.data.batch_with_crops(0, 4)
    out = trainer.forward(audio, update_codebook=False)
    first = trainer.semantic_loss(out.features, crops)
    assert 0.5 < float(first.detach()) < 1.5  # a random probe: cosine distance ~1
    first.backward()
    grad = trainer.model.encoder.model[0].conv.weight_v.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    trainer.optimizer.zero_grad(set_to_none=True)

    def held_out() -> float:
        with torch.no_grad():
            audio, crops = trainer.data.batch_with_crops(10_000, 8, stream=7)
            return float(trainer.semantic_loss(trainer.forward(audio, update_codebook=False).features, crops))

    before = held_out()
    for _ in range(40):
        trainer.train_step()
    after = held_out()
    assert after < 0.92 * before, (before, after)  # ~1.01 -> ~0.87 here (32 codes limit the probe)
    result = trainer.evaluate()
    assert 0 < result.extra["semantic_distance"] < 1.5


def test_semantic_setting_errors_are_clear(tiny_yaml, tiny_dataset, store, tmp_path):  # noqa: F811
    with pytest.raises(LLMVoXError, match="--semantic_dir"):
        _trainer(tiny_yaml, tiny_dataset, tmp_path / "a", semantic_weight=1.0)
    with pytest.raises(LLMVoXError, match="no semantic features"):
        _trainer(tiny_yaml, tiny_dataset, tmp_path / "b", semantic_weight=1.0, semantic_dir=str(tmp_path))
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "index.json").write_text('{"dim": 512, "clips": {"c0": [0, 75]}}')  # no features file
    with pytest.raises(LLMVoXError, match="damaged semantic feature store"):
        SemanticStore(damaged)
    partial = tmp_path / "partial"
    build_semantic_store(load_clips(tiny_dataset)[:1], partial, progress=False)
    with pytest.raises(LLMVoXError, match="lacks Whisper features"):
        _trainer(tiny_yaml, tiny_dataset, tmp_path / "c", semantic_weight=1.0, semantic_dir=str(partial))
    # switching the loss on in the middle of a run is refused (the optimiser has no state for the probe)
    plain = _trainer(tiny_yaml, tiny_dataset, tmp_path / "d", max_steps=2)
    plain.fit()
    from llmvox.codec.config import CodecConfig
    from llmvox.train.codec_config import CodecTrainSettings

    with pytest.raises(LLMVoXError, match="switched on or off"):
        CodecTrainer(CodecConfig(), CodecTrainSettings(), tiny_dataset, tmp_path / "d", resume=True, progress=False,
                     overrides={"semantic_weight": 1.0, "semantic_dir": str(store)})
