"""The LLMVoX decoder trainer: the original recipe, made resumable, distributed and CPU-friendly.

What it keeps from the original `train.py` (so results and checkpoints mean the same thing):
- step semantics (see `llmvox.train.batching`): text padded with PAD to the audio length, inputs
  [no code, codes], targets codes + EOA, cross-entropy ignoring padding (-1000), averaged per
  micro-batch and divided by the accumulation steps;
- AdamW (betas 0.9/0.95, eps 1e-5) with the nanoGPT decay groups: GPT tensors of 2+ dims decay,
  1-dim ones (LayerNorm weights, biases) do not;
- linear warmup from 0 then cosine decay to `min_lr` at `lr_decay_iters`; gradient clipping;
- `gradient_accumulation_steps` is the total over all processes (each of W ranks does 1/W of it);
- checkpoints: a `torch.save` dict with `model`, `model_args`, `iter_num`, `optimizer`, `config`.

What it adds:
- the text embedding table is part of the trained model (our voices learn it: no ByT5 weights
  offline); it is stored under the extra key `text_embedding` and sits in the no-decay group, because
  after the L2 normalisation of [text, code] decay would only shift weight from text to code;
- a tokenised cache instead of re-encoding audio in every batch; length-bucketed batches;
- exact resume: RNG states of every rank and the data position (`train_state`) are saved, and the
  data order is a pure function of the seed, so an interrupted run continues bit for bit;
- bf16/fp16 autocast on CPU as well as CUDA; DDP over gloo (CPU) or nccl (CUDA) under torchrun;
- held-out eval loss; tqdm, TensorBoard and W&B logging; SIGINT/SIGTERM save a checkpoint and stop.

`max_iters` is the number of optimizer steps: the run stops with `iter_num == max_iters` (the
original took one extra step). A checkpoint's `iter_num` counts completed steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmvox.errors import LLMVoXError
from llmvox.model.gpt import GPT, GPTConfig
from llmvox.model.speech_decoder import SpeechDecoder
from llmvox.text.frontend import FRONTENDS, TextFrontend, frontend_from_config, new_frontend
from llmvox.text.tokenizer import PAD_ID, SENTENCE_END_ID, TEXT_VOCAB_SIZE
from llmvox.train.alignment import GuidedAttention, parse_heads
from llmvox.train.batching import (
    IGNORE_INDEX,
    Batch,
    BucketSampler,
    fixed_batches,
    make_batch,
    sequence_lengths,
)
from llmvox.train.phonemes import PHONEME_TABLE_FILE, PhonemeCTC, phoneme_table
from llmvox.train.text_ids import TEXT_IDS_FILE, FrontendCache

log = logging.getLogger("llmvox.train")

ADAM_EPS = 1e-5  # the original's AdamW eps
CHECKPOINT_VERSION = 1
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


@dataclass
class TrainResult:
    iter_num: int
    checkpoint: Path
    losses: list[tuple[int, float]] = field(default_factory=list)  # (iteration, train loss) at log steps
    val_loss: float | None = None
    interrupted: bool = False
    bundle: Path | None = None


# ------------------------------------------------------------------------------------------------
# small pieces (also used by the benchmark)
# ------------------------------------------------------------------------------------------------


def get_lr(it: int, *, learning_rate: float, warmup_iters: int, lr_decay_iters: int, min_lr: float,
           decay_lr: bool = True) -> float:
    """The original schedule: linear warmup from 0, cosine to min_lr at lr_decay_iters, then flat."""
    if not decay_lr:
        return learning_rate
    if it < warmup_iters:
        return learning_rate * it / warmup_iters
    if it > lr_decay_iters:
        return min_lr
    span = max(1, lr_decay_iters - warmup_iters)
    ratio = (it - warmup_iters) / span
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


def make_optimizer(decoder: SpeechDecoder, *, learning_rate: float, weight_decay: float,
                   betas: tuple[float, float], device_type: str) -> torch.optim.AdamW:
    """AdamW with the original groups (GPT: 2+ dims decay), the text table (if trained) undecayed."""
    decay = [p for p in decoder.gpt.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in decoder.gpt.parameters() if p.requires_grad and p.dim() < 2]
    if decoder.text_embedding.weight.requires_grad:
        no_decay.append(decoder.text_embedding.weight)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if device_type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=ADAM_EPS, **extra)


def autocast_context(device_type: str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def micro_batch_loss(model: nn.Module, batch: Batch, ctx: contextlib.AbstractContextManager) -> torch.Tensor:
    """Mean cross-entropy over the batch's real (non-padding) steps."""
    with ctx:
        logits = model(batch.text_ids, batch.prev_codes)
    return F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE_INDEX)


class AuxiliaryLoss(Protocol):
    """A training-only loss computed from what a forward pass recorded (GuidedAttention, PhonemeCTC)."""

    name: str  # its key in the training log
    weight: float
    last: float | None

    def recording(self) -> contextlib.AbstractContextManager: ...

    def batch_loss(self, batch: Batch) -> torch.Tensor: ...


def optimizer_step(model: nn.Module, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, batches: list[Batch], ctx: contextlib.AbstractContextManager,
                   grad_clip: float, aux: Sequence[AuxiliaryLoss] = (),
                   aux_optimizers: Sequence[torch.optim.Optimizer] = ()) -> float:
    """One optimizer step over `batches` (gradient accumulation); returns the mean micro-batch loss.

    With a DDP `model`, gradients are synchronised on the last micro-batch only. Each `aux` loss
    (guided attention, phoneme CTC) adds its weighted value to the gradient; the returned loss stays
    the cross-entropy and each keeps its own mean in `.last`. `aux_optimizers` train the aux losses'
    own parameters (outside the DDP module: their gradients are averaged here).
    """
    total = torch.zeros(())
    extras = [torch.zeros(()) for _ in aux]
    n = len(batches)
    for i, batch in enumerate(batches):
        sync = i == n - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            with contextlib.ExitStack() as recording:
                for a in aux:
                    recording.enter_context(a.recording())
                loss = micro_batch_loss(model, batch, ctx)
            objective = loss
            for k, a in enumerate(aux):
                with ctx:
                    extra = a.batch_loss(batch)
                objective = objective + a.weight * extra
                extras[k] += extra.detach().float().cpu()
            scaler.scale(objective / n).backward()
        total += loss.detach().float().cpu()
    for a, extra in zip(aux, extras, strict=True):
        a.last = float(extra) / n
    aux_params = [p for o in aux_optimizers for g in o.param_groups for p in g["params"]]
    _average_over_processes(aux_params)
    if grad_clip:
        for o in (optimizer, *aux_optimizers):
            scaler.unscale_(o)
        torch.nn.utils.clip_grad_norm_([*params, *aux_params], grad_clip)
    for o in (optimizer, *aux_optimizers):
        scaler.step(o)
        o.zero_grad(set_to_none=True)
    scaler.update()
    return float(total) / n


def _average_over_processes(params: list[nn.Parameter]) -> None:
    import torch.distributed as dist

    if not params or not (dist.is_available() and dist.is_initialized()):
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= dist.get_world_size()


def random_text_table(rows: int, dim: int, target_norm: float, seed: int) -> torch.Tensor:
    """Random rows scaled to `target_norm` (the codebook's mean row norm): after the L2 normalisation
    of [text, code], text and code then start with equal weight."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(rows, dim, generator=g)
    return table * (target_norm / table.norm(dim=1, keepdim=True).clamp_min(1e-8))


def is_validation_id(utt_id: str, fraction: float) -> bool:
    """A stable held-out split by id hash: growing the data set never moves an id between splits."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha1(f"llmvox-val:{utt_id}".encode()).digest()[:8], "big")
    return (h % 1_000_000) < fraction * 1_000_000


def load_codec_source(wav_config_path: str | None, wav_model_path: str | None, bundle: str | None):
    """The codec named by the original paths or a bundle; None when nothing is given."""
    if bundle:
        if wav_config_path or wav_model_path:
            raise LLMVoXError("give either --bundle or --wav_config_path/--wav_model_path, not both")
        from safetensors.torch import load_file

        from llmvox.bundle import read_bundle_config
        from llmvox.codec.checkpoint import wavtokenizer_from_bundle

        config = read_bundle_config(bundle)
        weights = Path(bundle) / "codec.safetensors"
        if "codec" not in config or not weights.is_file():
            raise LLMVoXError(f"bundle {bundle} has no codec (config 'codec' section and codec.safetensors)")
        try:
            tensors = load_file(str(weights))
        except Exception as exc:  # safetensors raises its own types for corrupt headers
            raise LLMVoXError(f"{weights} is not a readable safetensors file: {exc}") from None
        return wavtokenizer_from_bundle(config["codec"], {k: v.float() for k, v in tensors.items()}), \
            f"bundle {bundle}"
    if wav_config_path or wav_model_path:
        if not (wav_config_path and wav_model_path):
            raise LLMVoXError("give both --wav_config_path and --wav_model_path")
        from llmvox.codec.checkpoint import load_wavtokenizer

        return load_wavtokenizer(wav_config_path, wav_model_path), f"{wav_config_path} + {wav_model_path}"
    return None, None


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


# ------------------------------------------------------------------------------------------------
# distributed setup
# ------------------------------------------------------------------------------------------------


@dataclass
class DistEnv:
    ddp: bool
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def master(self) -> bool:
        return self.rank == 0


def resolve_train_device(name: str, local_rank: int = 0) -> torch.device:
    if name in ("", "auto"):
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    from llmvox.device import resolve_device

    dev = resolve_device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def setup_distributed(cfg: TrainConfig) -> DistEnv:
    """DDP when torchrun set WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA unless --backend says)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv(False, 0, 0, 1, resolve_train_device(cfg.device))
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_train_device(cfg.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = cfg.backend if cfg.backend not in ("", "auto") else ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        # long timeout: rank 0 may tokenise a data set while the others wait
        dist.init_process_group(backend=backend, timeout=timedelta(hours=6))
    return DistEnv(True, rank, local_rank, world, device)


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def read_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A trainer checkpoint, or a bundle folder as one (weights and text table only: a warm start from a
    committed milestone when the full checkpoint with its optimizer state is gone)."""
    from llmvox.bundle import is_bundle
    from llmvox.model.checkpoint import read_torch_file

    if is_bundle(path):
        return _bundle_as_checkpoint(Path(path))
    ckpt = read_torch_file(path, "training checkpoint")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise LLMVoXError(f"{path} is not an LLMVoX checkpoint (expected a dict with 'model' and 'model_args')")
    return ckpt


def _bundle_as_checkpoint(folder: Path) -> dict[str, Any]:
    from llmvox.bundle import TEXT_TABLE_KEY, read_bundle_config, read_bundle_tensors

    config = read_bundle_config(folder)
    model = {k: v.float() for k, v in read_bundle_tensors(folder / "decoder.safetensors").items()}
    table = model.pop(TEXT_TABLE_KEY, None)
    if table is None or "decoder" not in config:
        raise LLMVoXError(f"{folder} is not a decoder bundle (no 'decoder' config or text table)")
    training = config.get("training", {})
    return {"model": model, "model_args": dict(config["decoder"]), "text_embedding": table,
            "iter_num": int(training.get("iter_num", 0)),
            "llmvox": {"codec_fingerprint": training.get("codec_fingerprint"),
                       "text_frontend": config.get("text_frontend") or {"kind": "byt5"}}}


def export_bundle_from_checkpoint(ckpt_path: str | os.PathLike, codec, out_dir: str | os.PathLike, *,
                                  dtype: torch.dtype = torch.float32, name: str | None = None) -> Path:
    """A checkpoint written by the trainer + its codec -> an llmvox bundle folder."""
    from llmvox.bundle import save_bundle
    from llmvox.model.checkpoint import load_state_strict, strip_compiled_prefix
    from llmvox.train.cache import codec_fingerprint

    ckpt = read_training_checkpoint(ckpt_path)
    table = ckpt.get("text_embedding")
    if not isinstance(table, torch.Tensor):
        raise LLMVoXError(f"{ckpt_path} has no learned text table ('text_embedding'); it was not written by "
                          "llmvox train: give its T5 folder (--encoder_model_path) instead")
    meta = ckpt.get("llmvox", {})
    expected = meta.get("codec_fingerprint")
    if expected and expected != codec_fingerprint(codec):
        raise LLMVoXError(f"{ckpt_path} was trained on codec {expected}, but the codec given for the bundle is "
                          f"{codec_fingerprint(codec)}")
    config = GPTConfig.from_dict(dict(ckpt["model_args"]))
    config.dropout = 0.0
    gpt = GPT(config)
    load_state_strict(gpt, strip_compiled_prefix(ckpt["model"]), str(ckpt_path))
    SpeechDecoder(gpt, table, codec.codebook)  # checks that the sizes fit together
    # a decoder that misses its end-of-audio stops inside the positions it was trained on
    extra = {"name": name or Path(out_dir).name,
             "generation": {"max_audio_length": max(config.block_size - 24, 1)},
             "training": {"iter_num": int(ckpt.get("iter_num", 0)), "codec_fingerprint": expected}}
    if meta.get("text_frontend", {}).get("kind", "byt5") != "byt5":
        extra["text_frontend"] = meta["text_frontend"]
    return save_bundle(out_dir, gpt, table, codec, dtype=dtype, extra_config=extra)


# ------------------------------------------------------------------------------------------------
# logging sinks
# ------------------------------------------------------------------------------------------------


class _Sinks:
    """JSONL log (always), TensorBoard and W&B (when asked; imported only then)."""

    def __init__(self, cfg: TrainConfig, out_dir: Path, start_iter: int, resumed: bool, wandb_id: str | None):
        self.path = out_dir / "train_log.jsonl"
        if resumed and self.path.exists():
            # drop rows from steps after the checkpoint (a crash after the last save would repeat them)
            kept = []
            for line in self.path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    row = json.loads(line)
                    if ("loss" in row and row["iter"] < start_iter) or ("loss" not in row and row["iter"] <= start_iter):
                        kept.append(line)
            self.path.write_text("".join(k + "\n" for k in kept))
        elif not resumed and self.path.exists():
            self.path.unlink()
        self.tb = None
        self.wandb = None
        self.wandb_id = wandb_id
        if cfg.tensorboard_log:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise LLMVoXError("--tensorboard_log needs the tensorboard package: pip install tensorboard") from None
            self.tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=start_iter if resumed else None)
        if cfg.wandb_log:
            try:
                import wandb
            except ImportError:
                raise LLMVoXError("--wandb_log needs the wandb package: pip install wandb") from None
            if cfg.wandb_mode not in ("offline", "online", "disabled"):
                raise LLMVoXError("--wandb_mode must be offline, online or disabled")
            self.wandb_id = wandb_id or uuid.uuid4().hex[:12]
            self.wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=cfg.to_dict(),
                                    dir=str(out_dir), mode=cfg.wandb_mode, id=self.wandb_id, resume="allow")

    def log(self, step: int, values: dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"iter": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


class _StopRequest:
    """SIGINT/SIGTERM ask the loop to save and stop after the current step; a second one stops now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stop requested: finishing this step, saving a checkpoint (again to abort now)")

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------


def validate_config(cfg: TrainConfig) -> None:
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
    if cfg.guided_attn_heads:
        if cfg.guided_attn_weight < 0 or cfg.guided_attn_sigma <= 0:
            raise LLMVoXError("--guided_attn_weight must be >= 0 and --guided_attn_sigma > 0")
        if cfg.compile:
            raise LLMVoXError("--guided_attn_heads does not work with --compile (its hooks would be compiled away)")
    if cfg.text_frontend not in FRONTENDS:
        raise LLMVoXError(f"--text_frontend must be one of {', '.join(FRONTENDS)} (got {cfg.text_frontend!r})")
    if cfg.phoneme_ctc_weight < 0:
        raise LLMVoXError("--phoneme_ctc_weight must be >= 0")
    if cfg.phoneme_ctc_weight > 0 and cfg.compile:
        raise LLMVoXError("--phoneme_ctc_weight does not work with --compile (its hook would be compiled away)")
    if not cfg.data_path:
        raise LLMVoXError("--data_path is required (a dataset JSON or a tokenised cache folder)")
    parse_text_table_source(cfg)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # CPUs with AVX-512 BF16 / AMX train ~3x faster under bf16 autocast; others gain nothing
    with contextlib.suppress(Exception):
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return torch.bfloat16
    return torch.float32


class Trainer:
    """One training run; build with a config, call `run()`."""

    def __init__(self, cfg: TrainConfig, env: DistEnv, log_fn: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.env = env
        self.say = log_fn or (lambda s: log.info(s))
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_path = self.out_dir / cfg.checkpoint_filename

    def _info(self, message: str) -> None:
        if self.env.master:
            self.say(message)

    def _barrier(self) -> None:
        if self.env.ddp:
            import torch.distributed as dist

            dist.barrier()

    # --- data ------------------------------------------------------------------------------------

    def _open_data(self, codec, codec_source: str | None):
        from llmvox.train.cache import CodeCache, codec_fingerprint, is_cache, tokenize_dataset

        cfg = self.cfg
        data = Path(cfg.data_path)
        if data.is_dir():
            if not is_cache(data):
                raise LLMVoXError(f"--data_path {data} is a folder but not a tokenised cache (no meta.json)")
            cache_dir = data
        elif data.is_file():
            cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else self.out_dir / "cache"
            if codec is None:
                raise LLMVoXError("training from a dataset JSON tokenises it first: give the codec "
                                  "(--wav_config_path and --wav_model_path, or --bundle)")
            if self.env.master:
                if self.env.device.type == "cuda":
                    codec.to(self.env.device)
                report = tokenize_dataset(data, cache_dir, codec, codec_source=codec_source or "",
                                          on_error=cfg.on_error, speech_data_folder=cfg.speech_data_folder,
                                          progress=cfg.progress, log_fn=self.say)
                codec.to("cpu")
                self.say(f"cache {cache_dir}: {report['utterances']} utterances, {report['hours']} h "
                         f"({report['encoded_now']} encoded now, {report['skipped']} skipped)")
            self._barrier()
        else:
            raise LLMVoXError(f"--data_path not found: {data}")
        cache = CodeCache(cache_dir)
        if len(cache) == 0:
            raise LLMVoXError(f"no utterances to train on in {cache_dir}")
        if codec is not None:
            cache.check_codec(codec_fingerprint(codec), f"the codec {codec_source}")
        return cache

    # --- model -----------------------------------------------------------------------------------

    def _text_table(self, code_dim: int, code_features: torch.Tensor, ckpt: dict | None) -> tuple[torch.Tensor, bool]:
        cfg = self.cfg
        kind, path = parse_text_table_source(cfg)
        if ckpt is not None and isinstance(ckpt.get("text_embedding"), torch.Tensor):
            table = ckpt["text_embedding"].float()
            frozen = bool(ckpt.get("llmvox", {}).get("text_table_frozen", False))
            if cfg.freeze_text_table is not None:
                frozen = cfg.freeze_text_table
            return table, frozen
        if ckpt is not None and kind == "random":
            raise LLMVoXError("the checkpoint has no text table of its own (an original LLMVoX checkpoint?): give "
                              "the one it was trained with, --encoder_model_path T5_FOLDER")
        text_dim = cfg.n_embd - code_dim
        if kind == "t5":
            from llmvox.model.embedding import load_t5_text_embedding

            table = load_t5_text_embedding(path)
            if table.shape[1] != text_dim:
                raise LLMVoXError(f"T5 text table width {table.shape[1]} + codebook width {code_dim} != "
                                  f"--n_embd {cfg.n_embd}")
            frozen = True if cfg.freeze_text_table is None else cfg.freeze_text_table
            return table, frozen
        if text_dim < 1:
            raise LLMVoXError(f"--n_embd {cfg.n_embd} leaves no room for the text embedding: the codebook is "
                              f"{code_dim} wide (n_embd = text width + {code_dim})")
        norm = float(code_features.norm(dim=1).mean())
        table = random_text_table(TEXT_VOCAB_SIZE, text_dim, norm, cfg.seed)
        return table, bool(cfg.freeze_text_table)

    # --- main --------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        cfg, env = self.cfg, self.env
        validate_config(cfg)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        elif env.ddp and env.device.type == "cpu":
            local = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
        if cfg.gradient_accumulation_steps % env.world_size:
            raise LLMVoXError(f"--gradient_accumulation_steps {cfg.gradient_accumulation_steps} (the total over "
                              f"all processes) must be a multiple of the {env.world_size} processes")
        accum_local = cfg.gradient_accumulation_steps // env.world_size
        device, dtype = env.device, resolve_dtype(cfg.dtype, env.device)
        if cfg.tokenizer_path:
            from llmvox.api import check_tokenizer_path

            check_tokenizer_path(cfg.tokenizer_path)

        # checkpoint to resume or warm-start from
        ckpt: dict | None = None
        resumed = False
        if cfg.init_from == "resume":
            if not self.ckpt_path.is_file():
                raise LLMVoXError(f"--init_from=resume but {self.ckpt_path} does not exist")
            ckpt = read_training_checkpoint(self.ckpt_path)
            resumed = True
        elif cfg.init_from != "scratch":
            ckpt = read_training_checkpoint(cfg.init_from)
        elif self.ckpt_path.exists() and not cfg.overwrite and not cfg.eval_only:
            raise LLMVoXError(f"{self.ckpt_path} exists: continue it with --init_from=resume, or pass "
                              "--overwrite to start again from scratch")

        codec, codec_source = load_codec_source(cfg.wav_config_path, cfg.wav_model_path, cfg.bundle)
        if cfg.export_bundle and codec is None:
            raise LLMVoXError("--export_bundle needs the codec (--wav_config_path/--wav_model_path or --bundle)")
        if env.master:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        cache = self._open_data(codec, codec_source)
        if ckpt is not None:
            trained_on = ckpt.get("llmvox", {}).get("codec_fingerprint")
            if trained_on and trained_on != cache.fingerprint:
                raise LLMVoXError(f"the checkpoint was trained on codec {trained_on}, the data is from codec "
                                  f"{cache.fingerprint}: a decoder cannot change codec")
        frontend = self._frontend(ckpt, resumed)
        if frontend.kind != "byt5":
            start = time.perf_counter()
            cache = FrontendCache(cache, frontend, store=self.out_dir / TEXT_IDS_FILE)
            self._info(f"text front-end {frontend.kind}: {float(np.mean(cache.text_lengths)):.0f} ids per "
                       f"utterance (read in {time.perf_counter() - start:.1f} s)")
        code_features = torch.from_numpy(cache.codebook()).float()

        # model
        torch.manual_seed(cfg.seed)
        if ckpt is not None:
            args = dict(ckpt["model_args"])
            args["dropout"] = cfg.dropout
            gconf = GPTConfig.from_dict(args)
            if (gconf.n_layer, gconf.n_head, gconf.n_embd) != (cfg.n_layer, cfg.n_head, cfg.n_embd):
                self._info(f"using the checkpoint's sizes: {gconf.n_layer} layers x {gconf.n_embd}, "
                           f"{gconf.n_head} heads")
            cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.bias = (
                gconf.n_layer, gconf.n_head, gconf.n_embd, gconf.block_size, gconf.bias)
        else:
            gconf = GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                              bias=cfg.bias, vocab_size=cache.codebook_size, dropout=cfg.dropout)
        if gconf.vocab_size != cache.codebook_size:
            raise LLMVoXError(f"the decoder predicts {gconf.vocab_size} codes but the codec has {cache.codebook_size}")
        try:
            gpt = GPT(gconf)
        except ValueError as exc:
            raise LLMVoXError(f"bad model sizes: {exc}") from None
        if ckpt is not None:
            from llmvox.model.checkpoint import load_state_strict, strip_compiled_prefix

            load_state_strict(gpt, strip_compiled_prefix(ckpt["model"]),
                              str(self.ckpt_path if resumed else cfg.init_from))
        table, frozen = self._text_table(code_features.shape[1], code_features, ckpt)
        try:
            decoder = SpeechDecoder(gpt, table, code_features)
        except ValueError as exc:
            raise LLMVoXError(str(exc)) from None
        decoder.text_embedding.weight.requires_grad_(not frozen)
        decoder.to(device).train()
        params = [p for p in decoder.parameters() if p.requires_grad]
        optimizer = make_optimizer(decoder, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                   betas=(cfg.beta1, cfg.beta2), device_type=device.type)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        state = ckpt.get("train_state", {}) if resumed and ckpt is not None else {}
        iter_num = int(ckpt["iter_num"]) if resumed and ckpt is not None else 0
        cursor = int(state.get("sampler_cursor", iter_num * cfg.gradient_accumulation_steps))
        if resumed and ckpt is not None:
            if ckpt.get("optimizer"):
                try:
                    optimizer.load_state_dict(ckpt["optimizer"])
                except (ValueError, KeyError) as exc:
                    raise LLMVoXError(f"{self.ckpt_path}: its optimizer state does not fit this run ({exc}); was "
                                      "--freeze_text_table changed? To start a new run from these weights, use "
                                      f"--init_from={self.ckpt_path} in a new --out_dir") from None
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            saved_data = ckpt.get("llmvox", {}).get("data_fingerprint")
            if saved_data and saved_data != cache.data_fingerprint():
                self._info("warning: the data set changed since the checkpoint; the run continues, but not "
                           "exactly as it would have")
        # per-rank RNG (dropout): the original seeds 1337 + rank
        torch.manual_seed(cfg.seed + env.rank)
        rng_states = state.get("rng") or []
        if resumed and len(rng_states) == env.world_size:
            _set_rng_state(rng_states[env.rank], device)
        elif resumed:
            self._info(f"warning: checkpoint has RNG states of {len(rng_states)} processes, not "
                       f"{env.world_size}: dropout noise will differ from an uninterrupted run")

        model: nn.Module = decoder
        if cfg.compile:
            model = torch.compile(model)
        if env.ddp:
            import inspect

            from torch.nn.parallel import DistributedDataParallel as DDP

            # the only buffer (code features) is the same everywhere: no need to re-send it every step
            no_resync = ({"forward_sync_buffers": False}
                         if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
                         else {"broadcast_buffers": False})
            model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, **no_resync)

        # data order
        max_len = min(cfg.max_seq_len or gconf.block_size, gconf.block_size)
        val_mask = np.array([is_validation_id(i, cfg.val_fraction) for i in cache.ids], dtype=bool)
        if val_mask.all():
            val_mask[:] = False
        train_idx, val_idx = np.flatnonzero(~val_mask), np.flatnonzero(val_mask)
        if len(train_idx) == 0:
            raise LLMVoXError("no training utterances left after the held-out split")
        if cfg.max_codes:
            # short sentences first: the text-audio alignment is learned sooner on short utterances
            train_idx = train_idx[cache.code_lengths[train_idx] <= cfg.max_codes]
            if len(train_idx) == 0:
                raise LLMVoXError(f"no training utterance has at most --max_codes={cfg.max_codes} codes")
            self._info(f"curriculum: {len(train_idx)} training utterances of at most {cfg.max_codes} codes")
        lengths = sequence_lengths(cache.code_lengths, max_len)
        sampler = BucketSampler(lengths[train_idx], cfg.batch_size, seed=cfg.seed, bucket_window=cfg.bucket_window)
        val_batches = [val_idx[b] for b in fixed_batches(lengths[val_idx], cfg.batch_size, seed=cfg.seed,
                                                          limit=cfg.eval_iters or None)] if len(val_idx) else []

        def batch_of(indices: np.ndarray) -> Batch:
            batch = make_batch([cache.codes(int(i)) for i in indices], [cache.text_ids(int(i)) for i in indices],
                               max_len=max_len, eoa_id=cache.eoa_id)
            batch.rows = indices
            return batch.to(device)

        def train_batches(step_cursor: int) -> list[Batch]:
            first = step_cursor + env.rank * accum_local
            return [batch_of(train_idx[sampler.micro_batch(first + j)]) for j in range(accum_local)]

        ctx = autocast_context(device.type, dtype)
        guide = None
        if cfg.guided_attn_heads and cfg.guided_attn_weight > 0:
            heads = parse_heads(cfg.guided_attn_heads, gconf.n_layer, gconf.n_head)
            guide = GuidedAttention(gpt, heads, sigma=cfg.guided_attn_sigma, weight=cfg.guided_attn_weight)
            self._info(f"guided attention on heads {cfg.guided_attn_heads} (weight {cfg.guided_attn_weight}, "
                       f"sigma {cfg.guided_attn_sigma})")
        ctc, ctc_optimizer = None, None
        if cfg.phoneme_ctc_weight > 0:
            ctc, ctc_optimizer = self._phoneme_ctc(gpt, cache, max_len, ckpt if resumed else None, device)
        aux = [a for a in (guide, ctc) if a is not None]
        aux_optimizers = [ctc_optimizer] if ctc_optimizer is not None else []
        lr_decay_iters = cfg.lr_decay_iters or cfg.max_iters

        def lr_at(it: int) -> float:
            return get_lr(it, learning_rate=cfg.learning_rate, warmup_iters=cfg.warmup_iters,
                          lr_decay_iters=lr_decay_iters, min_lr=cfg.min_lr, decay_lr=cfg.decay_lr)

        @torch.no_grad()
        def evaluate() -> tuple[float | None, float | None]:
            """Held-out cross-entropy per step (and phoneme CTC per batch, when it is trained)."""
            if not val_batches:
                return None, None
            decoder.eval()
            sums = torch.zeros(4, dtype=torch.float64)
            for k, idx in enumerate(val_batches):
                if k % env.world_size != env.rank:
                    continue
                batch = batch_of(idx)
                with ctx, ctc.recording() if ctc is not None else contextlib.nullcontext():
                    logits = decoder(batch.text_ids, batch.prev_codes)
                sums[0] += F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(),
                                           ignore_index=IGNORE_INDEX, reduction="sum").double().cpu()
                sums[1] += batch.num_targets
                if ctc is not None:
                    sums[2] += float(ctc.batch_loss(batch))
                    sums[3] += 1
            decoder.train()
            sums = self._all_reduce(sums)
            return float(sums[0] / sums[1]), float(sums[2] / sums[3]) if sums[3] else None

        n_params = gpt.num_params()
        self._info(
            f"decoder {gconf.n_layer} x {gconf.n_embd} ({gconf.n_head} heads), {n_params / 1e6:.2f} M params, "
            f"{cache.codebook_size} codes, text table {tuple(table.shape)} {'frozen' if frozen else 'trained'}; "
            f"{len(train_idx)} train / {len(val_idx)} held-out utterances ({cache.hours:.2f} h); device "
            f"{device}, {str(dtype).removeprefix('torch.')}, {env.world_size} process(es); global batch "
            f"{cfg.batch_size} x {cfg.gradient_accumulation_steps}; iter {iter_num} -> {cfg.max_iters}")

        if cfg.eval_only:
            val, _ = evaluate()
            self._info(f"eval at iter {iter_num}: held-out loss {val if val is None else round(val, 4)}")
            return TrainResult(iter_num, self.ckpt_path, val_loss=val)

        sinks = _Sinks(cfg, self.out_dir, iter_num, resumed,
                       state.get("wandb_run_id")) if env.master else None
        best_val = state.get("best_val_loss")
        tokens_seen = int(state.get("tokens_seen", 0))
        elapsed_before = float(state.get("elapsed_seconds", 0.0))
        run_start = time.perf_counter()
        start_iter = iter_num
        result = TrainResult(iter_num, self.ckpt_path)

        def save(it: int) -> None:
            rngs = self._all_gather([_rng_state(device)])
            if env.master:
                from llmvox.model.checkpoint import save_llmvox_checkpoint

                extra = {
                    "text_embedding": decoder.text_embedding.weight.detach().float().cpu(),
                    "llmvox": {
                        "checkpoint_version": CHECKPOINT_VERSION,
                        "codec_fingerprint": cache.fingerprint,
                        "data_fingerprint": cache.data_fingerprint(),
                        "eoa_id": cache.eoa_id, "pad_id": PAD_ID, "sentence_end_id": SENTENCE_END_ID,
                        "text_table_frozen": frozen,
                        "text_frontend": frontend.config(),
                        "world_size": env.world_size,
                    },
                    "train_state": {
                        "sampler_cursor": cursor,
                        "seed": cfg.seed,
                        "rng": rngs,
                        "scaler": scaler.state_dict(),
                        "best_val_loss": best_val,
                        "tokens_seen": tokens_seen,
                        "elapsed_seconds": elapsed_before + time.perf_counter() - run_start,
                        "wandb_run_id": sinks.wandb_id if sinks else None,
                    },
                }
                if ctc is not None:
                    extra["phoneme_ctc"] = {"layer": ctc.layer, "head": ctc.head.state_dict(),
                                            "optimizer": ctc_optimizer.state_dict()}
                config = cfg.to_dict() | {"world_size": env.world_size, "vocab_size": gconf.vocab_size}
                save_llmvox_checkpoint(self.ckpt_path, gpt, iter_num=it, optimizer=optimizer.state_dict(),
                                       config=config, extra=extra)
                if cfg.always_save_checkpoint:
                    import shutil

                    shutil.copyfile(self.ckpt_path, self.out_dir / f"ckpt_{it}.pt")
            self._barrier()

        def eval_and_save(it: int) -> None:
            nonlocal best_val
            val, val_ctc = evaluate()
            if val is not None:
                result.val_loss = val
                best_val = val if best_val is None else min(best_val, val)
                row = {"val/loss": val} | ({"val/phoneme_ctc": val_ctc} if val_ctc is not None else {})
                if sinks:
                    sinks.log(it, row)
                ctc_note = f", phoneme CTC {val_ctc:.4f}" if val_ctc is not None else ""
                self._info(f"iter {it}: held-out loss {val:.4f}{ctc_note}")
            save(it)

        bar = None
        if env.master and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.max_iters, initial=iter_num, desc="train", unit="it", dynamic_ncols=True)
        window_tokens, window_start = 0, time.perf_counter()
        try:
            with _StopRequest() as stop:
                while iter_num < cfg.max_iters:
                    # the original evaluates (and saves) at step 0 too; a resumed run just saved this state
                    due = cfg.eval_interval and iter_num % cfg.eval_interval == 0
                    if due and not (resumed and iter_num == start_iter):
                        eval_and_save(iter_num)
                    lr = lr_at(iter_num)
                    for o in (optimizer, *aux_optimizers):
                        for group in o.param_groups:
                            group["lr"] = lr
                    batches = train_batches(cursor)
                    loss = optimizer_step(model, params, optimizer, scaler, batches, ctx, cfg.grad_clip, aux,
                                          aux_optimizers)
                    step_tokens = int(self._all_reduce(torch.tensor([sum(b.num_targets for b in batches)],
                                                                    dtype=torch.float64))[0])
                    cursor += cfg.gradient_accumulation_steps
                    tokens_seen += step_tokens
                    window_tokens += step_tokens
                    if cfg.log_interval and iter_num % cfg.log_interval == 0:
                        # the loss and the aux losses' means, over every process's micro-batches
                        means = self._all_reduce(torch.tensor([loss, *(a.last for a in aux)], dtype=torch.float64))
                        loss, *aux_means = (float(v) / env.world_size for v in means)
                        now = time.perf_counter()
                        tps = window_tokens / max(now - window_start, 1e-9)
                        window_tokens, window_start = 0, now
                        result.losses.append((iter_num, loss))
                        if sinks:
                            row = {"loss": loss, "lr": lr, "tokens_per_s": tps, "tokens_seen": tokens_seen}
                            for a, mean in zip(aux, aux_means, strict=True):
                                row[a.name] = mean
                            sinks.log(iter_num, row)
                        if bar is not None:
                            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:.0f}")
                    iter_num += 1
                    if bar is not None:
                        bar.update(1)
                    if self._stop_agreed(stop.requested):
                        result.interrupted = True
                        break
                if not result.interrupted:
                    eval_and_save(iter_num)
                else:
                    save(iter_num)
                    self._info(f"stopped at iter {iter_num}; checkpoint saved to {self.ckpt_path} "
                               "(continue with --init_from=resume)")
        finally:
            if bar is not None:
                bar.close()
            if sinks:
                sinks.close()
        result.iter_num = iter_num
        if cfg.export_bundle and env.master and not result.interrupted:
            result.bundle = export_bundle_from_checkpoint(self.ckpt_path, codec, cfg.export_bundle,
                                                          dtype=DTYPES[cfg.export_dtype])
            self.say(f"bundle written to {result.bundle}")
        self._barrier()
        return result

    def _frontend(self, ckpt: dict | None, resumed: bool) -> TextFrontend:
        """The run's text front-end: a resumed run keeps its checkpoint's (phoneme table included)."""
        cfg = self.cfg
        saved = (ckpt or {}).get("llmvox", {}).get("text_frontend") or {"kind": "byt5"}
        if ckpt is not None and saved.get("kind") == cfg.text_frontend:
            return frontend_from_config(saved)
        if resumed:
            raise LLMVoXError(f"the checkpoint was trained with the {saved.get('kind')} text front-end, not "
                              f"--text_frontend {cfg.text_frontend}: a run cannot change how it reads")
        if ckpt is not None:
            self._info(f"warning: warm start from a {saved.get('kind')} decoder with the {cfg.text_frontend} "
                       "front-end: its text table rows are read as new symbols")
        return new_frontend(cfg.text_frontend)

    def _phoneme_ctc(self, gpt: GPT, cache, max_len: int, resumed: dict | None,
                     device: torch.device) -> tuple[PhonemeCTC, torch.optim.Optimizer]:
        """The phoneme CTC loss and its head's optimizer; a resumed run continues the saved head."""
        cfg = self.cfg
        layer = gpt.config.n_layer // 2 if cfg.phoneme_ctc_layer is None else cfg.phoneme_ctc_layer
        saved = (resumed or {}).get("phoneme_ctc")
        if saved and saved["layer"] != layer:
            raise LLMVoXError(f"the checkpoint's phoneme CTC head reads layer {saved['layer']}, not {layer}")
        start = time.perf_counter()
        phonemes, vocab = phoneme_table([cache.text(i) for i in range(len(cache))],
                                         store=self.out_dir / PHONEME_TABLE_FILE)
        complete = cache.code_lengths + 1 <= max_len
        ctc = PhonemeCTC(gpt, layer, phonemes, complete, vocab_size=vocab, weight=cfg.phoneme_ctc_weight,
                         seed=cfg.seed)
        ctc.head.to(device)
        opt = torch.optim.AdamW(ctc.head.parameters(), lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                                eps=ADAM_EPS, weight_decay=0.0)
        if saved:
            ctc.head.load_state_dict(saved["head"])
            opt.load_state_dict(saved["optimizer"])
        counts = [len(p) for p in phonemes]
        self._info(f"phoneme CTC on layer {layer} (weight {cfg.phoneme_ctc_weight}): {vocab} symbols, "
                   f"{np.mean(counts):.0f} phonemes per utterance, {int(complete.sum())}/{len(cache)} scored; "
                   f"g2p took {time.perf_counter() - start:.1f} s" + ("; head resumed" if saved else ""))
        return ctc, opt

    # --- collectives (no-ops in one process) --------------------------------------------------------

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if not self.env.ddp:
            return t
        import torch.distributed as dist

        dev = self.env.device if self.env.device.type == "cuda" else torch.device("cpu")
        out = t.to(dev)
        dist.all_reduce(out)
        return out.cpu()

    def _all_gather(self, items: list[Any]) -> list[Any]:
        if not self.env.ddp:
            return items
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.env.world_size
        dist.all_gather_object(gathered, items[0])
        return gathered

    def _stop_agreed(self, requested: bool) -> bool:
        if not self.env.ddp:
            return requested
        return bool(self._all_reduce(torch.tensor([float(requested)]))[0] > 0)


@contextlib.contextmanager
def _process_group(env: DistEnv) -> Iterator[None]:
    try:
        yield
    finally:
        if env.ddp:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def train(cfg: TrainConfig, log_fn: Callable[[str], None] | None = None) -> TrainResult:
    """Run one training (under torchrun: one process of a DDP run)."""
    validate_config(cfg)
    env = setup_distributed(cfg)
    with _process_group(env):
        return Trainer(cfg, env, log_fn).run()
