"""The LLMVoX speech decoder: a GPT-2 decoder over precomputed input vectors, with a KV cache.

Parameter names follow nanoGPT (`transformer.wpe`, `transformer.h.N.*`, `transformer.ln_f`, `lm_head`) so
the original checkpoints load unchanged. There is no token embedding table: each step's input vector is
built outside (text embedding + previous code feature, see `speech_decoder.py`).

Two ways in:
- `forward(x)` runs whole sequences (training, prefill);
- `step(x, positions, cache)` advances a batch of independent streams by one token each. Streams may
  be at different positions; stream b always lives in cache row b.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class GPTConfig:
    """The original `model_args` dict: sizes only, nothing inferred."""

    n_layer: int = 4
    n_head: int = 8
    n_embd: int = 768
    block_size: int = 8192
    bias: bool = False
    vocab_size: int = 4096
    dropout: float = 0.0

    @classmethod
    def from_dict(cls, args: dict) -> GPTConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in args.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


def gelu_tanh(x: Tensor) -> Tensor:
    """GPT-2's GELU, the tanh approximation the original uses (one fused kernel, same formula)."""
    return F.gelu(x, approximate="tanh")


def project(layer: nn.Linear, x: Tensor) -> Tensor:
    """layer(x) for a decoding step: one stream uses a matrix-vector product, which CPUs run closer to
    memory speed than a one-row matrix product (notably in bf16)."""
    if x.shape[0] == 1:
        y = torch.mv(layer.weight, x[0]).unsqueeze(0)
        return y if layer.bias is None else y + layer.bias
    return F.linear(x, layer.weight, layer.bias)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (eps 1e-5), as nanoGPT names its parameters."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class KVCache:
    """Preallocated keys and values for up to `batch` streams; grows its length on demand.

    Layout: (n_layer, batch, n_head, length, head_dim). Row b belongs to stream b; the scheduler keeps
    active streams packed in rows 0..B-1 (`move_row`) so a batched step reads a contiguous slice.
    """

    def __init__(self, config: GPTConfig, batch: int, length: int = 256, *, device=None, dtype=None):
        self.config = config
        self.head_dim = config.n_embd // config.n_head
        self.batch = batch
        length = max(1, min(length, config.block_size))
        shape = (config.n_layer, batch, config.n_head, length, self.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def ensure_capacity(self, length: int) -> None:
        """Make room for `length` positions (doubling, capped at block_size)."""
        if length <= self.capacity:
            return
        if length > self.config.block_size:
            raise ValueError(f"sequence of {length} steps exceeds the decoder's block size {self.config.block_size}")
        new_len = min(max(length, 2 * self.capacity), self.config.block_size)
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_zeros(old.shape[:3] + (new_len, old.shape[4]))
            new[:, :, :, : old.shape[3]] = old
            setattr(self, name, new)

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy stream `src`'s first `length` positions into row `dst` (to keep rows packed)."""
        if src != dst and length > 0:
            self.k[:, dst, :, :length] = self.k[:, src, :, :length]
            self.v[:, dst, :, :length] = self.v[:, src, :, :length]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd {config.n_embd} is not a multiple of n_head {config.n_head}")
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def _heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.n_head, self.n_embd // self.n_head).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        y = F.scaled_dot_product_attention(
            self._heads(q), self._heads(k), self._heads(v),
            dropout_p=self.dropout if self.training else 0.0, is_causal=True,
        )
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(b, t, c)))

    def step(self, x: Tensor, layer_k: Tensor, layer_v: Tensor, positions: Tensor, length: int,
             mask: Tensor | None) -> Tensor:
        """One new token per stream: x (B, C); layer_k/v (B, nh, L, hd) cache views of this layer."""
        b, c = x.shape
        q, k, v = project(self.c_attn, x).view(b, 3, self.n_head, c // self.n_head).unbind(1)
        if b == 1:  # one stream: a plain slice write, no index tensors
            layer_k[:, :, length - 1] = k  # for one stream, length - 1 is its position
            layer_v[:, :, length - 1] = v
        else:
            rows = torch.arange(b, device=x.device)
            layer_k[rows, :, positions] = k
            layer_v[rows, :, positions] = v
        y = F.scaled_dot_product_attention(
            q.unsqueeze(2), layer_k[:, :, :length], layer_v[:, :, :length], attn_mask=mask
        )
        return project(self.c_proj, y.reshape(b, c))


class HeadProbe:
    """Ask `GPT.step` for the attention of some heads of one layer: after the step, `probs` (B, length)
    float32 is their mean attention of each stream over its positions (word timestamps read it,
    llmvox.model.aligner). A q.K product of those heads only: a step without a probe is unchanged."""

    def __init__(self, layer: int, heads: tuple[int, ...]) -> None:
        self.layer = layer
        self.heads = tuple(heads)
        self.probs: Tensor | None = None
        run = self.heads == tuple(range(self.heads[0], self.heads[-1] + 1))
        self._run = slice(self.heads[0], self.heads[-1] + 1) if run else None  # adjacent heads: views, no copies

    def read(self, attn: CausalSelfAttention, x: Tensor, layer_k: Tensor, length: int, mask: Tensor | None) -> None:
        hd = attn.n_embd // attn.n_head
        if self._run is not None:
            rows = slice(self._run.start * hd, self._run.stop * hd)
            keys = layer_k[:, self._run, :length]
        else:
            rows = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in self.heads]).to(x.device)
            keys = layer_k[:, list(self.heads), :length]
        bias = None if attn.c_attn.bias is None else attn.c_attn.bias[rows]
        q = F.linear(x, attn.c_attn.weight[rows], bias).view(x.shape[0], len(self.heads), 1, hd)
        scores = (q @ keys.transpose(-1, -2)).squeeze(2).float() / math.sqrt(hd)  # (B, h, L)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, :, 0, :], float("-inf"))
        self.probs = scores.softmax(-1).mean(1)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(gelu_tanh(self.c_fc(x))))

    def step(self, x: Tensor) -> Tensor:
        return project(self.c_proj, gelu_tanh(project(self.c_fc, x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2 decoder whose inputs are vectors; learned absolute positions (step n adds `wpe[n]`)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, T, vocab) for whole input sequences x (B, T, n_embd), causally."""
        t = x.shape[1]
        if t > self.config.block_size:
            raise ValueError(f"sequence of {t} steps exceeds the block size {self.config.block_size}")
        pos = torch.arange(t, device=x.device)
        h = self.transformer.drop(x + self.transformer.wpe(pos))
        for block in self.transformer.h:
            h = block(h)
        return self.lm_head(self.transformer.ln_f(h))

    def new_cache(self, batch: int = 1, length: int = 256) -> KVCache:
        p = self.lm_head.weight
        return KVCache(self.config, batch, length, device=p.device, dtype=p.dtype)

    @torch.inference_mode()
    def step(self, x: Tensor, positions: Tensor, cache: KVCache, max_position: int | None = None,
             probe: HeadProbe | None = None) -> Tensor:
        """Advance B streams by one token. x (B, n_embd); positions (B,) int64, each stream's step index.

        Returns float32 logits (B, vocab). `max_position` (the largest entry of `positions`) saves a
        device sync when the caller already knows it. A `probe` gets some heads' attention (`HeadProbe`).
        """
        b = x.shape[0]
        if max_position is None:
            max_position = int(positions.max())
        length = max_position + 1
        cache.ensure_capacity(length)
        mask = None
        if b > 1 and bool((positions != max_position).any()):
            # streams at earlier positions must not see the stale tail of their rows
            mask = (torch.arange(length, device=x.device) <= positions[:, None])[:, None, None, :]
        dtype = self.lm_head.weight.dtype
        h = x.to(dtype) + self.transformer.wpe.weight[positions]
        for i, block in enumerate(self.transformer.h):
            a = block.ln_1(h)
            h = h + block.attn.step(a, cache.k[i, :b], cache.v[i, :b], positions, length, mask)
            if probe is not None and i == probe.layer:
                probe.read(block.attn, a, cache.k[i, :b], length, mask)
            h = h + block.mlp.step(block.ln_2(h))
        return project(self.lm_head, self.transformer.ln_f(h)).float()
