"""Streaming audio encoders (raw float32, s16le PCM, G.711, WAV, FLAC, MP3, Opus), output rates, a speed changer.

Every encoder turns float32 chunks into bytes that can be sent at once: a stream cut anywhere is a
playable prefix. WAV gets a header with "unknown" sizes (0xFFFFFFFF), as streaming WAV servers send.
G.711 (mu-law, A-law: telephony, 8 kHz) is encoded here, as ITU-T G.191's reference encoder does.
Another output rate than the voice's goes through soxr's streaming resampler: chunks join seamlessly.
FLAC, MP3 and Opus come from libsndfile (bundled with soundfile): FLAC's STREAMINFO leaves the length
unknown (allowed by the format); MP3 is constant bit rate, with libsndfile's placeholder info frame
removed (it is only filled in at close, after it was sent); Opus comes in Ogg pages of about a second.
"""

from __future__ import annotations

import functools
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
    "mulaw": "audio/basic",  # RFC 2046: 8-bit mu-law, 8 kHz, mono, no header
    "alaw": "audio/x-alaw-basic",
    "mulaw_wav": "audio/wav",
    "alaw_wav": "audio/wav",
}
FORMAT_ALIASES = {"ulaw": "mulaw", "g711_ulaw": "mulaw", "g711_alaw": "alaw"}  # OpenAI Realtime's names
G711 = ("mulaw", "alaw")
TELEPHONY_RATE = 8000
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
OPUS_RATES = (8000, 16000, 24000, 48000)  # Opus has no 22.05 / 44.1 kHz mode
FORMAT_RATES: dict[str, tuple[int, ...]] = {
    "mulaw": (TELEPHONY_RATE,), "alaw": (TELEPHONY_RATE,), "mulaw_wav": (TELEPHONY_RATE,),
    "alaw_wav": (TELEPHONY_RATE,), "opus": OPUS_RATES,
}  # every other format: SAMPLE_RATES


def format_rates(fmt: str) -> tuple[int, ...]:
    """The output rates `fmt` can be sent at."""
    return FORMAT_RATES.get(fmt, SAMPLE_RATES)


def output_rate(fmt: str, asked: object, source_rate: int, param: str = "sample_rate") -> int:
    """The rate `fmt` is sent at when `asked` for it (None: G.711's 8 kHz, else the voice's), or the 400
    that says why it cannot be."""
    rates = format_rates(fmt)
    if asked is None:
        return source_rate if source_rate in rates or fmt not in FORMAT_RATES else max(rates)
    rate = _whole_number(asked)
    if rate not in SAMPLE_RATES:
        raise LLMVoXError(f"{param} {asked!r} is not supported; use one of {', '.join(map(str, SAMPLE_RATES))}",
                          400, code="invalid_sample_rate", param=param)
    if rate not in rates:
        why = (f"G.711 telephony audio is 8000 Hz: leave {param} out" if rates == (TELEPHONY_RATE,)
               else f"use one of {', '.join(map(str, rates))}")
        raise LLMVoXError(f"{param} {rate} cannot be used with {fmt} ({why})", 400, code="unsupported_sample_rate",
                          param=param)
    return rate


def _whole_number(value: object) -> int | None:
    """An int, a float with no fraction or a string of digits as an int; anything else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 9:  # int() of 5,000 digits raises
        return int(value)
    return None


def _s16(samples: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0
    return np.rint(x).astype("<i2")


def to_s16(samples: np.ndarray) -> bytes:
    """float32 [-1, 1] -> little-endian int16 bytes (rounded, clipped)."""
    return _s16(samples).tobytes()


_ALAW_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


@functools.cache
def _g711_table(law: str) -> np.ndarray:
    """int16 + 32768 -> its G.711 byte. As ITU-T G.191's reference encoder, a negative sample is coded by
    its one's complement (x and -1 - x differ only in the sign bit): the coding is exactly symmetric."""
    x = np.arange(-32768, 32768, dtype=np.int32)
    negative = x < 0
    magnitude = np.where(negative, ~x, x)
    if law == "mulaw":
        biased = np.minimum(magnitude, 32635) + 132  # 14-bit magnitude + 33, scaled: segments start at 2^k
        exponent = np.frexp(biased.astype(np.float64))[1] - 8  # 0..7
        code = ~((negative << 7) | (exponent << 4) | ((biased >> (exponent + 3)) & 0x0F))
    else:
        v = magnitude >> 3  # 13-bit
        segment = np.searchsorted(_ALAW_SEGMENT_ENDS, v)  # 0..8 (8: clipped)
        mantissa = (v >> np.where(segment < 2, 1, segment)) & 0x0F
        code = np.where(segment >= 8, 0x7F, (np.minimum(segment, 7) << 4) | mantissa)
        code = code ^ np.where(negative, 0x55, 0xD5)
    return (code & 0xFF).astype(np.uint8)


def to_g711(samples: np.ndarray, law: str) -> bytes:
    """float32 [-1, 1] -> G.711 bytes (`law` "mulaw" or "alaw"), one per sample, from the 16-bit rounding."""
    return _g711_table(law)[_s16(samples).astype(np.int32) + 32768].tobytes()


class StreamEncoder:
    """float32 chunks in, bytes out; `finish()` returns whatever the format still holds."""

    content_type = "application/octet-stream"

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate

    def encode(self, samples: np.ndarray) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        return b""

    def drain(self) -> bytes:
        """At a sentence's end: the audio still held (a resampler's), so that all of it is sent now."""
        return b""

    def reset(self) -> None:
        """Forget held audio (a cancelled stream's): the next chunk starts a new signal."""

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


class G711Encoder(StreamEncoder):
    """Raw G.711, one byte per sample, no header: what telephony (Twilio, Asterisk .ulaw/.alaw) reads."""

    def __init__(self, sample_rate: int, law: str):
        super().__init__(sample_rate)
        self.law = law
        self.content_type = CONTENT_TYPES[law]

    def encode(self, samples: np.ndarray) -> bytes:
        return to_g711(samples, self.law)


class WAVEncoder(StreamEncoder):
    """WAV of 16-bit PCM, or of G.711 ("mulaw": format tag 7, "alaw": 6; 8-bit) with the 18-byte `fmt `
    and the `fact` chunk the RIFF spec asks of every non-PCM format (the layout libsndfile writes)."""

    content_type = CONTENT_TYPES["wav"]
    _TAGS = {"mulaw": 7, "alaw": 6}

    def __init__(self, sample_rate: int, codec: str = "pcm"):
        super().__init__(sample_rate)
        self.codec = codec
        self._header_sent = False
        self._header_size = len(self.header())

    def header(self) -> bytes:
        unknown = 0xFFFFFFFF
        rate = self.sample_rate
        if self.codec == "pcm":
            fmt, fact = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16), b""
        else:
            fmt = struct.pack("<HHIIHHH", self._TAGS[self.codec], 1, rate, rate, 1, 8, 0)
            fact = b"fact" + struct.pack("<II", 4, unknown)  # samples: unknown until the end, as the sizes
        return (b"RIFF" + struct.pack("<I", unknown) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
                + fact + b"data" + struct.pack("<I", unknown))

    def _data(self, samples: np.ndarray) -> bytes:
        return to_s16(samples) if self.codec == "pcm" else to_g711(samples, self.codec)

    def encode(self, samples: np.ndarray) -> bytes:
        data = self._data(samples)
        if not self._header_sent:
            self._header_sent = True
            return self.header() + data
        return data

    def finish(self) -> bytes:
        return b"" if self._header_sent else self.header()

    def whole_file(self, streamed: bytes) -> bytes:
        size = self._header_size
        if len(streamed) < size:
            return streamed
        data = len(streamed) - size
        head = bytearray(streamed[:size])
        head[4:8] = struct.pack("<I", len(streamed) - 8)
        head[size - 4:size] = struct.pack("<I", data)
        if self.codec != "pcm":
            head[size - 12:size - 8] = struct.pack("<I", data)  # fact: one byte per sample
        return bytes(head) + streamed[size:]


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


class Resampled(StreamEncoder):
    """An encoder at another rate than the voice's, fed through soxr's streaming resampler: the chunks
    come out as one signal (identical to resampling the whole), about 20-40 ms behind the input."""

    def __init__(self, inner: StreamEncoder, source_rate: int):
        import soxr

        super().__init__(inner.sample_rate)
        self.inner = inner
        self.content_type = inner.content_type
        self._soxr = soxr.ResampleStream(source_rate, inner.sample_rate, 1, dtype="float32", quality="HQ")

    def encode(self, samples: np.ndarray) -> bytes:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        return self.inner.encode(self._soxr.resample_chunk(samples))

    def drain(self) -> bytes:
        tail = self._soxr.resample_chunk(np.zeros(0, np.float32), last=True)
        self._soxr.clear()
        return self.inner.encode(tail)

    def reset(self) -> None:
        self._soxr.clear()

    def finish(self) -> bytes:
        return self.drain() + self.inner.finish()

    def whole_file(self, streamed: bytes) -> bytes:
        return self.inner.whole_file(streamed)


def _encoder_at(fmt: str, rate: int) -> StreamEncoder:
    if fmt == "f32":
        return F32Encoder(rate)
    if fmt == "pcm":
        return PCMEncoder(rate)
    if fmt == "wav":
        return WAVEncoder(rate)
    if fmt in G711:
        return G711Encoder(rate, fmt)
    if fmt.endswith("_wav") and fmt[:-4] in G711:
        return WAVEncoder(rate, fmt[:-4])
    if fmt in SoundFileEncoder._FORMATS:
        return SoundFileEncoder(rate, fmt)
    raise LLMVoXError(f"unknown audio format {fmt!r}")


def make_encoder(fmt: str, sample_rate: int, rate: int | None = None) -> StreamEncoder:
    """An encoder of `fmt` fed float32 at `sample_rate` (the voice's) that sends `rate` (default: the
    format's, see `output_rate`); resampled when the two differ. Check `rate` with `output_rate` first."""
    rate = rate or output_rate(fmt, None, sample_rate)
    encoder = _encoder_at(fmt, rate)
    return encoder if rate == sample_rate else Resampled(encoder, sample_rate)


def supported_formats() -> list[str]:
    """The response formats this machine can encode (MP3/Opus need libsndfile >= 1.1)."""
    import soundfile as sf

    out = ["pcm", "wav", "mulaw", "alaw", "mulaw_wav", "alaw_wav"]
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
