"""Whisper encoder features of a corpus, the phonetic targets of codec semantic distillation.

A small single-codebook codec trained on reconstruction losses alone learns codes that describe the
spectrum coarsely: on our 2-core budget its resynthesis stayed unintelligible to Whisper (WER > 1)
after 8,000 steps. Asking the quantised features to also predict what Whisper's encoder sees in the
same audio (cosine distance per frame, through a throw-away linear head) pulls the codebook towards
phonetic distinctions, which is what intelligibility needs. The same idea drives SpeechTokenizer and
X-Codec (there with HuBERT); here the teacher is the Whisper base already shipped for ASR.

The features are computed once per clip (the whole clip, so each frame sees its context) and kept
in a float16 memmap outside the repository: `features.f16` + `index.json` ({id: [row, frames]}).
The store grows clip by clip and resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmvox.errors import LLMVoXError
from llmvox.train.codec_data import Clip, read_clip

log = logging.getLogger(__name__)

WHISPER_RATE = 16000
FRAME_RATE = 50.0  # Whisper encoder frames per second (10 ms mel hop, stride-2 conv)
MAX_SECONDS = 30.0  # Whisper's window; longer clips are cut
INDEX_FILE = "index.json"
FEATURES_FILE = "features.f16"
STATS_FILE = "stats.npz"


class WhisperEncoder:
    """The encoder half of a CTranslate2 Whisper model: mono audio -> (frames, dim) float32."""

    def __init__(self, model: str | os.PathLike | None = None, threads: int = 1) -> None:
        import ctranslate2
        from faster_whisper.feature_extractor import FeatureExtractor

        from llmvox.asr.whisper import whisper_base_dir

        folder = whisper_base_dir() if model in (None, "", "base") else Path(model)
        self._model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="int8",
                                                 intra_threads=threads)
        self._features = FeatureExtractor(feature_size=self._model.n_mels)
        self._storage = ctranslate2.StorageView

    def __call__(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        from llmvox.audio import resample

        audio = resample(np.asarray(audio, dtype=np.float32), sample_rate, WHISPER_RATE)
        audio = audio[: int(MAX_SECONDS * WHISPER_RATE)]
        mel = self._features(audio)[:, :-1]  # the extractor adds one frame past the end
        if mel.shape[1] % 2:
            mel = np.pad(mel, ((0, 0), (0, 1)))
        mel = np.ascontiguousarray(mel[None], dtype=np.float32)
        out = self._model.encode(self._storage.from_array(mel), to_cpu=True)
        return np.asarray(out)[0].astype(np.float32)


class SemanticStore:
    """Read (and build) the per-clip Whisper features of a corpus."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        index_path = self.folder / INDEX_FILE
        if not index_path.is_file():
            raise LLMVoXError(f"{self.folder} holds no semantic features (no {INDEX_FILE}); "
                              "build them with `llmvox codec semantic`")
        try:
            meta = json.loads(index_path.read_text())
            self.dim = int(meta["dim"])
            self.index: dict[str, tuple[int, int]] = {k: (int(r), int(n)) for k, (r, n) in meta["clips"].items()}
            rows = sum(n for _, n in self.index.values())
            self._data = np.memmap(self.folder / FEATURES_FILE, dtype=np.float16, mode="r",
                                   shape=(rows, self.dim)) if rows else np.zeros((0, self.dim), np.float16)
        except (ValueError, KeyError, TypeError, OSError) as exc:  # JSONDecodeError is a ValueError
            raise LLMVoXError(f"{self.folder}: damaged semantic feature store ({exc}); delete it and run "
                              "`llmvox codec semantic` again") from None
        self.mean, self.std = self._standardiser() if rows else (np.zeros(self.dim, np.float32), np.ones(self.dim, np.float32))

    def _standardiser(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and std over (a sample of) the store, cached in `stats.npz`.

        Whisper's encoder has a few dimensions of very large magnitude; unstandardised, they would
        decide every cosine and the other 500 dimensions would teach nothing."""
        path = self.folder / STATS_FILE
        rows = len(self._data)
        if path.is_file():
            saved = np.load(path)
            if int(saved["rows"]) == rows:
                return saved["mean"], saved["std"]
        sample = self._data[:: max(rows // 200_000, 1)].astype(np.float32)
        mean, std = sample.mean(axis=0), sample.std(axis=0) + 1e-3
        tmp = path.with_name(f".{STATS_FILE}")
        with open(tmp, "wb") as f:
            np.savez(f, mean=mean, std=std, rows=rows)
        os.replace(tmp, path)
        return mean, std

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self.index

    def frames(self, clip_id: str) -> np.ndarray:
        """(frames, dim) float16 features of one clip at 50 frames per second."""
        row, count = self.index[clip_id]
        return self._data[row: row + count]

    def window(self, clip_id: str, start_seconds: float, count: int, rate: float) -> np.ndarray:
        """`count` feature vectors at `rate` frames per second from `start_seconds` (frame centres),
        linearly interpolated from the 50 Hz features and standardised per dimension; zeros past the
        clip's end."""
        feats = self.frames(clip_id)
        out = np.zeros((count, self.dim), dtype=np.float32)
        if len(feats) == 0:
            return out
        centres = (start_seconds + (np.arange(count) + 0.5) / rate) * FRAME_RATE - 0.5
        inside = centres <= len(feats) - 1
        pos = np.clip(centres[inside], 0, len(feats) - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, len(feats) - 1)
        frac = (pos - lo)[:, None].astype(np.float32)
        mixed = feats[lo].astype(np.float32) * (1 - frac) + feats[hi].astype(np.float32) * frac
        out[inside] = (mixed - self.mean) / self.std
        return out


def probe_distance(probe: nn.Module, store: SemanticStore, features: Tensor, crops: list[tuple[str, float]],
                   rate: float) -> Tensor:
    """Mean cosine distance between the probe's prediction from `features` (B, D, T) and the
    Whisper features of the same crops ((clip id, start in seconds) at `rate` frames per second),
    over frames inside their clips."""
    frames = features.shape[-1]
    target = torch.from_numpy(np.stack([store.window(clip_id, start, frames, rate) for clip_id, start in crops]))
    predicted = probe(features).transpose(1, 2)
    inside = target.abs().sum(dim=-1) > 0
    if not bool(inside.any()):
        return predicted.new_zeros(())
    return (1 - F.cosine_similarity(predicted, target, dim=-1))[inside].mean()


def build_semantic_store(clips: list[Clip], folder: str | os.PathLike, *, model: str | None = None, threads: int = 1,
                         progress: bool = True, flush_every: int = 200) -> Path:
    """Compute the features of every clip not yet in `folder` (resumable; appends to the memmap)."""
    from tqdm import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / INDEX_FILE
    meta = json.loads(index_path.read_text()) if index_path.is_file() else {"dim": None, "clips": {}, "model": model or "base"}
    done: dict[str, list[int]] = meta["clips"]
    rows = sum(n for _, n in done.values())
    todo = [c for c in clips if c.id not in done]
    if not todo:
        return folder
    encoder = WhisperEncoder(model, threads=threads)
    data_path = folder / FEATURES_FILE
    with open(data_path, "r+b" if data_path.exists() else "wb") as out:
        out.truncate(rows * 2 * (meta["dim"] or 0))  # drop rows written after the last index flush
        out.seek(0, os.SEEK_END)
        for n, clip in enumerate(tqdm(todo, desc="whisper features", disable=not progress, unit="clip"), 1):
            feats = encoder(read_clip(clip, WHISPER_RATE), WHISPER_RATE)
            if meta["dim"] is None:
                meta["dim"] = int(feats.shape[1])
            out.write(feats.astype(np.float16).tobytes())
            done[clip.id] = [rows, int(feats.shape[0])]
            rows += int(feats.shape[0])
            if n % flush_every == 0 or n == len(todo):
                out.flush()
                tmp = index_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(meta))
                os.replace(tmp, index_path)
    log.info("semantic features: %d clips, %d frames in %s", len(done), rows, folder)
    return folder
