"""Training speed on this machine, beside what its matrix units can do.

A training step is almost all matrix products (6 FLOPs per parameter per token, plus attention), so
the machine's measured matmul FLOP/s bounds the tokens/s any trainer can reach; the ratio (model FLOPs
utilisation) says how much of the step is overhead. Steps are real trainer steps (`optimizer_step`:
forward, loss, backward, clipping, AdamW) on random data of the original shapes.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llmvox.model.gpt import GPT, GPTConfig
from llmvox.model.speech_decoder import SpeechDecoder
from llmvox.text.tokenizer import TEXT_VOCAB_SIZE
from llmvox.train.batching import make_batch
from llmvox.train.optim import autocast_context, make_optimizer, optimizer_step

CODES_PER_SECOND = 75.0  # 24 kHz / hop 320


@dataclass(frozen=True)
class BenchSize:
    name: str
    config: GPTConfig
    text_dim: int  # the rest of n_embd is the codebook width


SIZES = {
    "released": BenchSize("released", GPTConfig(n_layer=4, n_head=8, n_embd=768, block_size=8192, vocab_size=4096),
                          256),
    "small": BenchSize("small", GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=2048, vocab_size=1024), 128),
    "tiny": BenchSize("tiny", GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=2048, vocab_size=1024), 96),
}


def _best_seconds(fn: Callable[[], None], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_flops(dtype: torch.dtype, m: int = 4096, k: int = 768, n: int = 3072, repeats: int = 20) -> float:
    """Measured FLOP/s of one (m x k) @ (k x n) product, the shape of a decoder MLP layer in training."""
    # best of many: on a shared machine the fastest run is the one nobody else disturbed
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    torch.mm(a, b)  # warm up (kernel selection, page faults)
    seconds = _best_seconds(lambda: torch.mm(a, b), repeats)
    return 2.0 * m * k * n / seconds


def flops_per_token(config: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 per matmul weight plus the attention products (nanoGPT's estimate)."""
    c = config
    weights = c.n_layer * 12 * c.n_embd * c.n_embd + c.n_embd * c.vocab_size
    return 6.0 * weights + 12.0 * c.n_layer * c.n_embd * seq_len


def measure_training(size: BenchSize, dtype: torch.dtype, *, batch_size: int = 8, seq_len: int = 512,
                     steps: int = 3, seed: int = 0) -> dict[str, Any]:
    """Tokens/s of full optimizer steps (one micro-batch of batch_size x seq_len each)."""
    torch.manual_seed(seed)
    config = size.config
    gpt = GPT(config)
    rng = np.random.default_rng(seed)
    code_dim = config.n_embd - size.text_dim
    decoder = SpeechDecoder(gpt, torch.randn(TEXT_VOCAB_SIZE, size.text_dim), torch.randn(config.vocab_size, code_dim))
    decoder.train()
    params = [p for p in decoder.parameters() if p.requires_grad]
    optimizer = make_optimizer(decoder, learning_rate=1e-4, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu")
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ctx = autocast_context("cpu", dtype)
    codes = [rng.integers(0, config.vocab_size, seq_len - 1) for _ in range(batch_size)]
    texts = [rng.integers(3, 259, seq_len // 8) for _ in range(batch_size)]
    batch = make_batch(codes, texts, max_len=seq_len, eoa_id=min(453, config.vocab_size - 1))
    tokens = batch.num_targets
    optimizer_step(decoder, params, optimizer, scaler, [batch], ctx, 1.0)  # warm-up step
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer_step(decoder, params, optimizer, scaler, [batch], ctx, 1.0)
        times.append(time.perf_counter() - start)
    # the fastest step is the least disturbed by other processes on a shared machine
    seconds = min(times)
    tps = tokens / seconds
    fpt = flops_per_token(config, seq_len)
    return {
        "tokens_per_s": round(tps, 1),
        "tokens_per_s_median": round(tokens / float(np.median(times)), 1),
        "step_seconds": round(seconds, 3),
        "step_seconds_all": [round(t, 3) for t in times],
        "audio_seconds_per_s": round(tps / CODES_PER_SECOND, 1),
        "model_flops_per_s": fpt * tps,
    }


def run_train_bench(*, sizes: list[str] | None = None, batch_size: int = 8, seq_len: int = 512, steps: int = 3,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole benchmark: matmul FLOP/s, then tokens/s per size in fp32 and bf16 autocast.

    The matmul rate is measured before and after the training runs and the higher one is kept, so a
    burst of load from other processes during one measurement does not inflate the utilisation figures.
    """
    sizes = sizes or ["released", "small"]
    load_before = os.getloadavg()
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    peak = {name: matmul_flops(dtype) for name, dtype in dtypes.items()}
    log(f"matmul 4096x768 @ 768x3072: fp32 {peak['float32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bfloat16'] / 1e9:.0f} GFLOP/s")
    results = []
    for name in sizes:
        size = SIZES[name]
        c = size.config
        gpt_params = GPT(c).num_params(non_embedding=False)
        row: dict[str, Any] = {
            "size": name, "n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd, "codes": c.vocab_size,
            "block_size": c.block_size, "params_millions": round(gpt_params / 1e6, 2),
            "flops_per_token": flops_per_token(c, seq_len),
        }
        for dname, dtype in dtypes.items():
            m = measure_training(size, dtype, batch_size=batch_size, seq_len=seq_len, steps=steps)
            row[dname] = m
            log(f"{name:8s} {c.n_layer}x{c.n_embd} {c.vocab_size} codes, {dname:8s}: {m['tokens_per_s']:8.0f} tokens/s "
                f"({m['audio_seconds_per_s']:.0f} s of audio per s)")
        results.append(row)
    for name, dtype in dtypes.items():
        peak[name] = max(peak[name], matmul_flops(dtype))
    for row in results:
        for dname in dtypes:
            row[dname]["mfu_vs_measured_matmul"] = round(row[dname].pop("model_flops_per_s") / peak[dname], 3)
    log(f"matmul (best of both measurements): fp32 {peak['float32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {peak['bfloat16'] / 1e9:.0f} GFLOP/s")
    return {
        "benchmark": "llmvox bench train",
        "batch_size": batch_size, "seq_len": seq_len, "timed_steps": steps,
        "matmul_flops_per_s": {k: round(v) for k, v in peak.items()},
        "sizes": results,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
    }
