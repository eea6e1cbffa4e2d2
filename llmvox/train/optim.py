"""One optimizer step of the decoder: the learning-rate schedule, AdamW's groups, accumulation, autocast.

The schedule stays the original formula (`get_lr`) set into the param groups each step, not a
`torch.optim.lr_scheduler`: a LambdaLR computes `base_lr * factor`, which differs from the formula in
the last bit at some steps (checked: 14 of the first 200 of a typical run), and a scheduler's own step
count would have to join the checkpoint. The formula keeps old runs' learning rates bit for bit and
makes the rate a pure function of the iteration, so resume needs nothing more.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from llmvox.model.speech_decoder import SpeechDecoder
from llmvox.train.batching import IGNORE_INDEX, Batch
from llmvox.train.config import TrainConfig
from llmvox.train.distributed import average_gradients

ADAM_EPS = 1e-5  # the original's AdamW eps


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


def lr_for_iter(cfg: TrainConfig, it: int) -> float:
    """`get_lr` with a run's settings (`lr_decay_iters` defaults to `max_iters`)."""
    return get_lr(it, learning_rate=cfg.learning_rate, warmup_iters=cfg.warmup_iters,
                  lr_decay_iters=cfg.lr_decay_iters or cfg.max_iters, min_lr=cfg.min_lr, decay_lr=cfg.decay_lr)


def set_lr(optimizers: Sequence[torch.optim.Optimizer], lr: float) -> None:
    for o in optimizers:
        for group in o.param_groups:
            group["lr"] = lr


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
    average_gradients(aux_params)
    if grad_clip:
        for o in (optimizer, *aux_optimizers):
            scaler.unscale_(o)
        torch.nn.utils.clip_grad_norm_([*params, *aux_params], grad_clip)
    for o in (optimizer, *aux_optimizers):
        scaler.step(o)
        o.zero_grad(set_to_none=True)
    scaler.update()
    return float(total) / n
