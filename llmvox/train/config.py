"""The decoder trainer's settings: one dataclass whose field names are the CLI flags, and its checks.

Kept apart so the CLI can build flags from `TrainConfig` and a run can be refused before anything
heavy (a codec, a data set, a process group) is loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from llmvox.errors import LLMVoXError
from llmvox.text.frontend import FRONTENDS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TrainConfig:
    """Every setting of a run; field names are the original flag names where one exists."""

    # data
    data_path: str | None = None
    cache_dir: str | None = None
    speech_data_folder: str | None = None
    on_error: str = "skip"
    val_fraction: float = 0.02
    # codec (to tokenise, to check the cache, to export a bundle)
    wav_config_path: str | None = None
    wav_model_path: str | None = None
    bundle: str | None = None
    # model
    n_layer: int = 4
    n_head: int = 8
    n_embd: int = 768
    block_size: int = 8192
    bias: bool = False
    dropout: float = 0.0
    init_text_table: str = "random"
    encoder_model_path: str | None = None
    tokenizer_path: str | None = None
    freeze_text_table: bool | None = None  # None: frozen when it comes from a T5 model (the original)
    # run
    out_dir: str = "out"
    checkpoint_filename: str = "ckpt.pt"
    init_from: str = "scratch"
    overwrite: bool = False
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "auto"
    compile: bool = False
    seed: int = 1337
    num_threads: int | None = None
    # optimisation
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 3e-4
    max_iters: int = 5000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    decay_lr: bool = True
    warmup_iters: int = 100
    lr_decay_iters: int | None = None
    min_lr: float = 3e-6
    max_seq_len: int | None = None
    max_codes: int | None = None
    bucket_window: int = 64
    guided_attn_heads: str | None = None  # 'LAYER.HEAD,...': heads taught to read the text in order
    guided_attn_weight: float = 1.0
    guided_attn_sigma: float = 0.2
    phoneme_ctc_weight: float = 0.0  # > 0: a training-only CTC head must spell the teacher's phonemes
    phoneme_ctc_layer: int | None = None  # whose hidden states it reads (default: the middle layer)
    phoneme_ctc_after_text: bool = False  # the head reads only the steps after the text (no copying)
    phoneme_ctc_head_warmup: int = 0  # a warm start without a head: fit it alone for N steps first
    text_frontend: str = "byt5"  # how the decoder reads its text: byt5 (bytes, the original) or phonemes
    # evaluation, checkpoints, logs
    eval_interval: int = 500
    eval_iters: int = 20
    log_interval: int = 10
    eval_only: bool = False
    always_save_checkpoint: bool = False
    wandb_log: bool = False
    wandb_project: str = "llmvox"
    wandb_run_name: str | None = None
    wandb_mode: str = "offline"
    tensorboard_log: bool = False
    progress: bool = True
    export_bundle: str | None = None
    export_dtype: str = "float32"
    # accepted for compatibility with the original flags; unused
    dataset: str | None = None
    is_train: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate_config(cfg: TrainConfig) -> None:
    """Raise LLMVoXError for the first bad setting (in flag order: sizes, ranges, choices, aux losses)."""
    _check_sizes(cfg)
    _check_choices(cfg)
    _check_auxiliary_losses(cfg)
    if not cfg.data_path:
        raise LLMVoXError("--data_path is required (a dataset JSON or a tokenised cache folder)")
    parse_text_table_source(cfg)


def _check_sizes(cfg: TrainConfig) -> None:
    positive = {"batch_size": cfg.batch_size, "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
                "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd, "block_size": cfg.block_size,
                "bucket_window": cfg.bucket_window}
    for name, value in positive.items():
        if value < 1:
            raise LLMVoXError(f"--{name} must be at least 1, got {value}")
    if cfg.max_iters < 0:
        raise LLMVoXError("--max_iters must be >= 0")
    if cfg.max_codes is not None and cfg.max_codes < 1:
        raise LLMVoXError("--max_codes must be at least 1")
    if cfg.max_seq_len is not None and cfg.max_seq_len < 2:
        raise LLMVoXError("--max_seq_len must be at least 2")
    if not 0 <= cfg.val_fraction < 1:
        raise LLMVoXError("--val_fraction must be in [0, 1)")


def _check_choices(cfg: TrainConfig) -> None:
    if cfg.dtype not in ("auto", *DTYPES):
        raise LLMVoXError(f"--dtype must be auto, {', '.join(DTYPES)}; got {cfg.dtype!r}")
    if cfg.export_dtype not in DTYPES:
        raise LLMVoXError(f"--export_dtype must be one of {', '.join(DTYPES)}")
    if cfg.on_error not in ("skip", "fail"):
        raise LLMVoXError("--on_error must be skip or fail")
    if cfg.init_from.startswith("gpt2"):
        raise LLMVoXError("--init_from gpt2* is not supported (GPT-2 weights do not fit a speech decoder); "
                          "use scratch, resume or a checkpoint path")
    if not 0 <= cfg.dropout < 1:
        raise LLMVoXError("--dropout must be in [0, 1)")
    if cfg.learning_rate <= 0:
        raise LLMVoXError("--learning_rate must be positive")


def _check_auxiliary_losses(cfg: TrainConfig) -> None:
    if cfg.guided_attn_heads:
        if cfg.guided_attn_weight < 0 or cfg.guided_attn_sigma <= 0:
            raise LLMVoXError("--guided_attn_weight must be >= 0 and --guided_attn_sigma > 0")
        if cfg.compile:
            raise LLMVoXError("--guided_attn_heads does not work with --compile (its hooks would be compiled away)")
    if cfg.text_frontend not in FRONTENDS:
        raise LLMVoXError(f"--text_frontend must be one of {', '.join(FRONTENDS)} (got {cfg.text_frontend!r})")
    if cfg.phoneme_ctc_weight < 0:
        raise LLMVoXError("--phoneme_ctc_weight must be >= 0")
    if cfg.phoneme_ctc_after_text and cfg.phoneme_ctc_weight <= 0:
        raise LLMVoXError("--phoneme_ctc_after_text needs the phoneme CTC target (--phoneme_ctc_weight > 0)")
    if cfg.phoneme_ctc_head_warmup < 0:
        raise LLMVoXError("--phoneme_ctc_head_warmup must be >= 0")
    if cfg.phoneme_ctc_head_warmup and cfg.phoneme_ctc_weight <= 0:
        raise LLMVoXError("--phoneme_ctc_head_warmup needs the phoneme CTC target (--phoneme_ctc_weight > 0)")
    if cfg.phoneme_ctc_weight > 0 and cfg.compile:
        raise LLMVoXError("--phoneme_ctc_weight does not work with --compile (its hook would be compiled away)")


def parse_text_table_source(cfg: TrainConfig) -> tuple[str, str | None]:
    """('random', None) or ('t5', folder) from --init_text_table / --encoder_model_path."""
    spec = cfg.init_text_table or "random"
    if spec == "random":
        if cfg.encoder_model_path:
            return "t5", cfg.encoder_model_path
        return "random", None
    if spec.startswith("t5:") and len(spec) > 3:
        return "t5", spec[3:]
    raise LLMVoXError(f"--init_text_table must be 'random' or 't5:PATH', got {spec!r}")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """--dtype auto: bf16 (or fp16) on CUDA; bf16 on CPUs that run it natively; float32 otherwise."""
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # CPUs with AVX-512 BF16 / AMX train ~3x faster under bf16 autocast; others gain nothing
    with contextlib.suppress(Exception):
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return torch.bfloat16
    return torch.float32
