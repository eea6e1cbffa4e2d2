"""Training a WavTokenizer codec on a CPU: the loop, the EMA codebook, checkpoints and evaluation.

What the plain `WavTokenizer.forward` lacks for training, and this module adds:

* a straight-through estimator around the codebook (the decoder's gradient reaches the encoder as if
  quantisation were the identity) and a commitment loss that keeps encoder outputs near their codes;
* an EMA codebook (exponential moving averages of assignment counts and of the vectors assigned),
  initialised by k-means on real encoder outputs and with dead codes re-seeded from the current batch,
  because a large codebook trained from scratch on little data otherwise collapses onto a few codes;
* bf16 autocast for the encoder and backbone (the ISTFT head, spectra and the codebook distances stay
  float32), AdamW with warmup + cosine decay, gradient clipping;
* random fixed-length crops drawn from a generator seeded by (seed, step), so that a resumed run sees
  exactly the batches an uninterrupted run would have seen;
* atomic full checkpoints (model, optimiser, step, RNG) for resume, an original-layout Lightning
  checkpoint + YAML for loading, periodic evaluation on held-out corpus clips (mel distance, codebook
  perplexity) written to JSONL, and inference-only milestone exports.

Phase B of our recipe freezes the encoder and codebook (`freeze_encoder`): codes stop changing, so a
corpus tokenised with the phase-A codec stays valid while the backbone and head keep improving.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmvox.codec.config import CodecConfig
from llmvox.codec.wavtokenizer import CodebookQuantizer, WavTokenizer
from llmvox.errors import LLMVoXError
from llmvox.train.losses import (
    TRAIN_LOG_FLOOR,
    MelDistance,
    MultiResolutionMelLoss,
    MultiResolutionSTFTLoss,
    PhaseDerivativeLoss,
    codebook_perplexity,
    discriminator_hinge_loss,
    feature_matching_loss,
    generator_hinge_loss,
)
from llmvox.train.semantic import SemanticStore

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
CKPT_FILE = "wavtokenizer.ckpt"
CONFIG_FILE = "config.yaml"
TRAIN_LOG = "train.jsonl"
EVAL_LOG = "eval.jsonl"
MILESTONES = "milestones"
STATE_VERSION = 1


# ============================================================================================
# Settings
# ============================================================================================


@dataclass
class CodecTrainSettings:
    """Everything that shapes a training run besides the model sizes (those are in `CodecConfig`)."""

    max_steps: int = 20000
    batch_size: int = 8
    segment_seconds: float = 1.0
    learning_rate: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 200
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 5.0
    # loss weights (the original: mel 45, commitment 1000, each GAN family 1)
    mel_weight: float = 45.0
    stft_weight: float = 15.0
    commit_weight: float = 5.0
    log_floor: float = TRAIN_LOG_FLOOR  # magnitude clamp before the logs of the mel/STFT losses
    phase_weight: float = 0.0  # phase-derivative loss at the head's STFT resolution (see losses.py)
    # semantic distillation (see semantic.py): codes also predict Whisper encoder features
    semantic_weight: float = 0.0
    semantic_dir: str | None = None
    # codebook
    codebook_decay: float = 0.99
    kmeans_iters: int = 30
    kmeans_init_batches: int = 8
    dead_code_fraction: float = 0.05  # dead when its usage EMA < this x the uniform share of a batch
    vq_warmup_steps: int = 0  # steps that skip quantisation before the k-means initialisation
    track_latent_mean: bool = True  # shift the codebook with the latents' batch mean (see EmaCodebook)
    encoder_lr_scale: float = 1.0  # the encoder's learning rate relative to the decoder's
    latent_init_std: float = 1.0  # data-dependent scale of the fresh encoder's output (0: off)
    # phases
    freeze_encoder: bool = False
    adversarial: bool = False
    adv_weight: float = 2.0
    fm_weight: float = 2.0
    disc_learning_rate: float = 2e-4
    schedule_start: int = 0  # the step at which the current warmup + cosine schedule began
    # runtime
    bf16: bool = True
    # The encoder's convs are narrow (16-256 channels at high rates): bf16 does not speed them up on
    # a CPU (measured: same step time), and float32 keeps training codes equal to inference codes.
    encoder_bf16: bool = False
    threads: int = 1
    seed: int = 0
    log_every: int = 20
    eval_every: int = 500
    save_every: int = 200
    eval_clips: int = 8
    eval_max_seconds: float = 6.0
    milestone_improvement: float = 0.03  # relative eval mel improvement that triggers an export
    milestone_dtype: str = "float16"
    export_every: int = 0  # also export a milestone every N steps whatever the eval says (0: off)
    reinit_codebook: bool = False  # with init_weights: k-means a fresh codebook (e.g. after a VQ warm-up)

    def validate(self) -> None:
        checks = {
            "max_steps": self.max_steps >= 0, "batch_size": self.batch_size > 0,
            "segment_seconds": self.segment_seconds > 0, "learning_rate": self.learning_rate > 0,
            "threads": self.threads > 0, "eval_every": self.eval_every > 0, "save_every": self.save_every > 0,
            "log_every": self.log_every > 0, "eval_clips": self.eval_clips >= 0,
            "codebook_decay": 0 < self.codebook_decay < 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise LLMVoXError(f"codec training: invalid {bad[0]} = {getattr(self, bad[0])!r}")
        if self.milestone_dtype not in ("float16", "bfloat16", "float32"):
            raise LLMVoXError(f"codec training: milestone_dtype must be float16, bfloat16 or float32, "
                              f"got {self.milestone_dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodecTrainSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LLMVoXError(f"codec training: unknown settings {unknown}")
        values = dict(data)
        if "betas" in values:
            values["betas"] = tuple(float(b) for b in values["betas"])
        return cls(**values)


# Original YAML keys that carry training settings: (path, our field, converter).
_ORIGINAL_KEYS: tuple[tuple[tuple[str, ...], str, Callable[[Any], Any]], ...] = (
    (("model", "init_args", "initial_learning_rate"), "learning_rate", float),
    (("model", "init_args", "num_warmup_steps"), "warmup_steps", int),
    (("model", "init_args", "mel_loss_coeff"), "mel_weight", float),
    (("data", "init_args", "train_params", "batch_size"), "batch_size", int),
    (("trainer", "max_steps"), "max_steps", int),
)
OUR_SECTION = "llmvox_train"  # our extra settings live in their own top-level YAML section


def settings_from_yaml(data: dict[str, Any]) -> dict[str, Any]:
    """Training settings named in an original-schema YAML (plus our `llmvox_train` section)."""
    found: dict[str, Any] = {}
    for path, name, convert in _ORIGINAL_KEYS:
        node: Any = data
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            found[name] = convert(node)
    train_params = ((data.get("data") or {}).get("init_args") or {}).get("train_params") or {}
    rate = ((data.get("model") or {}).get("init_args") or {}).get("sample_rate", 24000)
    if "num_samples" in train_params:
        found["segment_seconds"] = float(train_params["num_samples"]) / float(rate)
    ours = data.get(OUR_SECTION) or {}
    if not isinstance(ours, dict):
        raise LLMVoXError(f"codec config: '{OUR_SECTION}' must be a mapping")
    known = {f.name for f in fields(CodecTrainSettings)}
    unknown = sorted(set(ours) - known)
    if unknown:
        raise LLMVoXError(f"codec config: unknown {OUR_SECTION} keys {unknown}")
    found.update(ours)
    return found


def full_yaml(config: CodecConfig, settings: CodecTrainSettings, data_path: str | None) -> dict[str, Any]:
    """The original-schema YAML for this run (model sizes + training keys) plus our section."""
    doc = config.to_yaml_dict()
    init = doc["model"]["init_args"]
    init.update({
        "initial_learning_rate": settings.learning_rate,
        "num_warmup_steps": settings.warmup_steps,
        "mel_loss_coeff": settings.mel_weight,
        "mrd_loss_coeff": 1.0,
        "pretrain_mel_steps": 0,
    })
    doc["data"] = {
        "class_path": "decoder.dataset.VocosDataModule",
        "init_args": {"train_params": {
            "filelist_path": data_path,
            "sampling_rate": config.sample_rate,
            "num_samples": int(round(settings.segment_seconds * config.sample_rate)),
            "batch_size": settings.batch_size,
        }},
    }
    doc["trainer"] = {"max_steps": settings.max_steps}
    doc[OUR_SECTION] = settings.to_dict()
    return doc


# ============================================================================================
# Data: random crops of the corpus
# ============================================================================================


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


# ============================================================================================
# The EMA codebook
# ============================================================================================


class EmaCodebook:
    """Training rules for a `CodebookQuantizer`'s buffers (embed, embed_avg, cluster_size, inited).

    The codebook is not a parameter: each row is the running mean of the encoder vectors assigned to
    it (EMA of their sum / EMA of their count, with Laplace smoothing so empty rows stay finite).
    The encoder's outputs drift mostly as a whole early in training (one optimiser step moves their
    common mean by about their whole frame-to-frame spread), which a slow EMA cannot follow: every
    frame then lands on the one row nearest the new mean and the codebook collapses. `recenter`
    therefore shifts all rows (and their sums) with the batch mean before each assignment, so the
    EMA only has to follow the shape of the cloud, not its position.

    Rows whose usage EMA drops below `dead_fraction` of a uniform share are re-seeded with random
    vectors of the current batch, and their statistics reset to one uniform share, so they get a fair
    chance instead of being overwritten back by their stale averages.
    """

    def __init__(self, quantizer: CodebookQuantizer, decay: float = 0.99, dead_fraction: float = 0.05,
                 epsilon: float = 1e-5) -> None:
        self.q = quantizer
        self.decay = decay
        self.dead_fraction = dead_fraction
        self.epsilon = epsilon
        self.center: Tensor | None = None  # the latent mean the rows are currently aligned to
        self.anchor: Tensor | None = None  # the latent mean at initialisation (see `anchor_loss`)

    def _smoothed_counts(self) -> Tensor:
        k = self.size
        total = self.q.cluster_size.sum()
        return (self.q.cluster_size + self.epsilon) / (total + k * self.epsilon) * total

    @torch.no_grad()
    def recenter(self, mean: Tensor) -> None:
        """Move every row by the change of the latent mean since the last call."""
        mean = mean.detach().float()
        if self.center is not None:
            delta = mean - self.center
            self.q.embed.add_(delta[None, :])
            self.q.embed_avg.add_(delta[None, :] * self._smoothed_counts()[:, None])
        self.center = mean.clone()
        if self.anchor is None:  # e.g. weights loaded from an export: anchor where training resumes
            self.anchor = mean.clone()

    @property
    def size(self) -> int:
        return int(self.q.embed.shape[0])

    @property
    def initialised(self) -> bool:
        return bool(self.q.inited.item() > 0)

    def mark_uninitialised(self) -> None:
        self.q.inited.zero_()

    @torch.no_grad()
    def kmeans_init(self, vectors: Tensor, iters: int, frames_per_batch: int,
                    generator: torch.Generator | None = None) -> None:
        """Set the rows to k-means centroids of (N, D) `vectors` (random rows when N < K)."""
        vectors = vectors.float()
        k = self.size
        n = vectors.shape[0]
        if n >= k:
            centroids = vectors[torch.randperm(n, generator=generator)[:k]].clone()
        else:
            centroids = vectors[torch.randint(0, n, (k,), generator=generator)].clone()
            centroids += 1e-3 * vectors.std() * torch.randn(centroids.shape, generator=generator)
        counts = torch.zeros(k)
        for _ in range(max(iters, 0)):
            assign = _nearest(vectors, centroids)
            counts = torch.bincount(assign, minlength=k).float()
            sums = torch.zeros_like(centroids).index_add_(0, assign, vectors)
            filled = counts > 0
            centroids[filled] = sums[filled] / counts[filled, None]
        if iters <= 0:
            counts = torch.bincount(_nearest(vectors, centroids), minlength=k).float()
        share = counts * (frames_per_batch / max(n, 1))
        share = share.clamp(min=frames_per_batch / k)  # unused centroids start with one uniform share
        self.q.embed.copy_(centroids)
        self.q.cluster_size.copy_(share)
        self.q.embed_avg.copy_(centroids * share[:, None])
        self.q.inited.fill_(1)
        self.center = vectors.mean(0)
        self.anchor = self.center.clone()

    def anchor_loss(self, latents: Tensor) -> Tensor:
        """Squared distance of the batch's mean latent from its value at initialisation (per dim).

        `recenter` makes the codebook follow the mean, which also removes the commitment loss's
        restoring force on it; without this term the mean random-walks away (Adam momentum makes
        it a steady drift) and the codebook is always one step behind the encoder.
        """
        if self.anchor is None:
            return latents.new_zeros(())
        return (latents.mean(dim=(0, 2)) - self.anchor).pow(2).mean()

    @torch.no_grad()
    def update(self, vectors: Tensor, codes: Tensor) -> int:
        """One EMA step from (N, D) vectors and their (N,) codes; returns how many rows were re-seeded."""
        vectors = vectors.float()
        k = self.size
        counts = torch.bincount(codes, minlength=k).float()
        sums = torch.zeros(k, vectors.shape[1]).index_add_(0, codes, vectors)
        self.q.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.q.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.q.embed.copy_(self.q.embed_avg / self._smoothed_counts()[:, None])
        share = vectors.shape[0] / k
        dead = self.q.cluster_size < self.dead_fraction * share
        n_dead = int(dead.sum())
        if n_dead:
            picks = vectors[torch.randint(0, vectors.shape[0], (n_dead,))]
            self.q.embed[dead] = picks
            self.q.embed_avg[dead] = picks * share
            self.q.cluster_size[dead] = share
        return n_dead

    def usage_perplexity(self) -> float:
        return codebook_perplexity(self.q.cluster_size)


def _nearest(vectors: Tensor, table: Tensor, chunk: int = 8192) -> Tensor:
    out = []
    table_sq = table.pow(2).sum(1)
    for start in range(0, vectors.shape[0], chunk):
        x = vectors[start:start + chunk]
        out.append((table_sq[None, :] - 2 * x @ table.t()).argmin(dim=1))
    return torch.cat(out)


# ============================================================================================
# Model pieces used in training
# ============================================================================================


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


@dataclass
class StepOutput:
    audio_hat: Tensor
    latents: Tensor  # (B, D, T) float32, encoder output
    features: Tensor  # (B, D, T) what the backbone saw (quantised, straight-through gradient)
    codes: Tensor | None  # (B, T) or None while quantisation is skipped
    commit: Tensor


def quantize_for_training(model: WavTokenizer, latents: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(quantised features with a straight-through gradient, codes, commitment loss)."""
    codes = model.quantizer.nearest(latents)
    quantised = model.quantizer.lookup(codes)
    commit = F.mse_loss(latents, quantised.detach())
    return latents + (quantised - latents).detach(), codes, commit


def _param_groups(model: WavTokenizer, weight_decay: float) -> list[dict[str, Any]]:
    """Four fixed groups (encoder/decoder x decay/no decay) so optimiser state survives phase switches."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {(p, d): [] for p in ("enc", "dec") for d in (True, False)}
    for name, param in model.named_parameters():
        part = "enc" if name.startswith("encoder.") else "dec"
        decay = param.dim() >= 2 and not name.endswith("weight_g")
        groups[(part, decay)].append(param)
    return [{"params": groups[(p, d)], "weight_decay": weight_decay if d else 0.0, "name": f"{p}_{'decay' if d else 'nodecay'}"}
            for p in ("enc", "dec") for d in (True, False)]


def lr_factor(step: int, settings: CodecTrainSettings) -> float:
    """Linear warmup then cosine decay to `min_lr_ratio`, counted from `schedule_start`."""
    s = step - settings.schedule_start
    span = max(settings.max_steps - settings.schedule_start, 1)
    if s < settings.warmup_steps:
        return (s + 1) / settings.warmup_steps
    progress = min((s - settings.warmup_steps) / max(span - settings.warmup_steps, 1), 1.0)
    return settings.min_lr_ratio + (1 - settings.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ============================================================================================
# The trainer
# ============================================================================================


@dataclass
class EvalResult:
    step: int
    mel_distance: float
    perplexity: float
    codes_used: int
    train_usage_perplexity: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


class CodecTrainer:
    """Owns the model, optimiser(s), data and output folder of one codec training run."""

    def __init__(self, config: CodecConfig, settings: CodecTrainSettings, data_path: str | os.PathLike,
                 out_dir: str | os.PathLike, *, resume: bool = False,
                 overrides: dict[str, Any] | None = None, progress: bool = True,
                 clips: list[Clip] | None = None, init_weights: str | os.PathLike | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.data_path = str(data_path)
        self.progress = progress
        state = None
        phase_switch = False
        state_path = self.out_dir / STATE_FILE
        if resume:
            if not state_path.is_file():
                raise LLMVoXError(f"--resume: no training state at {state_path}")
            state = torch.load(state_path, map_location="cpu", weights_only=True)
            if state.get("version") != STATE_VERSION:
                raise LLMVoXError(f"{state_path}: unsupported training state version {state.get('version')}")
            config = CodecConfig.from_dict(state["codec_config"])
            previous = CodecTrainSettings.from_dict(state["settings"])
            settings = CodecTrainSettings.from_dict({**previous.to_dict(), **(overrides or {})})
            phase_switch = settings.freeze_encoder and not previous.freeze_encoder
            if phase_switch:
                # A fresh warmup + cosine schedule for the remaining steps.
                settings.schedule_start = int(state["step"])
        elif state_path.is_file():
            raise LLMVoXError(
                f"{self.out_dir} already holds a training state ({STATE_FILE}); pass --resume to continue it "
                "or choose another --out_dir"
            )
        settings.validate()
        self.config, self.settings = config, settings
        torch.set_num_threads(settings.threads)

        torch.manual_seed(settings.seed)
        self.model = WavTokenizer(config).unfold_weight_norm_()
        self.last_reseeded = 0
        self.codebook = EmaCodebook(self.model.quantizer, settings.codebook_decay, settings.dead_code_fraction)
        self.semantic: SemanticStore | None = None
        self.semantic_head: nn.Conv1d | None = None
        groups = _param_groups(self.model, settings.weight_decay)
        if settings.semantic_weight > 0:
            if not settings.semantic_dir:
                raise LLMVoXError("--semantic_weight needs --semantic_dir (build it with `llmvox codec semantic`)")
            self.semantic = SemanticStore(settings.semantic_dir)
            # Throw-away probe: predicts the Whisper features from the codes; never exported.
            self.semantic_head = nn.Conv1d(config.encoder_dimension, self.semantic.dim, 1)
            groups.append({"params": list(self.semantic_head.parameters()), "weight_decay": 0.0, "name": "semantic"})
        self.optimizer = torch.optim.AdamW(groups, lr=settings.learning_rate, betas=settings.betas)
        self.disc: nn.Module | None = None
        self.disc_optimizer: torch.optim.Optimizer | None = None
        if settings.adversarial:
            self._build_discriminators()

        self.mel_loss = MultiResolutionMelLoss(config.sample_rate, floor=settings.log_floor)
        self.stft_loss = MultiResolutionSTFTLoss(floor=settings.log_floor)
        self.phase_loss = PhaseDerivativeLoss(config.n_fft, config.hop_length)
        self.mel_distance = MelDistance(config.sample_rate)
        self.mel_distance_audible = MelDistance(config.sample_rate, floor=TRAIN_LOG_FLOOR)
        self.cond = torch.tensor([0])

        all_clips = clips if clips is not None else load_clips(data_path)
        train, heldout = split_heldout(all_clips, settings.eval_clips, state["eval_ids"] if state else None)
        if not train:
            raise LLMVoXError("codec training: every clip is held out for evaluation; add data")
        self.eval_clips = heldout
        # Whole code frames only: a partial last frame would be decoded from reflection padding.
        hop = config.hop_length
        segment = max(int(round(settings.segment_seconds * config.sample_rate / hop)), 1) * hop
        self.data = CropDataset(train, config.sample_rate, segment, settings.seed)
        if self.semantic is not None:
            missing = [c.id for c in train if c.id not in self.semantic]
            if missing:
                raise LLMVoXError(f"{settings.semantic_dir} lacks Whisper features for {len(missing)} training clips "
                                  f"(e.g. {missing[:3]}); run `llmvox codec semantic` on this dataset")

        self.step = 0
        self.best_mel = math.inf
        self.last_milestone_mel = math.inf
        if state is None and init_weights is not None:
            self._load_weights(Path(init_weights))
            if settings.reinit_codebook:
                self.codebook.mark_uninitialised()
        elif state is None:
            self.codebook.mark_uninitialised()
            if settings.latent_init_std > 0:
                self._scale_encoder_output(settings.latent_init_std)
        else:
            self._load_state(state)
            if phase_switch:
                self._freeze_codes()

    def _load_weights(self, folder: Path) -> None:
        """Start from a milestone export (codec.safetensors + config.json): a committed milestone lets a
        fresh machine continue where the optimiser state was lost."""
        from safetensors.torch import load_file

        config_file, weights = folder / "config.json", folder / "codec.safetensors"
        if not config_file.is_file() or not weights.is_file():
            raise LLMVoXError(f"--init_weights: {folder} needs config.json and codec.safetensors (a milestone export)")
        saved = CodecConfig.from_dict(json.loads(config_file.read_text())["codec"])
        if saved.to_dict() != self.config.to_dict():
            raise LLMVoXError(f"--init_weights: {folder} was trained with other codec sizes than --config")
        tensors = {k: v.float() for k, v in load_file(str(weights)).items()}
        missing, unexpected = self.model.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise LLMVoXError(f"--init_weights: {folder} does not match the model "
                              f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")

    def _freeze_codes(self) -> None:
        """Start of phase B: export the encoder + codebook that tokenise the corpus from now on.

        Code assignment is fragile: rounding the encoder to float16 changes ~15% of the codes of
        this codec (measured), so milestones keep the encoder and codebook in float32 (see
        `export_milestone`) and the checkpoint written at the end of phase A, the `phaseA_final`
        export and every phase-B export all produce the same codes.
        """
        metrics = {"step": self.step}
        for name in ("phaseA_final", "latest_phaseA"):
            path = self.export_milestone(name, metrics, phase="A")
        log.info("phase B: encoder and codebook frozen; tokenise with %s (codes fingerprint %s)",
                 path.with_name("phaseA_final"), self.codes_fingerprint())

    def codes_fingerprint(self) -> str:
        """A short hash of the encoder + codebook: equal fingerprints mean equal codes."""
        import hashlib

        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            if name.startswith("encoder.") or name == "quantizer.embed":
                digest.update(name.encode())
                digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    # --- construction helpers --------------------------------------------------------------

    def _build_discriminators(self) -> None:
        from llmvox.train.discriminators import CodecDiscriminators

        self.disc = CodecDiscriminators()
        self.disc_optimizer = torch.optim.AdamW(self.disc.parameters(), lr=self.settings.disc_learning_rate,
                                                betas=(0.8, 0.99))

    def _load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        if (self.semantic_head is not None) != (state.get("semantic_head") is not None):
            raise LLMVoXError("semantic distillation can only be switched on or off at the start of a run: "
                              "start a new --out_dir with --init_weights from a milestone")
        if self.semantic_head is not None:
            self.semantic_head.load_state_dict(state["semantic_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # settings may have changed on resume
            group["betas"] = self.settings.betas
        if self.disc is not None and state.get("disc") is not None:
            self.disc.load_state_dict(state["disc"])
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        self.step = int(state["step"])
        self.best_mel = float(state.get("best_audible_mel", math.inf))
        self.last_milestone_mel = float(state.get("last_milestone_audible_mel", math.inf))
        torch.set_rng_state(state["torch_rng"])
        self.codebook.center = state.get("codebook_center")
        self.codebook.anchor = state.get("codebook_anchor")

    # --- one step ----------------------------------------------------------------------------

    def forward(self, audio: Tensor, *, update_codebook: bool) -> StepOutput:
        s = self.settings
        frozen = s.freeze_encoder
        quantise = frozen or self.step >= s.vq_warmup_steps
        if quantise and not self.codebook.initialised:
            self._kmeans_init()  # before the encoder runs: it may rescale the encoder (see _match_latent_scale)
        # A frozen encoder runs in float32, exactly as tokenisation will run it, so the backbone
        # learns to decode the very codes the exported codec produces.
        with _autocast(s.bf16 and s.encoder_bf16 and not frozen), \
                (torch.no_grad() if frozen else contextlib.nullcontext()):
            latents = self.model.encoder(audio[:, None]).float()
        if self.step < s.vq_warmup_steps and not frozen:
            features, codes, commit = latents, None, latents.new_zeros(())
        else:
            if update_codebook and not frozen and s.track_latent_mean:
                self.codebook.recenter(latents.detach().mean(dim=(0, 2)))
            features, codes, commit = quantize_for_training(self.model, latents)
            if s.track_latent_mean:
                commit = commit + self.codebook.anchor_loss(latents)
            if update_codebook and not frozen:
                flat = latents.detach().transpose(1, 2).reshape(-1, latents.shape[1])
                self.last_reseeded = self.codebook.update(flat, codes.reshape(-1))
        with _autocast(s.bf16):
            hidden = self.model.backbone(features, self.cond)
        audio_hat = self.model.head(hidden.float())[:, : audio.shape[1]]
        return StepOutput(audio_hat, latents, features, codes, commit)

    @torch.no_grad()
    def _scale_encoder_output(self, target: float) -> None:
        """Rescale the encoder's last conv so latents vary over time with std `target`.

        A fresh SEANet encoder emits latents whose frame-to-frame spread is ~1e-3, smaller than
        one optimiser step moves them; every code assignment then collapses onto one codebook row.
        Scaling the output (the gain `weight_g` and bias of the last conv) makes the spread large
        compared with early parameter updates without changing the architecture.
        """
        last = self.model.encoder.model[-1].conv
        audio = self.data.batch(0, self.settings.batch_size, stream=2)
        latents = self.model.encoder(audio[:, None])
        spread = float(latents.std(dim=2).mean())
        if spread > 0:
            factor = target / spread
            last.weight_g.mul_(factor)
            last.bias.mul_(factor)
            log.info("encoder output scaled by %.1f (latent spread %.2e -> %.2f)", factor, spread, target)

    @torch.no_grad()
    def _match_latent_scale(self, target: float) -> None:
        """Bring the latents' spread back to `target` before quantisation starts, without changing the
        decoder's output: the encoder's last conv is divided by f, the backbone's input conv (and the
        semantic probe) multiplied by f, and their optimiser moments reset.

        Unquantised (VQ warm-up) latents grow freely, ~10^4-fold in 1,000 steps (measured); at that
        scale the first commitment losses are ~10^4 and the codebook collapses to 1-4 codes."""
        audio = self.data.batch(self.step, self.settings.batch_size, stream=3)
        spread = float(self.model.encoder(audio[:, None]).std(dim=2).mean())
        if not (spread > 4 * target or 0 < spread < target / 4):
            return
        f = spread / target
        last = self.model.encoder.model[-1].conv
        changed = [last.weight_g, last.bias, self.model.backbone.embed.weight]
        last.weight_g.div_(f)
        last.bias.div_(f)
        self.model.backbone.embed.weight.mul_(f)
        if self.semantic_head is not None:
            self.semantic_head.weight.mul_(f)
            changed.append(self.semantic_head.weight)
        for param in changed:
            self.optimizer.state.pop(param, None)
        log.info("latents rescaled by 1/%.1f before quantisation (spread %.3g -> %.3g)", f, spread, target)

    @torch.no_grad()
    def _kmeans_init(self) -> None:
        """k-means over the encoder outputs of a few training batches (deterministic in the step)."""
        s = self.settings
        if s.latent_init_std > 0:
            self._match_latent_scale(s.latent_init_std)
        pool = []
        for i in range(s.kmeans_init_batches):
            audio = self.data.batch(self.step * 1000 + i, s.batch_size, stream=1)
            with _autocast(s.bf16 and s.encoder_bf16):
                latents = self.model.encoder(audio[:, None]).float()
            pool.append(latents.transpose(1, 2).reshape(-1, latents.shape[1]))
        vectors = torch.cat(pool)
        frames = vectors.shape[0] // max(s.kmeans_init_batches, 1)
        gen = torch.Generator().manual_seed(s.seed * 1000003 + self.step)
        self.codebook.kmeans_init(vectors, s.kmeans_iters, frames, generator=gen)
        log.info("codebook initialised by k-means on %d vectors (%d codes)", vectors.shape[0], self.codebook.size)

    def train_step(self) -> dict[str, float]:
        """One optimiser step (and one discriminator step when adversarial); returns scalar logs."""
        s = self.settings
        self.model.train()
        self.last_reseeded = 0
        lr = s.learning_rate * lr_factor(self.step, s)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * (s.encoder_lr_scale if group["name"].startswith("enc") else 1.0)
        audio, crops = self.data.batch_with_crops(self.step, s.batch_size)
        out = self.forward(audio, update_codebook=True)
        logs: dict[str, float] = {}

        if self.disc is not None:
            disc_lr = s.disc_learning_rate * lr_factor(self.step, s)
            for group in self.disc_optimizer.param_groups:
                group["lr"] = disc_lr
            real_scores, _ = self.disc(audio)  # float32: faster than bf16 for these narrow convs
            fake_scores, _ = self.disc(out.audio_hat.detach())
            d_loss = discriminator_hinge_loss(real_scores, fake_scores)
            self.disc_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(self.disc.parameters(), s.grad_clip)
            self.disc_optimizer.step()
            logs["disc"] = float(d_loss.detach())

        mel = self.mel_loss(out.audio_hat, audio)
        stft = self.stft_loss(out.audio_hat, audio)
        loss = s.mel_weight * mel + s.stft_weight * stft
        if s.phase_weight > 0:
            phase = self.phase_loss(out.audio_hat, audio)
            loss = loss + s.phase_weight * phase
            logs["phase"] = float(phase.detach())
        if not s.freeze_encoder:
            loss = loss + s.commit_weight * out.commit
            if self.semantic_head is not None:
                semantic = self.semantic_loss(out.features, crops)
                loss = loss + s.semantic_weight * semantic
                logs["semantic"] = float(semantic.detach())
        if self.disc is not None:
            with torch.no_grad():
                _, real_maps = self.disc(audio)
            fake_scores, fake_maps = self.disc(out.audio_hat)
            gen = generator_hinge_loss(fake_scores)
            fm = feature_matching_loss(real_maps, fake_maps)
            loss = loss + s.adv_weight * gen + s.fm_weight * fm
            logs.update(gen=float(gen.detach()), fm=float(fm.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
        self.optimizer.step()
        self.step += 1
        logs.update(loss=float(loss.detach()), mel=float(mel.detach()), stft=float(stft.detach()),
                    commit=float(out.commit.detach()),
                    grad_norm=float(grad_norm), lr=lr, reseeded=float(self.last_reseeded))
        if out.codes is not None:
            logs["batch_perplexity"] = codebook_perplexity(torch.bincount(out.codes.reshape(-1),
                                                                          minlength=self.codebook.size))
        return logs

    def semantic_loss(self, features: Tensor, crops: list[tuple[str, float]]) -> Tensor:
        """Mean cosine distance between the probe's prediction from `features` (B, D, T) and the
        Whisper features of the same crops, over frames inside their clips."""
        frames = features.shape[-1]
        rate = self.config.sample_rate / self.config.hop_length
        target = torch.from_numpy(np.stack([self.semantic.window(clip_id, start, frames, rate)
                                            for clip_id, start in crops]))
        predicted = self.semantic_head(features).transpose(1, 2)
        inside = target.abs().sum(dim=-1) > 0
        if not bool(inside.any()):
            return predicted.new_zeros(())
        return (1 - F.cosine_similarity(predicted, target, dim=-1))[inside].mean()

    # --- evaluation ----------------------------------------------------------------------------

    @torch.no_grad()
    def reconstruction_loss(self, audio: Tensor) -> float:
        """Weighted mel + STFT loss of (B, N) audio in training precision, without touching any state."""
        was_training = self.model.training
        self.model.eval()
        s = self.settings
        with _autocast(s.bf16 and s.encoder_bf16):
            latents = self.model.encoder(audio[:, None]).float()
        features = self.model.quantizer.lookup(self.model.quantizer.nearest(latents)) \
            if self.codebook.initialised else latents
        with _autocast(s.bf16):
            hidden = self.model.backbone(features, self.cond)
        audio_hat = self.model.head(hidden.float())[:, : audio.shape[1]]
        self.model.train(was_training)
        return float(s.mel_weight * self.mel_loss(audio_hat, audio) + s.stft_weight * self.stft_loss(audio_hat, audio))

    @torch.no_grad()
    def evaluate(self) -> EvalResult:
        """Copy-synthesis of the held-out clips in inference mode (float32, like tokenisation)."""
        start = time.time()
        self.model.eval()
        distances, audible, semantic, counts = [], [], [], torch.zeros(self.codebook.size)
        for clip in self.eval_clips:
            audio = torch.from_numpy(read_clip(clip, self.config.sample_rate, self.settings.eval_max_seconds))[None]
            if self.codebook.initialised:
                features, codes = self.model.encode_with_features(audio)
                counts += torch.bincount(codes.reshape(-1), minlength=self.codebook.size).float()
            else:
                features = self.model.encoder(audio[:, None])
            audio_hat = self.model.decode(features)[:, : audio.shape[1]]
            distances.append(float(self.mel_distance(audio_hat, audio)))
            audible.append(float(self.mel_distance_audible(audio_hat, audio)))
            if self.semantic_head is not None:
                semantic.append(float(self.semantic_loss(features, [(clip.id, 0.0)])))
        self.model.train()
        extra = {"mel_distance_audible": float(np.mean(audible)) if audible else float("nan")}
        if semantic:
            extra["semantic_distance"] = float(np.mean(semantic))
        return EvalResult(
            step=self.step,
            mel_distance=float(np.mean(distances)) if distances else float("nan"),
            perplexity=codebook_perplexity(counts),
            codes_used=int((counts > 0).sum()),
            train_usage_perplexity=self.codebook.usage_perplexity(),
            seconds=time.time() - start,
            extra=extra,
        )

    # --- saving ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "disc": self.disc.state_dict() if self.disc is not None else None,
            "disc_optimizer": self.disc_optimizer.state_dict() if self.disc_optimizer is not None else None,
            "codec_config": self.config.to_dict(),
            "settings": self.settings.to_dict(),
            "eval_ids": [c.id for c in self.eval_clips],
            "best_audible_mel": self.best_mel,
            "last_milestone_audible_mel": self.last_milestone_mel,
            "torch_rng": torch.get_rng_state(),
            "codebook_center": self.codebook.center,
            "codebook_anchor": self.codebook.anchor,
            "semantic_head": self.semantic_head.state_dict() if self.semantic_head is not None else None,
        }

    def save(self) -> None:
        """Full state (atomic) + the original-layout checkpoint and YAML for loading."""
        from llmvox.codec.checkpoint import save_lightning_checkpoint

        self.out_dir.mkdir(parents=True, exist_ok=True)
        _atomic_torch_save(self.state_dict(), self.out_dir / STATE_FILE)
        doc = full_yaml(self.config, self.settings, self.data_path)
        _atomic_write_text(self.out_dir / CONFIG_FILE, _yaml_dump(doc))
        tmp = self.out_dir / f".{CKPT_FILE}.{os.getpid()}.tmp"
        save_lightning_checkpoint(self.model, tmp, doc)
        os.replace(tmp, self.out_dir / CKPT_FILE)

    def export_milestone(self, name: str, metrics: dict[str, Any], phase: str | None = None) -> Path:
        """Inference-only copy + config.json, loadable as a codec bundle.

        Backbone and head are stored at `milestone_dtype`; encoder and codebook in float32.
        """
        from safetensors.torch import save_file

        from llmvox.bundle import BUNDLE_FORMAT, BUNDLE_VERSION
        from llmvox.codec.checkpoint import codec_state_for_bundle

        dtype = getattr(torch, self.settings.milestone_dtype)
        folder = self.out_dir / MILESTONES / name
        tmp = folder.with_name(f".{name}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        # Encoder and codebook stay float32: they decide the codes, and rounding them moves codes.
        tensors = {k: (v.to(dtype) if v.is_floating_point() and not k.startswith(("encoder.", "quantizer."))
                       else v).contiguous()
                   for k, v in codec_state_for_bundle(self.model).items()}
        save_file(tensors, str(tmp / "codec.safetensors"))
        (tmp / "codec.safetensors").chmod(0o644)  # safetensors writes 0600
        config = {
            "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "kind": "codec-only",
            "sample_rate": self.config.sample_rate, "codec": self.config.to_dict(),
            "storage_dtype": f"{self.settings.milestone_dtype} (backbone, head); float32 (encoder, codebook)",
            "step": self.step,
            "phase": phase or ("B" if self.settings.freeze_encoder else "A"),
            "codes_fingerprint": self.codes_fingerprint(),
            "metrics": metrics, "training": self.settings.to_dict(),
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        _atomic_write_text(tmp / CONFIG_FILE, _yaml_dump(full_yaml(self.config, self.settings, self.data_path)))
        if folder.exists():
            import shutil

            old = folder.with_name(f".{name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)
        return folder

    # --- the loop ------------------------------------------------------------------------------

    def _append(self, name: str, record: dict[str, Any]) -> None:
        with open(self.out_dir / name, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _after_eval(self, result: EvalResult) -> None:
        record = asdict(result)
        record["phase"] = "B" if self.settings.freeze_encoder else "A"
        self._append(EVAL_LOG, record)
        # Milestones follow the audible mel distance: the 1e-7-floor one is dominated by digital silence.
        score = result.extra["mel_distance_audible"]
        self.best_mel = min(self.best_mel, score)
        improved = score <= self.last_milestone_mel * (1 - self.settings.milestone_improvement)
        if improved and self.codebook.initialised:
            self.last_milestone_mel = score
            metrics = {k: v for k, v in record.items() if isinstance(v, (int, float))}
            path = self.export_milestone(f"step_{self.step:07d}", metrics)
            latest = "latest_phaseB" if self.settings.freeze_encoder else "latest_phaseA"
            self.export_milestone(latest, metrics)
            log.info("milestone exported: %s (audible mel %.4f)", path, score)

    def fit(self, stop_at: int | None = None, on_log: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Train until `max_steps` (or `stop_at`), saving every `save_every` steps and at the end."""
        from tqdm import tqdm

        s = self.settings
        self.out_dir.mkdir(parents=True, exist_ok=True)
        end = s.max_steps if stop_at is None else min(stop_at, s.max_steps)
        bar = tqdm(total=end, initial=self.step, disable=not self.progress, dynamic_ncols=True,
                   mininterval=1.0 if sys.stderr.isatty() else 60.0, desc="codec")
        tic, tic_step = time.time(), self.step
        try:
            while self.step < end:
                logs = self.train_step()
                bar.update(1)
                if self.step % s.log_every == 0 or self.step == end:
                    rate = (self.step - tic_step) / max(time.time() - tic, 1e-9)
                    record = {"step": self.step, **{k: round(v, 6) for k, v in logs.items()},
                              "steps_per_s": round(rate, 4), "time": round(time.time(), 1)}
                    self._append(TRAIN_LOG, record)
                    bar.set_postfix(loss=f"{logs['loss']:.3f}", mel=f"{logs['mel']:.3f}",
                                    ppl=f"{logs.get('batch_perplexity', 0):.0f}")
                    if on_log:
                        on_log(record)
                    tic, tic_step = time.time(), self.step
                if self.step % s.eval_every == 0 and self.eval_clips:
                    result = self.evaluate()
                    self._after_eval(result)
                    bar.write(f"eval step {result.step}: mel {result.mel_distance:.4f} (audible "
                              f"{result.extra['mel_distance_audible']:.4f})  perplexity "
                              f"{result.perplexity:.0f} ({result.codes_used} codes used)  train usage "
                              f"perplexity {result.train_usage_perplexity:.0f}")
                if s.export_every and self.step % s.export_every == 0:
                    # unconditional exports: intelligibility (WER by step) is measured on these
                    self.export_milestone(f"step_{self.step:07d}", {"step": self.step})
                if self.step % s.save_every == 0:
                    self.save()
        finally:
            bar.close()
        self.save()


# ============================================================================================
# Small helpers
# ============================================================================================


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _yaml_dump(doc: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(copy.deepcopy(doc), sort_keys=False)


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Records of a JSONL log (tolerates a truncated last line)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            with contextlib.suppress(json.JSONDecodeError):
                yield json.loads(line)
