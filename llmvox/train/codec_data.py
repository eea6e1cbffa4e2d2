"""The audio a codec trains on: the clips of a dataset JSON, their held-out split, and random crops.

Kept apart from the trainer because the semantic feature store (`semantic.py`) reads the very same
clips, and because the crops must stay a pure function of (seed, stream, step): that is what lets a
resumed run see exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from llmvox.errors import LLMVoXError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Clip:
    id: str
    path: str
    frames: int
    rate: int


class CropDataset:
    """Random fixed-length crops of a corpus; the crops of step s depend only on (seed, s)."""

    def __init__(self, clips: list[Clip], sample_rate: int, segment_samples: int, seed: int) -> None:
        if not clips:
            raise LLMVoXError("codec training: no training clips")
        self.clips = clips
        self.sample_rate = sample_rate
        self.segment = segment_samples
        self.seed = seed

    def batch(self, step: int, batch_size: int, stream: int = 0) -> Tensor:
        """The crops of `step`; other `stream`s give independent batches (e.g. for k-means)."""
        return self.batch_with_crops(step, batch_size, stream)[0]

    def batch_with_crops(self, step: int, batch_size: int, stream: int = 0) -> tuple[Tensor, list[tuple[str, float]]]:
        """`batch` plus the (clip id, start in seconds) of every crop."""
        rng = np.random.default_rng([self.seed, stream, step])
        out = np.zeros((batch_size, self.segment), dtype=np.float32)
        crops = []
        for row, index in enumerate(rng.integers(0, len(self.clips), batch_size)):
            clip = self.clips[int(index)]
            need = int(math.ceil(self.segment * clip.rate / self.sample_rate))
            start = int(rng.integers(0, max(clip.frames - need, 0) + 1))
            out[row] = _read_segment(clip, start, need, self.sample_rate)[: self.segment]
            crops.append((clip.id, start / clip.rate))
        return torch.from_numpy(out), crops


def _read_segment(clip: Clip, start: int, frames: int, target_rate: int) -> np.ndarray:
    """`frames` samples from `start` (zero-padded at the end) as float32 mono at `target_rate`."""
    import soundfile as sf

    from llmvox.audio import resample

    data, _ = sf.read(clip.path, start=start, frames=frames, dtype="float32", always_2d=True)
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    mono = resample(mono, clip.rate, target_rate)
    want = int(math.ceil(frames * target_rate / clip.rate))
    if mono.shape[0] < want:
        mono = np.pad(mono, (0, want - mono.shape[0]))
    return mono


def read_clip(clip: Clip, target_rate: int, max_seconds: float | None = None) -> np.ndarray:
    frames = clip.frames if max_seconds is None else min(clip.frames, int(max_seconds * clip.rate))
    return _read_segment(clip, 0, frames, target_rate)


def load_clips(data_path: str | os.PathLike) -> list[Clip]:
    """Every usable clip of a dataset JSON (bad entries are logged with their ids and skipped)."""
    import soundfile as sf

    from llmvox.train.dataset import load_dataset_json

    entries, problems = load_dataset_json(data_path, on_error="skip")
    for problem in problems[:20]:
        log.warning("skipping dataset entry: %s", problem)
    if len(problems) > 20:
        log.warning("... and %d more skipped entries", len(problems) - 20)
    clips = []
    for entry in entries:
        info = sf.info(str(entry.audio_path))
        clips.append(Clip(entry.id, str(entry.audio_path), int(info.frames), int(info.samplerate)))
    if not clips:
        raise LLMVoXError(f"dataset {data_path} has no usable clips")
    return clips


def split_heldout(clips: list[Clip], count: int, fixed_ids: list[str] | None = None) -> tuple[list[Clip], list[Clip]]:
    """(train, eval): the eval clips are `fixed_ids` if given, else the `count` ids of lowest hash."""
    if fixed_ids is None:
        ranked = sorted(clips, key=lambda c: (zlib.crc32(c.id.encode("utf-8")), c.id))
        fixed_ids = [c.id for c in ranked[: min(count, max(len(clips) - 1, 0))]]
    chosen = set(fixed_ids)
    by_id = {c.id: c for c in clips}
    missing = [i for i in fixed_ids if i not in by_id]
    if missing:
        raise LLMVoXError(f"codec training: held-out eval clips {missing[:5]} are no longer in the dataset")
    return [c for c in clips if c.id not in chosen], [by_id[i] for i in fixed_ids]
