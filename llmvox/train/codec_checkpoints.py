"""What a codec run folder holds, and how each of its files is written and read back.

    DIR/state.pt                  the full training state, for an exact resume
    DIR/wavtokenizer.ckpt         the original Lightning layout, with DIR/config.yaml beside it
    DIR/train.jsonl, eval.jsonl   one JSON record per logged step / evaluation
    DIR/milestones/NAME/          inference-only exports (codec.safetensors + config.json): codec bundles

Each of these is a format other code (resume, the original loader, bundles, our tools) depends on, so
they are kept together and apart from the training loop. Writes go to a temporary file first and are
then renamed, so a run killed while saving leaves the previous copy whole.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from llmvox.codec.config import CodecConfig
from llmvox.codec.wavtokenizer import WavTokenizer
from llmvox.errors import LLMVoXError
from llmvox.train.codec_config import CodecTrainSettings, full_yaml

STATE_FILE = "state.pt"
CKPT_FILE = "wavtokenizer.ckpt"
CONFIG_FILE = "config.yaml"
TRAIN_LOG = "train.jsonl"
EVAL_LOG = "eval.jsonl"
MILESTONES = "milestones"
STATE_VERSION = 1


# --- the training state and the original-layout checkpoint ---------------------------------------


def read_training_state(out_dir: Path) -> dict[str, Any]:
    """The state a run saved in `out_dir` (for --resume)."""
    state_path = out_dir / STATE_FILE
    if not state_path.is_file():
        raise LLMVoXError(f"--resume: no training state at {state_path}")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    if state.get("version") != STATE_VERSION:
        raise LLMVoXError(f"{state_path}: unsupported training state version {state.get('version')}")
    return state


def resumed_run(state: dict[str, Any], overrides: dict[str, Any] | None) -> tuple[CodecConfig, CodecTrainSettings, bool]:
    """The saved run's config and settings with `overrides` applied, and whether this resume starts phase B."""
    config = CodecConfig.from_dict(state["codec_config"])
    previous = CodecTrainSettings.from_dict(state["settings"])
    settings = CodecTrainSettings.from_dict({**previous.to_dict(), **(overrides or {})})
    phase_switch = settings.freeze_encoder and not previous.freeze_encoder
    if phase_switch:
        # A fresh warmup + cosine schedule for the remaining steps.
        settings.schedule_start = int(state["step"])
    return config, settings, phase_switch


def write_checkpoints(out_dir: Path, state: dict[str, Any], model: WavTokenizer, config: CodecConfig,
                      settings: CodecTrainSettings, data_path: str | None) -> None:
    """Full state (atomic) + the original-layout checkpoint and YAML for loading."""
    from llmvox.codec.checkpoint import save_lightning_checkpoint

    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_torch_save(state, out_dir / STATE_FILE)
    doc = full_yaml(config, settings, data_path)
    _atomic_write_text(out_dir / CONFIG_FILE, _yaml_dump(doc))
    tmp = out_dir / f".{CKPT_FILE}.{os.getpid()}.tmp"
    save_lightning_checkpoint(model, tmp, doc)
    os.replace(tmp, out_dir / CKPT_FILE)


# --- milestones: inference-only exports --------------------------------------------------------


def codes_fingerprint(model: WavTokenizer) -> str:
    """A short hash of the encoder + codebook: equal fingerprints mean equal codes."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("encoder.") or name == "quantizer.embed":
            digest.update(name.encode())
            digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def export_milestone(out_dir: Path, name: str, model: WavTokenizer, config: CodecConfig,
                     settings: CodecTrainSettings, data_path: str | None, *, step: int, phase: str,
                     metrics: dict[str, Any]) -> Path:
    """Inference-only copy + config.json in `out_dir/milestones/name`, loadable as a codec bundle.

    Backbone and head are stored at `milestone_dtype`; encoder and codebook in float32.
    """
    from safetensors.torch import save_file

    from llmvox.bundle import BUNDLE_FORMAT, BUNDLE_VERSION
    from llmvox.codec.checkpoint import codec_state_for_bundle

    dtype = getattr(torch, settings.milestone_dtype)
    folder = out_dir / MILESTONES / name
    tmp = folder.with_name(f".{name}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    # Encoder and codebook stay float32: they decide the codes, and rounding them moves codes.
    tensors = {k: (v.to(dtype) if v.is_floating_point() and not k.startswith(("encoder.", "quantizer."))
                   else v).contiguous()
               for k, v in codec_state_for_bundle(model).items()}
    save_file(tensors, str(tmp / "codec.safetensors"))
    (tmp / "codec.safetensors").chmod(0o644)  # safetensors writes 0600
    bundle_config = {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "kind": "codec-only",
        "sample_rate": config.sample_rate, "codec": config.to_dict(),
        "storage_dtype": f"{settings.milestone_dtype} (backbone, head); float32 (encoder, codebook)",
        "step": step,
        "phase": phase,
        "codes_fingerprint": codes_fingerprint(model),
        "metrics": metrics, "training": settings.to_dict(),
    }
    (tmp / "config.json").write_text(json.dumps(bundle_config, indent=2) + "\n")
    _atomic_write_text(tmp / CONFIG_FILE, _yaml_dump(full_yaml(config, settings, data_path)))
    if folder.exists():
        import shutil

        old = folder.with_name(f".{name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old)
    else:
        os.replace(tmp, folder)
    return folder


def load_milestone_weights(model: WavTokenizer, config: CodecConfig, folder: Path) -> None:
    """Load a milestone export (codec.safetensors + config.json) into `model`: a committed milestone
    lets a fresh machine continue where the optimiser state was lost."""
    from safetensors.torch import load_file

    config_file, weights = folder / "config.json", folder / "codec.safetensors"
    if not config_file.is_file() or not weights.is_file():
        raise LLMVoXError(f"--init_weights: {folder} needs config.json and codec.safetensors (a milestone export)")
    saved = CodecConfig.from_dict(json.loads(config_file.read_text())["codec"])
    if saved.to_dict() != config.to_dict():
        raise LLMVoXError(f"--init_weights: {folder} was trained with other codec sizes than --config")
    tensors = {k: v.float() for k, v in load_file(str(weights)).items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise LLMVoXError(f"--init_weights: {folder} does not match the model "
                          f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")


# --- JSONL logs --------------------------------------------------------------------------------


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Records of a JSONL log (tolerates a truncated last line)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            with contextlib.suppress(json.JSONDecodeError):
                yield json.loads(line)


# --- atomic writes -----------------------------------------------------------------------------


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _yaml_dump(doc: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(copy.deepcopy(doc), sort_keys=False)
