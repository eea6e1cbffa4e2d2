"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from llmvox.hub import RELEASED_CODEC_CONFIG

# ============================================================================================
# codec
# ============================================================================================

# The model part of the released WavTokenizer config, as the package carries it (the hub loader reads
# the same file): 75 frames/s, one 4096-entry codebook, a 12-layer 768-wide Vocos backbone.
FULL_SIZE_CODEC_YAML = RELEASED_CODEC_CONFIG.read_text()


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """The original code's outputs (../shared/parity), or $LLMVOX_PARITY_DIR."""
    override = os.environ.get("LLMVOX_PARITY_DIR")
    path = Path(override) if override else Path(__file__).resolve().parents[2] / "shared" / "parity"
    if not (path / "reference.npz").is_file():
        pytest.fail(f"parity fixtures not found in {path} (set LLMVOX_PARITY_DIR)")
    return path


@pytest.fixture(scope="session")
def parity_ref(parity_dir: Path) -> dict[str, np.ndarray]:
    with np.load(parity_dir / "reference.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def codec_paths(parity_dir: Path) -> tuple[Path, Path]:
    """(YAML config, Lightning checkpoint) of the small parity codec."""
    return parity_dir / "wavtokenizer_small.yaml", parity_dir / "wavtokenizer.ckpt"


@pytest.fixture(scope="session")
def small_codec(codec_paths):
    from llmvox.codec.checkpoint import load_wavtokenizer

    torch.set_num_threads(1)
    return load_wavtokenizer(*codec_paths)


@pytest.fixture(scope="session")
def full_size_codec_files(tmp_path_factory) -> tuple[Path, Path]:
    """A released-size YAML and a random-weight checkpoint in the original layout (saved by us)."""
    from llmvox.codec.checkpoint import save_lightning_checkpoint
    from llmvox.codec.config import CodecConfig
    from llmvox.codec.wavtokenizer import WavTokenizer

    folder = tmp_path_factory.mktemp("full_codec")
    config_path = folder / "wavtokenizer_full.yaml"
    config_path.write_text(FULL_SIZE_CODEC_YAML)
    torch.manual_seed(0)
    model = WavTokenizer(CodecConfig.from_yaml(config_path))
    ckpt_path = folder / "wavtokenizer_full.ckpt"
    import yaml

    save_lightning_checkpoint(model, ckpt_path, yaml.safe_load(FULL_SIZE_CODEC_YAML))
    return config_path, ckpt_path
