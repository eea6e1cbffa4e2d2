"""Streaming audio encoders (raw float32, s16le PCM, WAV, FLAC, MP3, Opus) and a speed changer.

Every encoder turns float32 chunks into bytes that can be sent at once: a stream cut anywhere is a
playable prefix. WAV gets a header with "unknown" sizes (0xFFFFFFFF), as streaming WAV servers send.
FLAC, MP3 and Opus come from libsndfile (bundled with soundfile): FLAC's STREAMINFO leaves the length
unknown (allowed by the format); MP3 is constant bit rate, with libsndfile's placeholder info frame
removed (it is only filled in at close, after it was sent); Opus comes in Ogg pages of about a second.
"""

from __future__ import annotations

import io
import struct

import numpy as np

from llmvox.codec.config import SAMPLE_RATE
from llmvox.errors import LLMVoXError

CONTENT_TYPES = {
    "f32": "application/octet-stream",
    "pcm": "audio/pcm",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
}


def to_s16(samples: np.ndarray) -> bytes:
    """float32 [-1, 1] -> little-endian int16 bytes (rounded, clipped)."""
    x = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0
    return np.rint(x).astype("<i2").tobytes()


class StreamEncoder:
    """float32 chunks in, bytes out; `finish()` returns whatever the format still holds."""

    content_type = "application/octet-stream"

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate

    def encode(self, samples: np.ndarray) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        return b""

    def whole_file(self, streamed: bytes) -> bytes:
        """After `finish()`: the bytes this encoder streamed, as one complete file (sizes filled in)."""
        return streamed


class F32Encoder(StreamEncoder):
    """The original server's format: headerless float32 little-endian mono."""

    content_type = CONTENT_TYPES["f32"]

    def encode(self, samples: np.ndarray) -> bytes:
        return np.asarray(samples, dtype="<f4").tobytes()


class PCMEncoder(StreamEncoder):
    content_type = CONTENT_TYPES["pcm"]

    def encode(self, samples: np.ndarray) -> bytes:
        return to_s16(samples)


class WAVEncoder(PCMEncoder):
    content_type = CONTENT_TYPES["wav"]

    def __init__(self, sample_rate: int):
        super().__init__(sample_rate)
        self._header_sent = False

    def header(self) -> bytes:
        unknown = 0xFFFFFFFF
        fmt = struct.pack("<HHIIHH", 1, 1, self.sample_rate, self.sample_rate * 2, 2, 16)
        return (b"RIFF" + struct.pack("<I", unknown) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
                + b"data" + struct.pack("<I", unknown))

    def encode(self, samples: np.ndarray) -> bytes:
        data = to_s16(samples)
        if not self._header_sent:
            self._header_sent = True
            return self.header() + data
        return data

    def finish(self) -> bytes:
        return b"" if self._header_sent else self.header()

    def whole_file(self, streamed: bytes) -> bytes:
        if len(streamed) < 44:
            return streamed
        return (streamed[:4] + struct.pack("<I", len(streamed) - 8) + streamed[8:40]
                + struct.pack("<I", len(streamed) - 44) + streamed[44:])


class SoundFileEncoder(StreamEncoder):
    """FLAC / MP3 / Ogg-Opus through libsndfile, writing to memory and passing on what it appended."""

    _FORMATS = {"flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III"), "opus": ("OGG", "OPUS")}

    def __init__(self, sample_rate: int, fmt: str):
        import soundfile as sf

        super().__init__(sample_rate)
        self.fmt = fmt
        self.content_type = CONTENT_TYPES[fmt]
        container, subtype = self._FORMATS[fmt]
        kwargs = {"bitrate_mode": "CONSTANT", "compression_level": 0.5} if fmt == "mp3" else {}
        self._buf = io.BytesIO()
        try:
            self._file = sf.SoundFile(self._buf, mode="w", samplerate=sample_rate, channels=1,
                                      format=container, subtype=subtype, **kwargs)
        except (sf.LibsndfileError, TypeError, ValueError) as exc:
            raise LLMVoXError(f"this system's libsndfile cannot encode {fmt}: {exc}") from None
        self._sent = 0
        self._skip_info_frame = fmt == "mp3"

    def _new_bytes(self) -> bytes:
        data = self._buf.getbuffer()[self._sent:].tobytes()
        if self._skip_info_frame and data:
            data = _drop_mp3_placeholder(data)
            if data is None:  # the placeholder frame is not complete yet
                return b""
            self._skip_info_frame = False
            self._sent = len(self._buf.getbuffer())
            return data
        self._sent += len(data)
        return data

    def encode(self, samples: np.ndarray) -> bytes:
        samples = np.asarray(samples, dtype=np.float32)
        if samples.size:
            if self.fmt == "flac":  # 16-bit exactly as the pcm format rounds it: lossless means identical
                self._file.write(np.frombuffer(to_s16(samples), dtype="<i2"))
            else:
                self._file.write(samples)
        return self._new_bytes()

    def finish(self) -> bytes:
        sent = self._sent
        self._file.close()  # rewrites header fields in memory (already sent: ignored), flushes the rest
        data = self._buf.getbuffer()[sent:].tobytes()
        if self._skip_info_frame:
            data = _drop_mp3_placeholder(data) or b""
        return data

    def whole_file(self, streamed: bytes) -> bytes:
        """The file as libsndfile closed it: its header holds the length the stream could not know."""
        return self._buf.getvalue()


def _drop_mp3_placeholder(data: bytes) -> bytes | None:
    """Cut libsndfile's first MP3 frame (an all-zero info frame, filled in only at close).

    Returns the bytes after it, or None when they have not all arrived; data that does not start
    with such a frame is returned unchanged.
    """
    if len(data) < 4 or data[0] != 0xFF or (data[1] & 0xE0) != 0xE0:
        return data
    for i in range(4, len(data)):
        if data[i]:  # the first non-zero byte after the header: the next frame's sync, or a real body
            if i + 1 >= len(data):
                return None
            return data[i:] if data[i] == 0xFF and (data[i + 1] & 0xE0) == 0xE0 else data
    return None


def make_encoder(fmt: str, sample_rate: int) -> StreamEncoder:
    if fmt == "f32":
        return F32Encoder(sample_rate)
    if fmt == "pcm":
        return PCMEncoder(sample_rate)
    if fmt == "wav":
        return WAVEncoder(sample_rate)
    if fmt in SoundFileEncoder._FORMATS:
        return SoundFileEncoder(sample_rate, fmt)
    raise LLMVoXError(f"unknown audio format {fmt!r}")


def supported_formats() -> list[str]:
    """The response formats this machine can encode (MP3/Opus need libsndfile >= 1.1)."""
    import soundfile as sf

    out = ["pcm", "wav"]
    formats = sf.available_formats()
    if "FLAC" in formats:
        out.append("flac")
    if "MP3" in formats:
        out.append("mp3")
    if "OGG" in formats and "OPUS" in sf.available_subtypes("OGG"):
        out.append("opus")
    return out


# ---------------------------------------------------------------------------------------------
# speed


class TimeStretcher:
    """Changes speed without changing pitch (WSOLA), chunk by chunk.

    Output frames of `frame` samples overlap by half (Hann windows that sum to one). Frame k is read
    near input position k * hop * speed, shifted by up to `search` samples to where it best continues
    the previous frame, so periodic sounds keep their phase and do not warble.
    """

    def __init__(self, speed: float, sample_rate: int = SAMPLE_RATE, frame_ms: float = 40.0, search_ms: float = 8.0):
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = float(speed)
        self.frame = max(4, int(sample_rate * frame_ms / 1000) // 2 * 2)
        self.hop = self.frame // 2
        self.search = int(sample_rate * search_ms / 1000)
        self.window = np.hanning(self.frame + 1)[:-1].astype(np.float32)
        self._buf = np.zeros(0, dtype=np.float32)
        self._base = 0  # input index of _buf[0]
        self._received = 0
        self._k = 0
        self._prev: int | None = None
        self._overlap = np.zeros(self.hop, dtype=np.float32)
        self._emitted = 0

    def _nominal(self, k: int) -> int:
        return int(round(k * self.hop * self.speed))

    def process(self, samples: np.ndarray, final: bool = False) -> np.ndarray:
        """Stretched audio for the next input chunk; `final=True` also drains what is held back."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._buf = np.concatenate([self._buf, samples])
        self._received += len(samples)
        if final:
            self._buf = np.concatenate([self._buf, np.zeros(self.frame + 2 * self.search, np.float32)])
        out: list[np.ndarray] = []
        while True:
            nominal = self._nominal(self._k)
            if final:
                if nominal >= self._received:
                    break
            elif nominal + self.search + self.frame > self._received:
                break
            pos = self._best(nominal)
            seg = self._buf[pos - self._base:pos - self._base + self.frame] * self.window
            out.append(self._overlap + seg[:self.hop])
            self._overlap = seg[self.hop:].copy()
            self._prev = pos
            self._k += 1
        if final:
            out.append(self._overlap)
            self._overlap = np.zeros(self.hop, dtype=np.float32)
            target = int(round(self._received / self.speed))  # exactly the input's length / speed
            have = self._emitted + sum(len(o) for o in out)
            if have > target:
                out.append(np.zeros(0, np.float32))
                joined = np.concatenate(out)[: max(0, target - self._emitted)]
                out = [joined]
            elif have < target:
                out.append(np.zeros(target - have, np.float32))
        keep = min(self._prev + self.hop if self._prev is not None else 0,
                   self._nominal(self._k) - self.search)
        drop = max(0, keep - self._base)
        if drop:
            self._buf = self._buf[drop:]
            self._base += drop
        result = np.concatenate(out) if out else np.zeros(0, np.float32)
        self._emitted += len(result)
        return result

    def _best(self, nominal: int) -> int:
        if self._prev is None:
            return nominal
        t0 = self._prev + self.hop - self._base
        target = self._buf[t0:t0 + self.hop]
        lo = max(nominal - self.search, self._base)
        region = self._buf[lo - self._base:nominal + self.search - self._base + self.hop]
        if len(target) < self.hop or len(region) < self.hop or not np.any(target):
            return nominal
        return lo + int(np.argmax(np.correlate(region, target, mode="valid")))
