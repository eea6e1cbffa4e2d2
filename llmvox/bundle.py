"""The llmvox bundle: one folder with everything a voice needs, loadable without pickle or transformers.

Layout:
    config.json          format/version, decoder sizes, codec config, special ids, generation defaults
    decoder.safetensors  the GPT (nanoGPT names) + `text_embedding.weight` (386 x d_text)
    codec.safetensors    the WavTokenizer codec (encoder, codebook, backbone, head)
    README.md            optional model card

`convert_original` builds one from the three original sources (LLMVoX checkpoint, charsiu T5 folder,
WavTokenizer YAML + Lightning checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from llmvox.errors import LLMVoXError
from llmvox.model.checkpoint import load_state_strict
from llmvox.model.gpt import GPT, GPTConfig

BUNDLE_FORMAT = "llmvox-bundle"
BUNDLE_VERSION = 1
TEXT_TABLE_KEY = "text_embedding.weight"


def is_bundle(path: str | Path) -> bool:
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("format") == BUNDLE_FORMAT
    except (json.JSONDecodeError, OSError):
        return False


def read_bundle_config(path: str | Path) -> dict[str, Any]:
    folder = Path(path)
    if not folder.is_dir():
        raise LLMVoXError(f"bundle folder not found: {folder}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise LLMVoXError(f"{folder} is not an llmvox bundle (no config.json)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise LLMVoXError(f"{config_file} is not valid JSON: {exc}") from None
    if config.get("format") != BUNDLE_FORMAT:
        raise LLMVoXError(f"{folder} is not an llmvox bundle (config.json format is {config.get('format')!r})")
    if int(config.get("version", 0)) > BUNDLE_VERSION:
        raise LLMVoXError(f"{folder} is bundle version {config['version']}; this llmvox reads up to {BUNDLE_VERSION}")
    return config


def read_bundle_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise LLMVoXError(f"bundle file missing: {path}")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own types for corrupt headers
        raise LLMVoXError(f"{path} is not a readable safetensors file: {exc}") from None


def load_bundle_parts(path: str | Path) -> tuple[dict[str, Any], GPT, torch.Tensor, Any]:
    """(config, GPT, text table, codec) from a bundle folder, all float32 on the CPU."""

    folder = Path(path)
    config = read_bundle_config(folder)
    tensors = read_bundle_tensors(folder / "decoder.safetensors")
    text_table = tensors.pop(TEXT_TABLE_KEY, None)
    if text_table is None:
        raise LLMVoXError(f"{folder}/decoder.safetensors lacks {TEXT_TABLE_KEY}")
    gpt = GPT(GPTConfig.from_dict(config["decoder"]))
    load_state_strict(gpt, {k: v.float() for k, v in tensors.items()}, f"{folder}/decoder.safetensors")
    return config, gpt.eval(), text_table.float(), load_bundle_codec(folder).eval()


def load_bundle_codec(path: str | Path, device: str = "cpu") -> Any:
    """Only the codec of a bundle (or of a codec milestone folder): config.json["codec"] + codec.safetensors."""
    from llmvox.codec.checkpoint import wavtokenizer_from_bundle

    folder = Path(path)
    config = read_bundle_config(folder)
    if "codec" not in config:
        raise LLMVoXError(f"{folder}/config.json has no 'codec' section")
    return wavtokenizer_from_bundle(config["codec"], read_bundle_tensors(folder / "codec.safetensors"), device=device)


def _stored(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating-point tensors at the storage precision, contiguous on the CPU (others as they are)."""
    return {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).cpu().contiguous()
            for k, v in state.items()}


def save_bundle_codec(path: str | Path, codec: Any, *, dtype: torch.dtype = torch.float32) -> Path:
    """Write (or replace) a bundle's codec.safetensors; a vocoder trained on frozen codes swaps in so."""
    from llmvox.codec.checkpoint import codec_state_for_bundle

    target = Path(path) / "codec.safetensors"
    save_file(_stored(codec_state_for_bundle(codec), dtype), str(target))
    target.chmod(0o644)
    return target


def save_bundle(
    path: str | Path,
    gpt: GPT,
    text_table: torch.Tensor,
    codec: Any,
    *,
    dtype: torch.dtype = torch.float32,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle folder. `dtype` (float32, bfloat16, float16) is the storage precision."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    decoder_state = _stored(gpt.state_dict(), dtype)
    decoder_state[TEXT_TABLE_KEY] = text_table.detach().to(dtype).cpu().contiguous()
    save_file(decoder_state, str(folder / "decoder.safetensors"))
    (folder / "decoder.safetensors").chmod(0o644)  # safetensors writes 0600; a bundle is shared
    save_bundle_codec(folder, codec, dtype=dtype)
    config = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "sample_rate": int(codec.sample_rate),
        "decoder": gpt.config.to_dict(),
        "text_embedding": {"rows": int(text_table.shape[0]), "dim": int(text_table.shape[1])},
        "codec": codec.config.to_dict(),
        "special_ids": {"pad": 384, "sentence_end": 385, "eoa": 453, "chunk_end": 1},
        "generation": {"max_audio_length": 8000},
        "storage_dtype": str(dtype).removeprefix("torch."),
    }
    if extra_config:
        config.update(extra_config)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder
