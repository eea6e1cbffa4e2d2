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

from llmvox.codec.config import SAMPLE_RATE
from llmvox.errors import LLMVoXError

SILENCE_PEAK = 1e-4  # about -80 dBFS: below this nothing audible is left
MAX_RATE = 768_000  # higher header rates are nonsense, and soxr spends seconds converting them
READ_BLOCK_SAMPLES = 1 << 18  # samples (frames x channels) per read: 1 MiB of float32
UNKNOWN_FRAMES = 2**63 - 1  # SF_COUNT_MAX: libsndfile's frame count when a header does not know it


def load_audio(source: str | Path | bytes, target_rate: int = SAMPLE_RATE,
               max_seconds: float | None = None, *, label: str | None = None) -> np.ndarray:
    """Read audio (path or the bytes of a file) -> float32 mono samples at `target_rate`.

    Raises LLMVoXError for a missing path, data that is not audio, or a file without samples.
    With `max_seconds` (None or 0: no limit), a longer file is refused (InputTooLarge) from its header,
    before its samples are decoded, and never more than that many seconds (+1 frame) are read, even when
    the header lies or does not know the length (streamed FLAC/WAV). Samples are read in blocks of at
    most READ_BLOCK_SAMPLES and mixed to mono as they come, so memory follows the mono length.
    `label` names bytes in messages ("audio bytes" by default). Silent audio is returned as is; check it
    with `is_silent` where it matters.
    """
    import soundfile as sf

    from llmvox.input_errors import InputTooLarge

    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise LLMVoXError(f"{label or 'audio input'} is empty (0 bytes)")
        label = label or "audio bytes"
        handle: io.BytesIO | str = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        if not path.exists():
            raise LLMVoXError(f"audio file not found: {path}")
        if not path.is_file():
            raise LLMVoXError(f"audio path is not a file: {path}")
        label = label or str(path)
        handle = str(path)
    limit = None
    try:
        with sf.SoundFile(handle) as f:
            rate, frames = int(f.samplerate), int(f.frames)
            if not 0 < rate <= MAX_RATE:
                raise LLMVoXError(f"{label} has a sample rate of {rate} Hz; rates up to {MAX_RATE} Hz are read")
            limit = int(max_seconds * rate) if max_seconds and max_seconds > 0 else None
            if limit is not None and 0 <= frames < UNKNOWN_FRAMES and frames > limit:
                raise InputTooLarge(f"{label} is {frames / rate:.1f} s long; the limit is {max_seconds:g} s")
            mono = _read_mono(f, None if limit is None else limit + 1)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise LLMVoXError(f"{label} is not a readable audio file ({_reason(exc)})") from None
    if limit is not None and len(mono) > limit:  # a header that did not tell (or lied about) the length
        raise InputTooLarge(f"{label} is over {max_seconds:g} s long; the limit is {max_seconds:g} s")
    if len(mono) == 0:
        raise LLMVoXError(f"{label} contains no audio samples")
    if not np.isfinite(mono).all():
        raise LLMVoXError(f"{label} contains NaN or infinite samples")
    return resample(mono, rate, target_rate)


def _read_mono(f, most: int | None) -> np.ndarray:
    """Up to `most` frames (None: all) of an open SoundFile as float32 mono, a block at a time: one
    read never allocates more than READ_BLOCK_SAMPLES, whatever the header claims."""
    block = max(1, READ_BLOCK_SAMPLES // max(1, f.channels))
    # soundfile seeks to "where the read ended" after each read, which libsndfile refuses at the end of a
    # FLAC whose header lies about (or does not know) its length; sequential reads need no seeks, and a
    # "non-seekable" file makes soundfile read what libsndfile has instead of trimming to the header's count
    f.seekable = lambda: False
    parts, total = [], 0
    while most is None or total < most:
        data = f.read(frames=block if most is None else min(block, most - total), dtype="float32", always_2d=True)
        if not len(data):
            break
        parts.append(data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0])
        total += len(data)
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


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


def save_audio(path: str | Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
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
