"""Reading and writing audio: any file soundfile can read becomes float32 mono at the codec rate.

The codec works on 24 kHz mono; users hand us whatever they have (16 kHz stereo phone recordings,
44.1 kHz music files, bytes from an upload). Channels are averaged (as the original does) and the
rate is converted with soxr.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from llmvox.errors import LLMVoXError

DEFAULT_RATE = 24000
SILENCE_PEAK = 1e-4  # about -80 dBFS: below this nothing audible is left


def load_audio(source: str | Path | bytes, target_rate: int = DEFAULT_RATE) -> np.ndarray:
    """Read audio (path or the bytes of a file) -> float32 mono samples at `target_rate`.

    Raises LLMVoXError for a missing path, data that is not audio, or a file without samples.
    Silent audio is returned as is; check it with `is_silent` where it matters.
    """
    import soundfile as sf

    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise LLMVoXError("audio input is empty (0 bytes)")
        label = "audio bytes"
        handle: io.BytesIO | str = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        if not path.exists():
            raise LLMVoXError(f"audio file not found: {path}")
        if not path.is_file():
            raise LLMVoXError(f"audio path is not a file: {path}")
        label = str(path)
        handle = str(path)
    try:
        data, rate = sf.read(handle, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise LLMVoXError(f"{label} is not a readable audio file ({_first_line(exc)})") from None
    if data.shape[0] == 0:
        raise LLMVoXError(f"{label} contains no audio samples")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        raise LLMVoXError(f"{label} contains NaN or infinite samples")
    return resample(mono, int(rate), target_rate)


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """float32 mono at `rate` -> float32 mono at `target_rate` (soxr, high quality)."""
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if rate == target_rate:
        return samples
    if rate <= 0 or target_rate <= 0:
        raise LLMVoXError(f"bad sample rates {rate} -> {target_rate}")
    import soxr

    return np.ascontiguousarray(soxr.resample(samples, rate, target_rate, quality="HQ"), dtype=np.float32)


def is_silent(samples: np.ndarray, threshold: float = SILENCE_PEAK) -> bool:
    """True when no sample reaches `threshold` in absolute value (or there are no samples)."""
    samples = np.asarray(samples)
    return samples.size == 0 or float(np.max(np.abs(samples))) < threshold


def save_audio(path: str | Path, samples: np.ndarray, rate: int = DEFAULT_RATE) -> None:
    """Write mono samples: `.npy` as float32 shape (N,); other extensions through soundfile.

    WAV files are written as 32-bit float so that nothing is clipped or rounded.
    """
    path = Path(path)
    data = np.asarray(samples, dtype=np.float32)
    if data.ndim == 2 and 1 in data.shape:
        data = data.reshape(-1)
    if data.ndim != 1:
        raise LLMVoXError(f"expected mono samples, got an array of shape {data.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npy":
        np.save(path, data)
        return
    import soundfile as sf

    fmt = path.suffix.lower().lstrip(".")
    if fmt.upper() not in sf.available_formats():
        raise LLMVoXError(f"cannot write audio with extension {path.suffix!r} (use .wav, .flac or .npy)")
    subtype = "FLOAT" if fmt == "wav" else None
    sf.write(str(path), data, int(rate), subtype=subtype)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
