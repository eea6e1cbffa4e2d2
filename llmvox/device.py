"""Device names from flags ('cpu', 'cuda', 'cuda:N') to torch devices, with errors a user can act on."""

from __future__ import annotations

import os

import torch

from llmvox.errors import LLMVoXError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' (or None = cpu) with a clear error where CUDA is absent."""
    if device is None or device == "":
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise LLMVoXError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LLMVoXError(f"device {device} requested but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LLMVoXError(f"device {device} does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif dev.type != "cpu":
        raise LLMVoXError(f"unsupported device {device!r} (use cpu, cuda or cuda:N)")
    return dev


def native_bf16(device: torch.device) -> bool:
    """Does `device` compute bfloat16 natively (a CUDA GPU that supports it, a CPU with AVX-512 BF16 or AMX)?"""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def decoder_dtype(choice: str, stored: torch.dtype, device: torch.device) -> torch.dtype:
    """The decoder's precision for `--dtype`: `auto` computes in the precision its weights are stored in
    where the device does that natively (bf16 bundles: the embedded voice), else float32 (every original
    checkpoint, whose codes float32 reproduces exactly)."""
    if choice == "auto":
        return torch.bfloat16 if stored == torch.bfloat16 and native_bf16(device) else torch.float32
    if choice not in ("float32", "bfloat16"):
        raise LLMVoXError(f"unknown dtype {choice!r} (use auto, float32 or bfloat16)")
    return getattr(torch, choice)


def set_decoder_dtype(voice, choice: str) -> torch.dtype:
    """Put a loaded voice's decoder in the precision `--dtype` names (`decoder_dtype`); returns it."""
    dtype = decoder_dtype(choice, voice.stored_dtype, voice.device)
    if dtype != torch.float32:
        voice.to_dtype(dtype)
    return dtype


def default_workers(device: str | torch.device) -> int:
    """Decoder workers per server: two (the original's two queues) on a GPU or a CPU of 4+ cores, one on
    a smaller CPU, where each worker's decoder and codec thread already fill the cores: two workers
    there put four busy threads on two cores, and one batched worker makes every stream's codes faster
    (measured in README, "Streaming without gaps")."""
    if str(device).startswith("cuda"):
        return 2
    return 2 if (os.cpu_count() or 1) >= 4 else 1
