"""Device names from flags ('cpu', 'cuda', 'cuda:N') to torch devices, with errors a user can act on."""

from __future__ import annotations

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
