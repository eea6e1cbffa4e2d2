"""The text embedding table: the charsiu ByT5 g2p input embedding, extended the way LLMVoX extends it.

Only the T5 shared input embedding (384 x 256) is used. The original adds `[PAD]` (row 384) and then
`EOS` (row 385) one at a time, each initialised to the mean of all rows before it, so row 385 is the
mean of rows 0-384 (which already includes row 384).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llmvox.errors import LLMVoXError
from llmvox.text.tokenizer import TEXT_VOCAB_SIZE

_EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight")


def extend_with_special_rows(table: torch.Tensor, target_rows: int = TEXT_VOCAB_SIZE) -> torch.Tensor:
    """Append rows, each the mean of all rows before it, until the table has `target_rows` rows."""
    current = table.float()
    while current.shape[0] < target_rows:
        current = torch.cat([current, current.mean(dim=0, keepdim=True)], dim=0)
    return current.contiguous()


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    safetensors_file = folder / "model.safetensors"
    bin_file = folder / "pytorch_model.bin"
    if safetensors_file.exists():
        from safetensors.torch import load_file

        try:
            return load_file(str(safetensors_file))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise LLMVoXError(f"{safetensors_file} is not a readable safetensors file: {exc}") from None
    if bin_file.exists():
        try:
            state = torch.load(bin_file, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for corrupt pickles
            raise LLMVoXError(f"{bin_file} is not a readable PyTorch checkpoint: {exc}") from None
        if not isinstance(state, dict):
            raise LLMVoXError(f"{bin_file} does not hold a state dict")
        return state
    raise LLMVoXError(f"{folder} has neither model.safetensors nor pytorch_model.bin (expected a T5 checkpoint folder)")


def load_t5_text_embedding(path: str | Path) -> torch.Tensor:
    """The extended (386 x d_model) text embedding table from a T5 checkpoint folder."""
    folder = Path(path)
    if not folder.exists():
        raise LLMVoXError(
            f"encoder model folder not found: {folder} (give a local copy of the charsiu ByT5 g2p model)"
        )
    if not folder.is_dir():
        raise LLMVoXError(f"encoder model path must be a T5 checkpoint folder, got a file: {folder}")
    tensors = _read_tensors(folder)
    table = next((tensors[k] for k in _EMBEDDING_KEYS if k in tensors), None)
    if table is None:
        raise LLMVoXError(f"{folder}: no text embedding found (looked for {', '.join(_EMBEDDING_KEYS)})")
    config_file = folder / "config.json"
    if config_file.exists():
        config = json.loads(config_file.read_text())
        d_model = config.get("d_model")
        if d_model is not None and table.shape[1] != d_model:
            raise LLMVoXError(f"{folder}: embedding width {table.shape[1]} does not match d_model {d_model}")
    if table.ndim != 2 or table.shape[0] > TEXT_VOCAB_SIZE:
        raise LLMVoXError(f"{folder}: unexpected text embedding shape {tuple(table.shape)}")
    return extend_with_special_rows(table)
