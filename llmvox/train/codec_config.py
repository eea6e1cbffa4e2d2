"""The settings of a codec training run, and their mapping to and from the original WavTokenizer YAML.

A run is described twice: by `CodecTrainSettings` (what the trainer reads) and by an original-schema
YAML (what the original code, and our loader, read next to the checkpoint). Both directions live
here so that a key added to one is easy to see missing from the other. The model sizes themselves
are `CodecConfig`'s business (`llmvox.codec.config`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from llmvox.codec.config import CodecConfig
from llmvox.errors import LLMVoXError
from llmvox.train.losses import TRAIN_LOG_FLOOR


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
