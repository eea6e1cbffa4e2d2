"""Reading and writing audio: any file soundfile can read becomes float32 mono at the codec rate.

The codec works on 24 kHz mono; users hand us whatever they have (16 kHz stereo phone recordings,
44.1 kHz music files, bytes from an upload). Channels are averaged (as the original does) and the
rate is converted with soxr.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from llmvox.errors import LLMVoXError

DEFAULT_RATE = 24000
SILENCE_PEAK = 1e-4  # about -80 dBFS: below this nothing audible is left


def load_audio(source: str | Path | bytes, target_rate: int = DEFAULT_RATE,
               max_seconds: float | None = None) -> np.ndarray:
    """Read audio (path or the bytes of a file) -> float32 mono samples at `target_rate`.

    Raises LLMVoXError for a missing path, data that is not audio, or a file without samples.
    With `max_seconds`, a longer file is refused (InputTooLarge) from its header, before its samples
    are decoded, and never more than that many seconds are read even when the header lies.
    Silent audio is returned as is; check it with `is_silent` where it matters.
    """
    import soundfile as sf

    from llmvox.input_errors import InputTooLarge

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
        with sf.SoundFile(handle) as f:
            rate = f.samplerate
            limit = None if max_seconds is None else int(max_seconds * rate) + 1
            if limit is not None and f.frames > limit:
                raise InputTooLarge(f"{label} is {f.frames / rate:.1f} s long; the limit is {max_seconds:g} s")
            data = f.read(frames=-1 if limit is None else limit + 1, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise LLMVoXError(f"{label} is not a readable audio file ({_reason(exc)})") from None
    if limit is not None and data.shape[0] > limit:  # a header that did not tell the length
        raise InputTooLarge(f"{label} is longer than the limit of {max_seconds:g} s")
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


def _reason(exc: BaseException) -> str:
    """libsndfile's reason without the object it failed on ("Error opening <_io.BytesIO at 0x...>: ...")."""
    line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    line = re.sub(r"^Error opening .*?: ", "", line)
    line = re.sub(r"<[^>]* at 0x[0-9a-f]+>", "the data", line).strip().rstrip(".")
    return line[:1].lower() + line[1:]
