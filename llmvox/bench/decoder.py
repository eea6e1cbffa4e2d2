"""Decoder speed against the machine's own limit.

One decoding step must read every weight once, so a single stream can go no faster than
(bandwidth to the weights) / (weight bytes per step). We measure that bandwidth with the plainest
kernel that reads the same weights: one matrix-vector product per weight matrix, back to back. The
ratio of our step rate to that ceiling says how much overhead the model code adds.

Batched streams share each weight read, so their total rate rises until compute, not memory, limits.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from llmvox.model.gpt import GPT, GPTConfig
from llmvox.model.speech_decoder import NO_CODE, SpeechDecoder

RELEASED = GPTConfig(n_layer=4, n_head=8, n_embd=768, block_size=8192, bias=False, vocab_size=4096)
TEXT_DIM = 256


@dataclass
class Timing:
    seconds: float
    steps: int

    @property
    def per_s(self) -> float:
        return self.steps / self.seconds


def _best_of(fn: Callable[[], int], repeats: int) -> Timing:
    best: Timing | None = None
    for _ in range(repeats):
        start = time.perf_counter()
        steps = fn()
        t = Timing(time.perf_counter() - start, steps)
        if best is None or t.seconds < best.seconds:
            best = t
    assert best is not None
    return best


def random_decoder(config: GPTConfig = RELEASED, seed: int = 0) -> SpeechDecoder:
    torch.manual_seed(seed)
    gpt = GPT(config).eval()
    text = torch.randn(386, TEXT_DIM) * 0.5
    codes = torch.randn(config.vocab_size, config.n_embd - TEXT_DIM)
    return SpeechDecoder(gpt, text, codes).eval()


def weight_matrices(gpt: GPT) -> list[torch.Tensor]:
    """The matrices one step reads (positions read one row, so wpe is left out)."""
    mats = []
    for block in gpt.transformer.h:
        mats += [block.attn.c_attn.weight, block.attn.c_proj.weight, block.mlp.c_fc.weight, block.mlp.c_proj.weight]
    mats.append(gpt.lm_head.weight)
    return mats


def matvec_ceiling(gpt: GPT, steps: int, repeats: int = 3) -> dict[str, float]:
    """Bandwidth a plain matrix-vector product reaches on the decoder's own weights, and the step bound."""
    mats = weight_matrices(gpt)
    nbytes = sum(m.numel() * m.element_size() for m in mats)
    vecs = [torch.randn(m.shape[1], dtype=m.dtype) for m in mats]

    def run() -> int:
        for _ in range(steps):
            for m, v in zip(mats, vecs, strict=True):
                torch.mv(m, v)
        return steps

    with torch.inference_mode():
        run_warm = max(2, steps // 10)
        for _ in range(run_warm):
            for m, v in zip(mats, vecs, strict=True):
                torch.mv(m, v)
        t = _best_of(run, repeats)
    bandwidth = nbytes * t.per_s
    return {"weight_bytes_per_step": nbytes, "matvec_bandwidth_gb_s": bandwidth / 1e9, "ceiling_tokens_per_s": t.per_s}


def matmul_ceiling(gpt: GPT, batch: int, steps: int, repeats: int = 3) -> float:
    """Tokens/s bound for `batch` streams: one plain (batch x in) @ W^T per weight matrix, back to back,
    with nothing else of a step (the most a batched step can reach on this machine)."""
    mats = weight_matrices(gpt)
    xs = [torch.randn(batch, m.shape[1], dtype=m.dtype) for m in mats]

    def run() -> int:
        for _ in range(steps):
            for m, x in zip(mats, xs, strict=True):
                F.linear(x, m)
        return steps * batch

    with torch.inference_mode():
        for m, x in zip(mats, xs, strict=True):
            F.linear(x, m)
        return _best_of(run, repeats).per_s


PROFILE_GROUPS = {  # profiler op name -> what it is in a step
    "aten::mm": "weights", "aten::mv": "weights", "aten::addmv_": "weights", "aten::addmm": "weights",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention", "aten::bmm": "attention",
    "aten::_softmax": "attention", "aten::index_put_": "cache_writes", "aten::_index_put_impl_": "cache_writes",
    "aten::native_layer_norm": "norms", "aten::gelu": "activation", "aten::argmax": "sampling",
}


def profile_step(decoder: SpeechDecoder, batch: int, steps: int) -> dict[str, float]:
    """Where one batched step's time goes, in milliseconds per step by kind of work: the profiler's
    self time of each kind as a share of the profiled step, scaled to the unprofiled step (`wall`), so the
    profiler's own overhead does not inflate them; `python` is the rest (dispatch, Python, the profiler)."""
    from torch.profiler import ProfilerActivity, profile

    cache = decoder.new_cache(batch, steps + batch + 1)
    text = torch.randint(3, 259, (batch,))
    offsets = torch.arange(batch)

    def run() -> float:
        prev = torch.full((batch,), NO_CODE, dtype=torch.long)
        start = time.perf_counter()
        for n in range(steps):
            prev = decoder.step(text, prev, offsets + n, cache, n + batch - 1).argmax(-1)
        return time.perf_counter() - start

    with torch.inference_mode():
        run()
        wall = min(run() for _ in range(2))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            profiled = run()
    kinds = sorted(set(PROFILE_GROUPS.values())) + ["other_ops"]
    seconds = dict.fromkeys(kinds, 0.0)
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            seconds[PROFILE_GROUPS.get(event.key, "other_ops")] += event.self_cpu_time_total / 1e6
    scale = wall / profiled / steps * 1e3  # profiled seconds -> unprofiled ms per step
    out = {"wall": wall / steps * 1e3, **{k: v * scale for k, v in seconds.items()}}
    out["python"] = max(0.0, out["wall"] - sum(v for k, v in out.items() if k != "wall"))
    return {k: round(v, 3) for k, v in out.items()}


def stream_rate(decoder: SpeechDecoder, batch: int, steps: int, repeats: int = 3) -> float:
    """Total tokens/s when `batch` streams step together (each at its own, staggered position)."""
    cache = decoder.new_cache(batch, steps + batch + 1)
    text = torch.randint(3, 259, (batch,))
    offsets = torch.arange(batch)

    def run() -> int:
        prev = torch.full((batch,), NO_CODE, dtype=torch.long)
        for n in range(steps):
            positions = offsets + n
            logits = decoder.step(text, prev, positions, cache, n + batch - 1)
            prev = logits.argmax(-1)
        return steps * batch

    with torch.inference_mode():
        run()  # warm-up (allocations, kernel selection)
        return _best_of(run, repeats).per_s


def original_loop_rate(decoder: SpeechDecoder, codec: Any | None, steps: int) -> float:
    """Tokens/s of the original server's loop, re-created: it re-feeds the whole input sequence each
    step, grows its KV cache by concatenation, looks up the previous code through the codec, and
    decodes audio chunks (10, 30, 90, ... codes) in the same thread."""
    gpt = decoder.gpt
    n_layer, c = gpt.config.n_layer, gpt.config.n_embd
    nh = gpt.config.n_head

    def layer(block, x, kv):
        q, k, v = block.attn.c_attn(block.ln_1(x)).split(c, dim=2)
        if kv is not None:
            k = torch.cat([kv[0], k], dim=1)
            v = torch.cat([kv[1], v], dim=1)
        new = (k, v)
        t = k.shape[1]
        qh = q.view(1, 1, nh, c // nh).transpose(1, 2)
        kh = k.view(1, t, nh, c // nh).transpose(1, 2)
        vh = v.view(1, t, nh, c // nh).transpose(1, 2)
        y = F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(1, 1, c)
        x = x + block.attn.c_proj(y)
        return x + block.mlp(block.ln_2(x)), new

    with torch.inference_mode():
        start = time.perf_counter()
        prev_inputs = None
        kv = [None] * n_layer
        code = None
        pending: list[int] = []
        dump = 10
        for _ in range(steps):
            text = decoder.text_embedding(torch.tensor([[100]]))
            feat = (torch.zeros(1, 1, decoder.code_features.shape[1]) if code is None else
                    (codec.codes_to_features(torch.tensor([[code]])).permute(0, 2, 1) if codec is not None
                     else decoder.code_features[code].view(1, 1, -1)))
            x = F.normalize(torch.cat([text, feat], dim=2), p=2, dim=2, eps=1e-8)
            if prev_inputs is not None:
                x = torch.cat([prev_inputs, x], dim=1)
            prev_inputs = x
            h = x + gpt.transformer.wpe(torch.arange(x.shape[1]))
            h = h[:, [-1]]
            for i, block in enumerate(gpt.transformer.h):
                h, kv[i] = layer(block, h, kv[i])
            logits = gpt.lm_head(gpt.transformer.ln_f(h))[:, -1]
            code = int(F.softmax(logits, dim=-1).argmax(dim=-1).item())
            pending.append(code)
            if codec is not None and len(pending) >= dump:
                codec.decode_codes(torch.tensor([pending[:dump]]))
                pending = pending[dump:]
                dump = min(dump * 3, 1280)
        return steps / (time.perf_counter() - start)


def codes_agreement(decoder: SpeechDecoder, dtype: torch.dtype, steps: int = 120) -> dict[str, Any]:
    """How many greedy codes a lower precision shares with float32 on the parity sentence."""
    from llmvox.engine.generate import generate

    chunks = "Hello world, this is a test.".split()
    ref = generate(decoder, chunks, max_tokens=steps).codes
    decoder.gpt.to(dtype)
    try:
        low = generate(decoder, chunks, max_tokens=steps).codes
    finally:
        decoder.gpt.to(torch.float32)
    same_prefix = next((i for i, (a, b) in enumerate(zip(ref, low, strict=False)) if a != b), min(len(ref), len(low)))
    same = sum(a == b for a, b in zip(ref, low, strict=False))
    return {"steps": len(ref), "same_codes": same, "same_prefix": same_prefix}


def memory_bandwidth_gb_s(megabytes: int = 512, repeats: int = 5) -> float:
    """Streaming read bandwidth of main memory (sum over a buffer larger than the caches)."""
    buf = torch.ones(megabytes * 2**20 // 4)
    buf.sum()
    t = _best_of(lambda: (buf.sum(), 1)[1], repeats)
    return buf.numel() * 4 / t.seconds / 1e9


def run_decoder_bench(*, steps: int = 200, checkpoint: str | None = None, batches: tuple[int, ...] = (1, 4, 16),
                      codec: Any | None = None, log: Callable[[str], None] = print,
                      config: GPTConfig = RELEASED, bundle: str | None = None) -> dict[str, Any]:
    """All decoder figures, as one JSON-ready dict: random weights of `config`, or a `checkpoint`'s
    decoder, or a `bundle`'s (its decoder, text table and codebook). With a `codec`, the original loop
    also decodes its chunks."""
    if bundle:
        from llmvox.bundle import load_bundle_parts

        _, gpt, table, bundle_codec = load_bundle_parts(bundle)
        decoder = SpeechDecoder(gpt, table, bundle_codec.codebook).eval()
    elif checkpoint:
        from llmvox.model.checkpoint import load_llmvox_checkpoint

        gpt = load_llmvox_checkpoint(checkpoint)
        torch.manual_seed(0)
        decoder = SpeechDecoder(gpt, torch.randn(386, TEXT_DIM) * 0.5,
                                torch.randn(gpt.config.vocab_size, gpt.config.n_embd - TEXT_DIM)).eval()
    else:
        decoder = random_decoder(config)
    cfg = decoder.gpt.config
    result: dict[str, Any] = {
        "weights": f"bundle {bundle}" if bundle else f"checkpoint {checkpoint}" if checkpoint else "random",
        "model": cfg.to_dict(),
        "params": decoder.gpt.num_params(non_embedding=False),
        "steps": steps,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    log(f"decoder {cfg.n_layer}x{cfg.n_embd}, {result['params'] / 1e6:.1f} M params, {steps} steps, "
        f"{result['threads']} threads")
    result["memory_bandwidth_gb_s"] = memory_bandwidth_gb_s()
    log(f"main-memory read bandwidth: {result['memory_bandwidth_gb_s']:.1f} GB/s")
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        decoder.gpt.to(dtype)
        ceiling = matvec_ceiling(decoder.gpt, steps)
        rates = {b: stream_rate(decoder, b, steps) for b in batches}
        ceilings = {b: matmul_ceiling(decoder.gpt, b, steps) for b in batches if b > 1}
        profiles = {b: profile_step(decoder, b, min(steps, 100)) for b in (batches[0], batches[-1])}
        decoder.gpt.to(torch.float32)
        result[name] = {**ceiling, **{f"batch{b}_tokens_per_s": r for b, r in rates.items()}}
        result[name]["single_stream_fraction_of_ceiling"] = rates[batches[0]] / ceiling["ceiling_tokens_per_s"]
        for b, c in ceilings.items():
            result[name][f"batch{b}_ceiling_tokens_per_s"] = c
            result[name][f"batch{b}_fraction_of_ceiling"] = rates[b] / c
        result[name]["profile_ms_per_step"] = {f"batch{b}": p for b, p in profiles.items()}
        log(f"{name}: ceiling {ceiling['ceiling_tokens_per_s']:.0f} tok/s "
            f"({ceiling['weight_bytes_per_step'] / 1e6:.0f} MB/step at {ceiling['matvec_bandwidth_gb_s']:.1f} GB/s); "
            + ", ".join(f"batch {b}: {r:.0f} tok/s" for b, r in rates.items())
            + f"; single stream = {100 * result[name]['single_stream_fraction_of_ceiling']:.0f}% of ceiling"
            + "".join(f"; batch {b} = {100 * rates[b] / c:.0f}% of its ceiling ({c:.0f})" for b, c in ceilings.items()))
    result["bf16_agreement"] = codes_agreement(decoder, torch.bfloat16)
    log(f"bf16 shares {result['bf16_agreement']['same_codes']}/{result['bf16_agreement']['steps']} codes with fp32 "
        f"(identical for the first {result['bf16_agreement']['same_prefix']})")
    orig_steps = min(steps, 300)
    result["original_loop_tokens_per_s"] = original_loop_rate(decoder, codec, orig_steps)
    log(f"original-style loop: {result['original_loop_tokens_per_s']:.0f} tok/s "
        f"({'with' if codec is not None else 'without'} codec chunk decodes)")
    best = "bf16" if result["bf16"]["batch1_tokens_per_s"] > result["fp32"]["batch1_tokens_per_s"] else "fp32"
    result["best_precision"] = best
    result["single_stream_tokens_per_s"] = result[best]["batch1_tokens_per_s"]
    result["single_stream_fp32_tokens_per_s"] = result["fp32"]["batch1_tokens_per_s"]
    if 16 in batches:
        best16 = max(("fp32", "bf16"), key=lambda n: result[n]["batch16_tokens_per_s"])
        result["batch16_precision"] = best16
        result["batch16_tokens_per_s"] = result[best16]["batch16_tokens_per_s"]
        result["batch16_ceiling_tokens_per_s"] = result[best16]["batch16_ceiling_tokens_per_s"]
        result["batch16_fraction_of_ceiling"] = result[best16]["batch16_fraction_of_ceiling"]
    result["ceiling_tokens_per_s"] = result[best]["ceiling_tokens_per_s"]
    result["single_stream_fraction_of_ceiling"] = result["single_stream_tokens_per_s"] / result["ceiling_tokens_per_s"]
    result["speedup_vs_original_loop"] = result["single_stream_tokens_per_s"] / result["original_loop_tokens_per_s"]
    if "batch16_tokens_per_s" in result:
        result["batch16_vs_original_single"] = result["batch16_tokens_per_s"] / result["original_loop_tokens_per_s"]
    result["audio_seconds_per_second_single"] = result["single_stream_tokens_per_s"] / 75.0
    if not math.isfinite(result["single_stream_tokens_per_s"]):
        raise RuntimeError("benchmark produced a non-finite rate")
    return result
