"""Side-by-side log-mel spectrograms of WAV files (model-card figures: the voice next to its teacher)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from llmvox.errors import LLMVoXError


def log_mel(audio: np.ndarray, sample_rate: int, n_mels: int = 100) -> np.ndarray:
    """(n_mels, frames) log-magnitude mel spectrogram (n_fft 1024, hop 256), floored at -11.5."""
    import torch

    from llmvox.train.losses import MelSpectrogram

    mel = MelSpectrogram(sample_rate, 1024, 256, n_mels)
    with torch.no_grad():
        spec = mel(torch.from_numpy(np.asarray(audio, dtype=np.float32))[None])[0]
    return torch.log(spec.clamp(min=1e-5)).numpy()


def spectrogram_figure(wavs: Mapping[str, str | Path], out_png: str | Path, title: str | None = None) -> Path:
    """One row per labelled WAV, on a shared time axis and colour scale; writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import soundfile as sf

    if not wavs:
        raise LLMVoXError("spectrogram figure: no WAV files given")
    specs, rates = {}, {}
    for label, path in wavs.items():
        try:
            audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise LLMVoXError(f"cannot read {path}: {exc}") from None
        specs[label], rates[label] = log_mel(audio.mean(axis=1), rate), rate
    longest = max(s.shape[1] * 256 / rates[k] for k, s in specs.items())
    low = min(float(s.min()) for s in specs.values())
    high = max(float(s.max()) for s in specs.values())
    fig, axes = plt.subplots(len(specs), 1, figsize=(10, 2.4 * len(specs)), squeeze=False, sharex=True)
    for ax, (label, spec) in zip(axes[:, 0], specs.items(), strict=True):
        seconds = spec.shape[1] * 256 / rates[label]
        ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=low, vmax=high,
                  extent=(0, seconds, 0, spec.shape[0]))
        ax.set_xlim(0, longest)
        ax.set_ylabel(f"{label}\nmel bin")
    axes[-1, 0].set_xlabel("seconds")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
