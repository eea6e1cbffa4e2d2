"""How a codec run is scored: copy-synthesis of held-out corpus clips, as the exported codec runs them.

Training losses are measured on random crops in training precision with the codebook still moving;
they say little about what a tokenised corpus will sound like. Evaluation instead encodes and decodes
whole held-out clips in float32 inference mode (exactly as tokenisation will) and reports the mel
distances, how many codes the clips use, and the codebook's training usage. The record it returns is
what `eval.jsonl` stores and what milestone exports are decided on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from llmvox.codec.wavtokenizer import WavTokenizer
from llmvox.train.codec_data import Clip, read_clip
from llmvox.train.ema_codebook import EmaCodebook
from llmvox.train.losses import MelDistance, codebook_perplexity


@dataclass
class EvalResult:
    step: int
    mel_distance: float
    perplexity: float
    codes_used: int
    train_usage_perplexity: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def evaluate_heldout(model: WavTokenizer, codebook: EmaCodebook, clips: list[Clip], *, sample_rate: int,
                     max_seconds: float, mel_distance: MelDistance, mel_distance_audible: MelDistance, step: int,
                     semantic_loss: Callable[[Tensor, list[tuple[str, float]]], Tensor] | None = None) -> EvalResult:
    """Copy-synthesis of the held-out `clips` (the first `max_seconds` of each) in inference mode.

    `semantic_loss(features, crops)`, when given, scores the features of each whole clip (a crop at 0 s)
    against its Whisper features (see `CodecTrainer.semantic_loss`).
    """
    start = time.time()
    model.eval()
    distances, audible, semantic, counts = [], [], [], torch.zeros(codebook.size)
    for clip in clips:
        audio = torch.from_numpy(read_clip(clip, sample_rate, max_seconds))[None]
        if codebook.initialised:
            features, codes = model.encode_with_features(audio)
            counts += torch.bincount(codes.reshape(-1), minlength=codebook.size).float()
        else:
            features = model.encoder(audio[:, None])
        audio_hat = model.decode(features)[:, : audio.shape[1]]
        distances.append(float(mel_distance(audio_hat, audio)))
        audible.append(float(mel_distance_audible(audio_hat, audio)))
        if semantic_loss is not None:
            semantic.append(float(semantic_loss(features, [(clip.id, 0.0)])))
    model.train()
    extra = {"mel_distance_audible": float(np.mean(audible)) if audible else float("nan")}
    if semantic:
        extra["semantic_distance"] = float(np.mean(semantic))
    return EvalResult(
        step=step,
        mel_distance=float(np.mean(distances)) if distances else float("nan"),
        perplexity=codebook_perplexity(counts),
        codes_used=int((counts > 0).sum()),
        train_usage_perplexity=codebook.usage_perplexity(),
        seconds=time.time() - start,
        extra=extra,
    )
