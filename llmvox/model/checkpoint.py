"""Reading and writing LLMVoX decoder checkpoints in the original `torch.save` format.

The original dict holds `model` (state dict; keys prefixed `_orig_mod.` when the model was compiled),
`model_args`, `iter_num`, `optimizer`, `config`. Loading is strict: every key must match in name and
shape, and the error names the keys that do not.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmvox.errors import LLMVoXError
from llmvox.model.gpt import GPT, GPTConfig

COMPILED_PREFIX = "_orig_mod."
_REQUIRED_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")


def read_torch_file(path: str | Path, what: str) -> Any:
    """torch.load with weights_only=True and user-facing errors."""
    path = Path(path)
    if not path.exists():
        raise LLMVoXError(f"{what} not found: {path}")
    if path.is_dir():
        raise LLMVoXError(f"{what} must be a file, got a folder: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and unpickler errors all mean "not a checkpoint"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LLMVoXError(f"{path} is not a readable PyTorch checkpoint ({what}): {first_line}") from None


def strip_compiled_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix(COMPILED_PREFIX): v for k, v in state.items()}


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `module`, failing with the offending key names on any mismatch."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shape)):
        if keys:
            shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise LLMVoXError(f"{source} does not match the model: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def load_llmvox_checkpoint(path: str | Path) -> GPT:
    """The decoder from an original LLMVoX checkpoint (e.g. `ckpt_english_tiny.pt`), on the CPU."""
    ckpt = read_torch_file(path, "LLMVoX checkpoint")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise LLMVoXError(f"{path} is not an LLMVoX checkpoint (expected a dict with 'model' and 'model_args')")
    args = ckpt["model_args"]
    absent = [k for k in _REQUIRED_ARGS if k not in args]
    if absent:
        raise LLMVoXError(f"{path}: model_args lacks {', '.join(absent)}")
    config = GPTConfig.from_dict(dict(args))
    config.dropout = 0.0
    model = GPT(config)
    load_state_strict(model, strip_compiled_prefix(ckpt["model"]), str(path))
    return model.eval()


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_llmvox_checkpoint(
    path: str | Path,
    model: GPT,
    *,
    iter_num: int = 0,
    optimizer: dict | None = None,
    config: dict | None = None,
    extra: dict | None = None,
) -> None:
    """Write the original checkpoint dict, so the original inference code loads it too."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "model": state,
        "model_args": model.config.to_dict(),
        "iter_num": iter_num,
        "optimizer": optimizer or {},
        "config": config or {},
    }
    if extra:
        payload.update(extra)
    atomic_torch_save(payload, path)
