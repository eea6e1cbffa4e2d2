"""Load and save WavTokenizer weights: the original Lightning checkpoint and our safetensors bundle.

The original checkpoint is a Lightning dict whose `state_dict` also carries the GAN discriminators,
loss buffers and the (unused) SEANet decoder. We keep only the encoder, codebook, backbone and head,
rename them to our module tree (see `llmvox.codec.wavtokenizer`), and load strictly: a key that is
missing, unexpected or of the wrong shape is an error naming it, because a silently half-loaded codec
just produces noise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from llmvox.codec.config import CodecConfig
from llmvox.codec.wavtokenizer import WavTokenizer, WeightNormConv1d
from llmvox.device import resolve_device
from llmvox.errors import LLMVoXError

# Prefixes of the original state dict that inference does not use.
IGNORED_PREFIXES = (
    "multiperioddisc.",
    "multiresddisc.",
    "dac.",
    "melspec_loss.",
    "feature_extractor.encodec.decoder.",
)
_ENCODER_ORIG = "feature_extractor.encodec.encoder."
_CODEBOOK_ORIG = "feature_extractor.encodec.quantizer.vq.layers.0._codebook."
_LIGHTNING_VERSION = "1.8.6"  # the layout version the released WavTokenizer checkpoints carry
_MAX_LISTED = 8


# --------------------------------------------------------------------------------------------
# Key renaming (original <-> ours)
# --------------------------------------------------------------------------------------------


def original_to_ours(key: str) -> str | None:
    """Map an original state-dict key to ours; None for keys inference ignores."""
    if key.startswith(IGNORED_PREFIXES):
        return None
    if key.startswith(_ENCODER_ORIG):
        return "encoder." + key[len(_ENCODER_ORIG):].replace(".conv.conv.", ".conv.")
    if key.startswith(_CODEBOOK_ORIG):
        return "quantizer." + key[len(_CODEBOOK_ORIG):]
    return key


def ours_to_original(key: str) -> str:
    """Inverse of `original_to_ours` for the keys we own."""
    if key.startswith("encoder."):
        rest = key[len("encoder."):]
        # Our SamePadConv1d holds the conv directly; the original nests it one level deeper.
        rest = re.sub(r"\.conv\.(weight_g|weight_v|weight|bias)$", r".conv.conv.\1", rest)
        return _ENCODER_ORIG + rest
    if key.startswith("quantizer."):
        return _CODEBOOK_ORIG + key[len("quantizer."):]
    return key


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def read_lightning_state_dict(ckpt_path: str | Path) -> dict[str, Tensor]:
    """The raw `state_dict` of an original WavTokenizer checkpoint (no pickle code is executed)."""
    path = Path(ckpt_path)
    if not path.exists():
        raise LLMVoXError(f"codec checkpoint not found: {path}")
    if not path.is_file():
        raise LLMVoXError(f"codec checkpoint is not a file: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the weights-only unpickler fails in many ways on foreign bytes
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LLMVoXError(
            f"{path} is not a readable PyTorch checkpoint ({first[:200]})"
        ) from None
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        state = raw["state_dict"]
    elif isinstance(raw, Mapping) and any(str(k).startswith(("backbone.", "head.")) for k in raw):
        state = raw  # a bare state dict (the original's pytorch_model.bin export)
    else:
        raise LLMVoXError(f"{path} is not a WavTokenizer checkpoint (no 'state_dict' with backbone/head weights)")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise LLMVoXError(f"{path}: state_dict entries are not tensors: {_listing(bad)}")
    return dict(state)


def load_wavtokenizer(config_path: str | Path, ckpt_path: str | Path,
                      device: str | torch.device = "cpu", fold_weight_norm: bool = True) -> WavTokenizer:
    """Build the codec from an original YAML config and Lightning checkpoint, strictly.

    `fold_weight_norm=False` keeps the encoder's (g, v) parameters for training.
    """
    dev = resolve_device(device)
    config = CodecConfig.from_yaml(config_path)
    state = read_lightning_state_dict(ckpt_path)
    ours: dict[str, Tensor] = {}
    for key, value in state.items():
        mapped = original_to_ours(key)
        if mapped is not None:
            ours[mapped] = value
    model = WavTokenizer(config)
    _load_strict(model, ours, f"codec config {config_path} does not match checkpoint {ckpt_path}",
                 name_of=ours_to_original)
    return _finish(model, dev, fold_weight_norm)


def _load_strict(model: WavTokenizer, tensors: Mapping[str, Tensor], context: str,
                 name_of=lambda k: k) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [
        f"{name_of(k)} {tuple(tensors[k].shape)} (model expects {tuple(v.shape)})"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_listing([name_of(k) for k in missing])}")
    if unexpected:
        problems.append(f"unexpected keys {_listing([name_of(k) for k in unexpected])}")
    if wrong:
        problems.append(f"wrong shapes {_listing(wrong)}")
    if problems:
        raise LLMVoXError(f"{context}: " + "; ".join(problems))
    model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()}, strict=True)


def _finish(model: WavTokenizer, device: torch.device, fold: bool) -> WavTokenizer:
    model.eval()
    if fold:
        model.fold_weight_norm_()
    return model.to(device)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"[{shown}{f', ... {more} more' if more > 0 else ''}]"


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def _unfolded_state(model: WavTokenizer) -> dict[str, Tensor]:
    """Our state dict with every encoder conv as (weight_g, weight_v), whatever the model's mode."""
    out: dict[str, Tensor] = {}
    folded_prefixes = {
        name + "." for name, m in model.named_modules() if isinstance(m, WeightNormConv1d) and m.folded
    }
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu", torch.float32).contiguous()
        prefix, _, leaf = key.rpartition(".")
        if leaf == "weight" and prefix + "." in folded_prefixes:
            # Any kernel w equals g * v / |v| with v = w and g = |w|.
            out[prefix + ".weight_g"] = value.norm(2, dim=(1, 2), keepdim=True)
            out[prefix + ".weight_v"] = value.clone()
        else:
            out[key] = value.clone()
    return out


def save_lightning_checkpoint(model: WavTokenizer, path: str | Path,
                              yaml_config_dict: dict[str, Any] | None = None) -> None:
    """Write `model` as an original-layout Lightning checkpoint (weight-norm convs as g/v).

    The SEANet decoder of the original is not part of our model, so it is not written; our loader
    does not need it.
    """
    yaml_config_dict = yaml_config_dict or model.config.to_yaml_dict()
    try:
        init_args = dict(yaml_config_dict["model"]["init_args"])
    except (KeyError, TypeError):
        raise LLMVoXError("yaml_config_dict must have the original model.init_args layout") from None
    hparams = {k: v for k, v in init_args.items() if k not in ("feature_extractor", "backbone", "head")}
    state = {ours_to_original(k): v for k, v in _unfolded_state(model).items()}
    checkpoint = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": _LIGHTNING_VERSION,
        "hparams_name": "kwargs",
        "hyper_parameters": hparams,
        "state_dict": state,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


# --------------------------------------------------------------------------------------------
# Our bundle (safetensors, no pickle)
# --------------------------------------------------------------------------------------------


def codec_state_for_bundle(model: WavTokenizer) -> dict[str, Tensor]:
    """Tensors to store in a safetensors file: our key names, encoder convs as (g, v), float32."""
    return _unfolded_state(model)


def wavtokenizer_from_bundle(config_dict: Mapping[str, Any], tensors: Mapping[str, Tensor],
                             device: str | torch.device = "cpu",
                             fold_weight_norm: bool = True) -> WavTokenizer:
    """Rebuild the codec from `CodecConfig.to_dict()` and `codec_state_for_bundle()` tensors."""
    dev = resolve_device(device)
    model = WavTokenizer(CodecConfig.from_dict(dict(config_dict)))
    _load_strict(model, tensors, "codec bundle tensors do not match its config")
    return _finish(model, dev, fold_weight_norm)
