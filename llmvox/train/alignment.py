"""Guided attention: a training-only loss that teaches chosen decoder heads to read the text in order.

An LLMVoX decoder gets text byte j at step j but speaks it around step j * T / N (N text steps, T audio
steps: speech is ~5x longer than its bytes). It must learn on its own to look back at the byte it is
saying; from scratch that alignment forms slowly, and a small voice on a CPU mumbles until it holds
through a whole sentence. Guided attention (Tachibana et al., 2017, "DC-TTS") adds the attention mass a
head puts far from the diagonal j/N = t/T to the loss:

    W[t, j] = 1 - exp(-(j/N - t/T)^2 / (2 g^2)),   loss = mean over heads and audio steps of sum_j A[t, j] W[t, j]

Only the listed heads are guided; the decoder, its checkpoints and its inference are unchanged (the
heads' attention is recomputed from the block inputs that a forward hook keeps).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from llmvox.errors import LLMVoXError
from llmvox.model.gpt import GPT
from llmvox.text.tokenizer import PAD_ID
from llmvox.train.batching import IGNORE_INDEX, Batch


def parse_heads(spec: str | None, n_layer: int, n_head: int) -> list[tuple[int, int]]:
    """'2.0,3.1' -> [(2, 0), (3, 1)] (layer.head, both from 0); '' or None -> []."""
    if not spec:
        return []
    heads = []
    for item in spec.split(","):
        try:
            layer, head = (int(x) for x in item.strip().split("."))
        except ValueError:
            raise LLMVoXError(f"--guided_attn_heads wants LAYER.HEAD items like '2.0,3.1', got {item!r}") from None
        if not (0 <= layer < n_layer and 0 <= head < n_head):
            raise LLMVoXError(f"--guided_attn_heads {item}: the decoder has {n_layer} layers of {n_head} heads")
        heads.append((layer, head))
    return sorted(set(heads))


def guide_weights(text_ids: Tensor, num_steps: Tensor, g: float) -> Tensor:
    """W (B, T, T): the penalty of attending from audio step t to step j; 0 outside real audio steps."""
    b, t = text_ids.shape
    n_text = (text_ids != PAD_ID).sum(1).clamp(min=1).to(torch.float32)  # text fills steps 0..N-1
    steps = torch.arange(t, dtype=torch.float32, device=text_ids.device)
    query = (steps[None, :] + 0.5) / num_steps.to(torch.float32)[:, None]      # (B, T) in audio fraction
    key = (steps[None, :] + 0.5) / n_text[:, None]                              # (B, T) in text fraction
    w = 1.0 - torch.exp(-(key[:, None, :] - query[:, :, None]) ** 2 / (2.0 * g * g))
    real = steps[None, :] < num_steps[:, None]
    return w * real[:, :, None]


def head_attention(gpt: GPT, layer: int, x: Tensor, heads: list[int]) -> Tensor:
    """Causal attention probabilities (B, len(heads), T, T) of `heads` of `layer` for its input x."""
    attn = gpt.transformer.h[layer].attn
    c, nh = attn.n_embd, attn.n_head
    hd = c // nh
    w = attn.c_attn.weight
    rows_q = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in heads]).to(w.device)
    q = torch.nn.functional.linear(x, w[rows_q], None if attn.c_attn.bias is None else attn.c_attn.bias[rows_q])
    k = torch.nn.functional.linear(x, w[c + rows_q], None if attn.c_attn.bias is None else attn.c_attn.bias[c + rows_q])
    b, t, _ = x.shape
    q = q.view(b, t, len(heads), hd).transpose(1, 2).float()
    k = k.view(b, t, len(heads), hd).transpose(1, 2).float()
    scores = q @ k.transpose(-1, -2) / hd**0.5
    causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


class GuidedAttention:
    """Keeps the inputs of the guided layers during a forward pass and turns them into the loss."""

    def __init__(self, gpt: GPT, heads: list[tuple[int, int]], *, sigma: float = 0.2, weight: float = 1.0) -> None:
        if sigma <= 0:
            raise LLMVoXError("--guided_attn_sigma must be positive")
        if not heads:
            raise LLMVoXError("guided attention needs at least one LAYER.HEAD")
        self.gpt = gpt
        self.sigma = sigma
        self.weight = weight
        self.last: float | None = None  # the mean loss of the latest optimizer step (for logs)
        self.name = "guided_attn"
        self.by_layer: dict[int, list[int]] = {}
        for layer, head in heads:
            self.by_layer.setdefault(layer, []).append(head)
        self._inputs: dict[int, Tensor] = {}

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Within this block, forward passes of the GPT keep the guided layers' attention inputs."""
        hooks = [self.gpt.transformer.h[layer].attn.register_forward_pre_hook(self._keeper(layer))
                 for layer in self.by_layer]
        try:
            yield
        finally:
            for h in hooks:
                h.remove()

    def _keeper(self, layer: int):
        def keep(module, args):
            self._inputs[layer] = args[0]
        return keep

    def attention(self, layer: int) -> Tensor:
        """Probabilities (B, heads, T, T) of `layer`'s guided heads in the last recorded forward pass."""
        return head_attention(self.gpt, layer, self._inputs.pop(layer), self.by_layer[layer])

    def batch_loss(self, batch: Batch) -> Tensor:
        """The loss of the batch's recorded forward pass."""
        return self.loss(batch.text_ids, batch.targets, IGNORE_INDEX)

    def loss(self, text_ids: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
        """Mean off-diagonal attention mass of the guided heads over the real audio steps."""
        num_steps = (targets != ignore_index).sum(1)
        weights = guide_weights(text_ids, num_steps, self.sigma)
        real = (num_steps.sum() * sum(len(h) for h in self.by_layer.values())).clamp(min=1)
        total = torch.zeros((), device=text_ids.device)
        for layer in self.by_layer:
            total = total + (self.attention(layer) * weights[:, None]).sum()
        return total / real
