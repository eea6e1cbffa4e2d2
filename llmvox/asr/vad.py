"""Streaming voice activity detection: Silero VAD (the ONNX model faster-whisper ships) on 32 ms frames.

`SileroStream` keeps the model's recurrent state between calls, so audio can be pushed in any split as it
arrives; `TurnDetector` turns the frame probabilities into the events a spoken turn is made of:

    start    speech began (after `min_speech_ms` of it; the time is the first speech frame)
    pause    `pause_ms` of silence inside the turn: a phrase may be cut (and an answer started speculatively)
    resume   speech came back after a pause, before the turn ended
    stop     `silence_ms` of silence: the turn is over (the time is the end of the last speech frame)

Times are milliseconds of 16 kHz audio since the detector was created.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmvox.errors import LLMVoXError

VAD_RATE = 16_000
FRAME = 512  # samples per Silero frame at 16 kHz: 32 ms
CONTEXT = 64  # samples of the previous frame the model reads with each frame
FRAME_MS = FRAME * 1000 // VAD_RATE


def silero_model_path() -> Path:
    """The Silero VAD ONNX file inside the installed faster-whisper."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise LLMVoXError("server-side voice activity detection needs faster-whisper: pip install faster-whisper")
    assets = Path(next(iter(spec.submodule_search_locations))) / "assets"
    found = sorted(assets.glob("silero_vad*.onnx"))
    if not found:
        raise LLMVoXError(f"no Silero VAD model in {assets} (reinstall faster-whisper)")
    return found[-1]


_SESSION = None


def _session():
    """One ONNX session for the process (read-only weights; each stream keeps its own state)."""
    global _SESSION
    if _SESSION is None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        _SESSION = onnxruntime.InferenceSession(str(silero_model_path()), providers=["CPUExecutionProvider"],
                                                sess_options=opts)
    return _SESSION


class SileroStream:
    """Speech probability of each 32 ms frame of a 16 kHz stream, pushed in pieces of any size."""

    def __init__(self) -> None:
        self._session = _session()
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """The probabilities of the whole frames completed by `samples` (float32, 16 kHz)."""
        audio = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32).reshape(-1)])
        n = len(audio) // FRAME
        self._pending = audio[n * FRAME:]
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        frames = audio[: n * FRAME].reshape(n, FRAME)
        contexts = np.concatenate([self._context[None, :], frames[:-1, -CONTEXT:]], axis=0)
        self._context = frames[-1, -CONTEXT:].copy()
        rows = np.concatenate([contexts, frames], axis=1)
        probs, self._h, self._c = self._session.run(None, {"input": rows, "h": self._h, "c": self._c})
        return np.asarray(probs, dtype=np.float32).reshape(-1)[:n]


@dataclass(frozen=True)
class VadEvent:
    kind: str  # start | pause | resume | stop
    ms: int


class TurnDetector:
    """Frames -> start / pause / resume / stop, with Silero's hysteresis (speech ends below threshold - 0.15)."""

    def __init__(self, threshold: float = 0.5, silence_ms: int = 500, pause_ms: int = 200,
                 min_speech_ms: int = 64) -> None:
        self.threshold = threshold
        self.silence_ms = max(FRAME_MS, silence_ms)
        self.pause_ms = min(max(FRAME_MS, pause_ms), self.silence_ms)
        self.min_speech_frames = max(1, -(-min_speech_ms // FRAME_MS))
        self.vad = SileroStream()
        self.frames = 0  # frames seen
        self.speaking = False
        self._run = 0  # consecutive speech frames while not speaking
        self._silence = 0  # consecutive silent frames while speaking
        self._paused = False
        self.last_speech_end_ms = 0

    def push(self, samples: np.ndarray) -> list[VadEvent]:
        events: list[VadEvent] = []
        for p in self.vad.push(samples):
            self.frames += 1
            now_ms = self.frames * FRAME_MS  # end of this frame
            if not self.speaking:
                self._run = self._run + 1 if p >= self.threshold else 0
                if self._run >= self.min_speech_frames:
                    self.speaking, self._silence, self._paused = True, 0, False
                    self.last_speech_end_ms = now_ms
                    events.append(VadEvent("start", now_ms - self._run * FRAME_MS))
                continue
            if p >= self.threshold or (p >= self.threshold - 0.15 and self._silence == 0):
                if self._paused:
                    events.append(VadEvent("resume", now_ms - FRAME_MS))
                self._silence, self._paused = 0, False
                self.last_speech_end_ms = now_ms
                continue
            self._silence += 1
            silent_ms = self._silence * FRAME_MS
            if not self._paused and silent_ms >= self.pause_ms and silent_ms < self.silence_ms:
                self._paused = True
                events.append(VadEvent("pause", self.last_speech_end_ms))
            if silent_ms >= self.silence_ms:
                self.speaking, self._run, self._paused = False, 0, False
                events.append(VadEvent("stop", self.last_speech_end_ms))
        return events

    @property
    def now_ms(self) -> int:
        return self.frames * FRAME_MS
