"""The encoder's latents on their way to the codebook, as training (not inference) handles them.

Inference only looks up the nearest code. Training needs a gradient through that lookup (the
straight-through estimator, with a commitment loss keeping the latents near their codes), and it
needs the latents at a scale a codebook can follow: a fresh SEANet encoder emits latents far too
flat, and unquantised (VQ warm-up) latents grow far too wide; either way every frame lands on one
code. The two rescalings here fix that by editing weights, without changing the architecture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmvox.codec.wavtokenizer import WavTokenizer


def quantize_for_training(model: WavTokenizer, latents: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(quantised features with a straight-through gradient, codes, commitment loss)."""
    codes = model.quantizer.nearest(latents)
    quantised = model.quantizer.lookup(codes)
    commit = F.mse_loss(latents, quantised.detach())
    return latents + (quantised - latents).detach(), codes, commit


@torch.no_grad()
def scale_encoder_output(model: WavTokenizer, audio: Tensor, target: float) -> tuple[float, float] | None:
    """Rescale the encoder's last conv so latents of (B, N) `audio` vary over time with std `target`;
    returns (factor, spread before), or None when the latents do not vary at all.

    A fresh SEANet encoder emits latents whose frame-to-frame spread is ~1e-3, smaller than
    one optimiser step moves them; every code assignment then collapses onto one codebook row.
    Scaling the output (the gain `weight_g` and bias of the last conv) makes the spread large
    compared with early parameter updates without changing the architecture.
    """
    last = model.encoder.model[-1].conv
    latents = model.encoder(audio[:, None])
    spread = float(latents.std(dim=2).mean())
    if spread > 0:
        factor = target / spread
        last.weight_g.mul_(factor)
        last.bias.mul_(factor)
        return factor, spread
    return None


@torch.no_grad()
def match_latent_scale(model: WavTokenizer, audio: Tensor, target: float, optimizer: torch.optim.Optimizer,
                       probe: nn.Conv1d | None = None) -> tuple[float, float] | None:
    """Bring the latents' spread back to `target` before quantisation starts, without changing the
    decoder's output: the encoder's last conv is divided by f, the backbone's input conv (and the
    semantic `probe`) multiplied by f, and their optimiser moments reset. Returns (f, spread before),
    or None when the spread is within a factor 4 of `target` and nothing changed.

    Unquantised (VQ warm-up) latents grow freely, ~10^4-fold in 1,000 steps (measured); at that
    scale the first commitment losses are ~10^4 and the codebook collapses to 1-4 codes."""
    spread = float(model.encoder(audio[:, None]).std(dim=2).mean())
    if not (spread > 4 * target or 0 < spread < target / 4):
        return None
    f = spread / target
    last = model.encoder.model[-1].conv
    changed = [last.weight_g, last.bias, model.backbone.embed.weight]
    last.weight_g.div_(f)
    last.bias.div_(f)
    model.backbone.embed.weight.mul_(f)
    if probe is not None:
        probe.weight.mul_(f)
        changed.append(probe.weight)
    for param in changed:
        optimizer.state.pop(param, None)
    return f, spread
