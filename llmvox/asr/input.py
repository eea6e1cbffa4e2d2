"""Spoken questions from clients -> 16 kHz float32 mono, or a precise error.

Two wire forms: the original's `audio_base64` (headerless int16 PCM at 16 kHz, as its client and web UI
send) and audio files (WAV, FLAC, OGG, ... at any rate) uploaded or base64-encoded. A base64 string that
decodes to a file header is read as that file, so clients may send either in the same field.

Before ASR runs, the audio is checked: it must decode, must not be longer than `max_seconds` (the
original's `--asr_max_audio_length`) and must contain speech: a cheap loudness check first, then the
Silero voice activity detector that ships inside faster-whisper. Whisper invents words for silence and
noise ("Thank you."), so such input is refused rather than answered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmvox.errors import LLMVoXError
from llmvox.input_errors import InputError, InputTooLarge, NoSpeech

ASR_RATE = 16_000
# four-byte signatures of the containers soundfile reads (WAV, FLAC, OGG, AIFF); shorter ones (MP3 sync
# words) would also match ordinary PCM samples, so raw PCM could be mistaken for a file
FILE_MAGIC = (b"RIFF", b"RIFX", b"fLaC", b"OggS", b"FORM")
FILE_BYTES_PER_SECOND = 96_000 * 2 * 4  # the densest file taken: 96 kHz stereo float32


@dataclass(frozen=True)
class AudioLimits:
    """What a spoken question may be."""

    max_seconds: float = 60.0  # --asr_max_audio_length
    min_seconds: float = 0.1
    speech_dbfs: float = -45.0  # some 30 ms frame must be at least this loud (RMS)
    vad: bool = True  # also ask Silero VAD (inside faster-whisper, when installed) for speech


def frame_levels_dbfs(samples: np.ndarray, rate: int, frame_s: float = 0.03) -> np.ndarray:
    """RMS level of consecutive frames in dBFS (a short input is one frame)."""
    samples = np.asarray(samples, dtype=np.float64).reshape(-1)
    frame = max(1, int(rate * frame_s))
    n = max(1, len(samples) // frame)
    usable = samples[: n * frame] if len(samples) >= frame else samples
    frames = usable.reshape(n, -1) if len(usable) else np.zeros((1, 1))
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-10))


def has_speech_energy(samples: np.ndarray, rate: int, threshold_dbfs: float = AudioLimits.speech_dbfs) -> bool:
    """True when the loudest 30 ms frame reaches `threshold_dbfs` (a cheap stand-in for a VAD)."""
    return float(frame_levels_dbfs(samples, rate).max()) >= threshold_dbfs


def check_speech(samples: np.ndarray, rate: int = ASR_RATE, limits: AudioLimits = AudioLimits(),
                 what: str = "audio") -> np.ndarray:
    """Raise LLMVoXError for audio that is too short, too long, broken or silent; return it otherwise."""
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    seconds = len(samples) / rate
    if not np.isfinite(samples).all():
        raise InputError(f"{what} contains NaN or infinite samples")
    if seconds < limits.min_seconds:
        raise NoSpeech(f"{what} is {seconds * 1000:.0f} ms long; at least {limits.min_seconds * 1000:.0f} ms "
                          "of speech is needed")
    if limits.max_seconds and seconds > limits.max_seconds:
        raise InputTooLarge(f"{what} is {seconds:.1f} s long; the limit is {limits.max_seconds:g} s "
                          "(--asr_max_audio_length)")
    if not has_speech_energy(samples, rate, limits.speech_dbfs):
        level = float(frame_levels_dbfs(samples, rate).max())
        raise NoSpeech(f"{what} is silent (loudest part {level:.0f} dBFS); nothing to transcribe")
    if limits.vad:
        from llmvox.asr.whisper import has_speech

        if has_speech(samples, rate) is False:
            raise NoSpeech(f"{what} has sound but no speech in it (voice activity detection found none)")
    return samples


def pcm16_to_float(raw: bytes, what: str = "audio_base64") -> np.ndarray:
    """Headerless little-endian int16 PCM -> float32 in [-1, 1)."""
    if len(raw) % 2:
        raise InputError(f"{what} has an odd number of bytes, so it is not 16-bit PCM")
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def looks_like_audio_file(raw: bytes) -> bool:
    return raw[:4] in FILE_MAGIC


def decode_file(raw: bytes, rate: int = ASR_RATE, what: str = "audio file",
                max_seconds: float | None = None) -> np.ndarray:
    """An audio file's bytes (any format soundfile reads, any rate, any channels) -> float32 mono at `rate`.
    A file longer than `max_seconds` (None or 0: no limit) is refused from its header, before it is
    decoded, and no more than that is ever read."""
    from llmvox.audio import load_audio

    try:
        return load_audio(raw, target_rate=rate, max_seconds=max_seconds, label=what)
    except InputTooLarge as exc:
        raise InputTooLarge(f"{exc} (--asr_max_audio_length)") from None
    except LLMVoXError as exc:
        raise InputError(str(exc)) from None


def decode_audio_base64(data: str, *, pcm_rate: int = ASR_RATE, rate: int = ASR_RATE,
                        what: str = "audio_base64", max_seconds: float | None = None,
                        pcm: bool = True) -> np.ndarray:
    """The original's base64 field: int16 PCM at `pcm_rate`, or an encoded audio file -> float32 at `rate`.

    With `max_seconds` (None or 0: no limit, as before), longer audio is refused before the string is
    decoded: PCM from the byte count its length implies, files by a generous size cap and then from their
    header. `pcm=False` reads the bytes as an audio file only (OpenAI's `input_audio` with a format)."""
    from llmvox.llm.images import base64_head, base64_size, decode_base64

    if max_seconds and max_seconds > 0 and isinstance(data, str):
        size = base64_size(data, what)
        if pcm and not looks_like_audio_file(base64_head(data)):
            _check_pcm_size(size, pcm_rate, max_seconds, what)
        elif size > (cap := max_file_bytes(max_seconds)):
            raise InputTooLarge(f"{what} is a {size / 2**20:.1f} MB audio file; for {max_seconds:g} s of audio "
                                f"the limit is {cap / 2**20:.1f} MB (--asr_max_audio_length)")
    raw = decode_base64(data, what)
    if not pcm or looks_like_audio_file(raw):
        return decode_file(raw, rate, what, max_seconds)
    if max_seconds and max_seconds > 0:
        _check_pcm_size(len(raw), pcm_rate, max_seconds, what)
    samples = pcm16_to_float(raw, what)
    if pcm_rate != rate:
        from llmvox.audio import resample

        samples = resample(samples, pcm_rate, rate)
    return samples


def max_file_bytes(max_seconds: float) -> int:
    """The largest audio file taken for `max_seconds`: 96 kHz stereo float32 WAV (768 kB/s), plus room for
    its headers and tags; phones and browsers send far less (16-bit mono, or compressed)."""
    return int(max_seconds * FILE_BYTES_PER_SECOND) + (1 << 20)


def _check_pcm_size(size: int, pcm_rate: int, max_seconds: float, what: str) -> None:
    seconds = size / 2 / pcm_rate
    if seconds > max_seconds:
        raise InputTooLarge(f"{what} is {seconds:.1f} s of 16-bit PCM at {pcm_rate} Hz; the limit is "
                            f"{max_seconds:g} s (--asr_max_audio_length)")


def load_question(*, audio_base64: str | None = None, upload: bytes | None = None, rate: int = ASR_RATE,
                  pcm_rate: int = ASR_RATE, limits: AudioLimits = AudioLimits()) -> np.ndarray:
    """Exactly one of `audio_base64` (original wire form) or `upload` (file bytes) -> checked samples."""
    if (audio_base64 is None) == (upload is None):
        raise InputError("send the question as audio_base64 or as an uploaded audio file (exactly one)")
    if audio_base64 is not None:
        samples = decode_audio_base64(audio_base64, pcm_rate=pcm_rate, rate=rate, max_seconds=limits.max_seconds)
        what = "audio_base64"
    else:
        if not upload:
            raise InputError("the uploaded audio file is empty")
        samples = decode_file(bytes(upload), rate, "uploaded audio", limits.max_seconds)
        what = "uploaded audio"
    return check_speech(samples, rate, limits, what)
