"""Input audio and images are bounded before the work is done: lengths from headers and byte counts,
sizes from base64 lengths, reads in bounded blocks, and every "too large" is a 413 (InputTooLarge)."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import soundfile as sf

from llmvox.asr.input import decode_audio_base64, decode_file, load_question
from llmvox.input_errors import InputError, InputTooLarge

SIX_HOURS = 6 * 3600


def _flac(seconds: float, rate: int = 16000, noise: bool = False) -> bytes:
    """A FLAC of silence (or quiet noise), written a minute at a time so that making it costs little memory."""
    buffer, left = io.BytesIO(), int(seconds * rate)
    rng = np.random.default_rng(0)
    with sf.SoundFile(buffer, "w", rate, 1, "PCM_16", format="FLAC") as f:
        while left:
            n = min(left, 60 * rate)
            f.write((rng.standard_normal(n) * 3000).astype(np.int16) if noise else np.zeros(n, np.int16))
            left -= n
    return buffer.getvalue()


def _claim_frames(flac: bytes, frames: int) -> bytes:
    """The FLAC with STREAMINFO's total-samples field set to `frames` (0: "unknown", as streamed FLAC has)."""
    raw = bytearray(flac)
    assert raw[:4] == b"fLaC" and raw[4] & 0x7F == 0  # STREAMINFO comes first
    word = int.from_bytes(raw[18:26], "big")  # rate (20 bits), channels, bits, total samples (36 bits)
    raw[18:26] = ((word >> 36 << 36) | frames).to_bytes(8, "big")
    return bytes(raw)


@pytest.fixture(scope="module")
def six_hours(tmp_path_factory):
    flac = _flac(SIX_HOURS)
    assert len(flac) < 2 * 1024 * 1024  # silence compresses: a small request, 1.5 GB once decoded
    folder = tmp_path_factory.mktemp("bounds")
    (folder / "known.flac").write_bytes(flac)
    (folder / "unknown.flac").write_bytes(_claim_frames(flac, 0))
    return folder


CHILD = textwrap.dedent("""
    import base64, json, resource, sys, time
    b64 = base64.b64encode(open(sys.argv[1], "rb").read()).decode()
    from llmvox.asr.input import load_question
    import soundfile, soxr
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    try:
        load_question(audio_base64=b64)
        outcome = "accepted"
    except Exception as exc:
        outcome = type(exc).__name__ + ": " + str(exc)
    seconds = time.perf_counter() - started
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(json.dumps({"outcome": outcome, "seconds": seconds, "grown_mb": grown}))
""")


@pytest.mark.parametrize("name", ["known.flac", "unknown.flac"])
def test_six_hours_of_silence_are_refused_quickly_in_little_memory(six_hours, name):
    """Before: decoded in full (6 s, +1.6 GB peak RSS), or a 500 for a header without a length."""
    child = subprocess.run([sys.executable, "-c", CHILD, str(six_hours / name)], capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    expected = ("21600.0 s long; the limit is 60 s" if name == "known.flac" else "over 60 s long; the limit is 60 s")
    assert result["outcome"] == f"InputTooLarge: audio_base64 is {expected} (--asr_max_audio_length)", result
    assert result["seconds"] < 1.0, result
    assert result["grown_mb"] < 50, result


def test_a_streamed_flac_without_a_length_is_read_to_its_end():
    """A header that does not know its length (total samples 0) is no reason to refuse (before: "576460752303423.5
    s long") nor to fail at the end of the data (libsndfile refuses soundfile's seek there)."""
    flac = _flac(5, noise=True)
    expected = decode_file(flac, 16000, "audio_base64", 60)
    assert len(expected) == 5 * 16000
    assert np.array_equal(decode_file(_claim_frames(flac, 0), 16000, "audio_base64", 60), expected)
    assert np.array_equal(decode_file(_claim_frames(flac, 0), 16000, "audio_base64"), expected)  # no limit


def test_a_header_that_claims_more_than_it_holds_reads_what_is_there():
    flac = _flac(5, noise=True)
    assert len(decode_file(_claim_frames(flac, 30 * 16000), 16000, "audio_base64", 60)) == 5 * 16000


def test_reads_are_bounded_blocks_never_past_the_limit(monkeypatch):
    """A header that says 60 s over 6 hours of data: at most limit + 1 frames are read, a block at a time."""
    from llmvox import audio

    reads = []
    real_read = sf.SoundFile.read

    def counting_read(self, frames=-1, *args, **kwargs):
        data = real_read(self, frames, *args, **kwargs)
        reads.append(len(data))
        return data

    monkeypatch.setattr(sf.SoundFile, "read", counting_read)
    lying = _claim_frames(_flac(600), 60 * 16000)
    unknown = _claim_frames(_flac(600), 0)
    assert len(decode_file(lying, 16000, "audio_base64", 60)) == 60 * 16000
    assert sum(reads) <= 60 * 16000 + 1 and max(reads) <= audio.READ_BLOCK_SAMPLES
    reads.clear()
    with pytest.raises(InputTooLarge, match="over 60 s long"):
        decode_file(unknown, 16000, "audio_base64", 60)
    assert sum(reads) == 60 * 16000 + 1 and max(reads) <= audio.READ_BLOCK_SAMPLES


def test_an_absurd_sample_rate_is_refused_before_resampling():
    """A WAV header may claim 2^31 Hz; converting that to 16 kHz costs seconds of CPU for nothing."""
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(16000, np.int16), 16000, format="WAV", subtype="PCM_16")
    raw = bytearray(buffer.getvalue())
    raw[24:28] = (2**31 - 1).to_bytes(4, "little")
    started = time.perf_counter()
    with pytest.raises(InputError, match=r"^audio_base64 has a sample rate of 2147483647 Hz; rates up to 768000 Hz"):
        decode_file(bytes(raw), 16000, "audio_base64", 60)
    assert time.perf_counter() - started < 0.5


class _Refused(AssertionError):
    pass


def _no_big_decode(monkeypatch, most: int = 64) -> None:
    """Make any base64 decode of more than `most` characters fail the test (the signature peek is small)."""
    from llmvox.llm import images

    real_b64decode, real_urlsafe = base64.b64decode, base64.urlsafe_b64decode

    def guarded(real):
        def decode(text, *args, **kwargs):
            if len(text) > most:
                raise _Refused(f"decoded {len(text)} base64 characters before checking the size")
            return real(text, *args, **kwargs)
        return decode

    monkeypatch.setattr(images.base64, "b64decode", guarded(real_b64decode))
    monkeypatch.setattr(images.base64, "urlsafe_b64decode", guarded(real_urlsafe))


def test_long_pcm_base64_is_refused_by_its_length_before_decoding(monkeypatch):
    pcm = base64.b64encode(bytes(2 * 16000 * 61)).decode()
    wrapped = "data:audio/L16;base64," + "\n".join(pcm[i:i + 76] for i in range(0, len(pcm), 76))
    _no_big_decode(monkeypatch)
    for text in (pcm, wrapped):
        with pytest.raises(InputTooLarge, match=r"^audio_base64 is 61\.0 s of 16-bit PCM at 16000 Hz; the limit is "
                                                r"60 s \(--asr_max_audio_length\)$"):
            decode_audio_base64(text, max_seconds=60)
    with pytest.raises(InputTooLarge, match=r"is 61\.0 s"):
        load_question(audio_base64=pcm)  # the default limits (60 s) reach the decode


def test_an_oversize_audio_file_in_base64_is_refused_by_its_length(monkeypatch):
    """A file's duration needs its header, but its size caps it: 96 kHz stereo float32 is the densest taken."""
    from llmvox.asr.input import max_file_bytes

    assert max_file_bytes(1) < 2 * 1024 * 1024
    fake = base64.b64encode(b"RIFF" + bytes(3 * 1024 * 1024)).decode()
    _no_big_decode(monkeypatch)
    with pytest.raises(InputTooLarge, match=r"^audio_base64 is a 3\.0 MB audio file; for 1 s of audio the limit is "
                                            r"1\.7 MB \(--asr_max_audio_length\)$"):
        decode_audio_base64(fake, max_seconds=1)


def test_file_only_base64_for_input_audio():
    """`pcm=False` (OpenAI input_audio with a file format) reads a file and never takes raw bytes as PCM."""
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(8000, np.int16), 8000, format="WAV", subtype="PCM_16")
    wav = base64.b64encode(buffer.getvalue()).decode()
    assert len(decode_audio_base64(wav, what="input_audio", max_seconds=60, pcm=False)) == 16000
    with pytest.raises(InputError, match=r"^input_audio is not a readable audio file \(format not recognised\)$"):
        decode_audio_base64(base64.b64encode(bytes(3200)).decode(), what="input_audio", max_seconds=60, pcm=False)


def test_corrupt_audio_errors_are_one_clean_line():
    """Before: "audio_base64: audio bytes is not a readable audio file (Error opening <_io.BytesIO object at
    0x7f...>: Format not recognised.)"."""
    corrupt = base64.b64encode(b"RIFF" + bytes(200)).decode()
    with pytest.raises(InputError) as err:
        load_question(audio_base64=corrupt)
    assert str(err.value) == "audio_base64 is not a readable audio file (format not recognised)"
    with pytest.raises(InputError) as err:
        load_question(upload=b"RIFF" + bytes(200))
    assert str(err.value) == "uploaded audio is not a readable audio file (format not recognised)"
    with pytest.raises(InputError) as err:
        decode_file(b"", 16000, "uploaded audio")
    assert str(err.value) == "uploaded audio is empty (0 bytes)"


# --- images ----------------------------------------------------------------------------------------

MB = 1024 * 1024


def test_base64_size_is_exact_without_decoding():
    from llmvox.llm.images import base64_head, base64_size

    for raw in (b"", b"a", b"ab", b"abc", b"abcd", bytes(range(256)) * 7):
        text = base64.b64encode(raw).decode()
        wrapped = "data:image/png;base64," + "\n".join(text[i:i + 76] for i in range(0, len(text), 76)) + "\n"
        for form in (text, text.rstrip("="), wrapped, " " + text + " "):
            assert base64_size(form) == len(raw), (raw[:8], form[:40])
        assert base64_head(wrapped, 4) == raw[:4]
    assert base64_head("*not base64*") == b""  # an invalid character among the first ones


@pytest.mark.parametrize("flag_mb,shown", [(20.0, "20"), (0.1, "0.1"), (2.5, "2.5")])
def test_image_limit_is_reported_in_the_flags_unit(flag_mb, shown):
    """`--max_image_mb 20` is 20 * 1024 * 1024 bytes (settings_from_args) and the message says 20 MB."""
    from llmvox.llm.images import ImageLimits, load_image

    limits = ImageLimits(max_bytes=int(flag_mb * MB))
    over = b"\x89PNG" + bytes(int(flag_mb * MB))
    for data in (over, base64.b64encode(over).decode()):
        with pytest.raises(InputTooLarge, match=rf"the limit is {shown} MB \(--max_image_mb\)$") as err:
            load_image(data, limits=limits)
        assert err.value.status == 413


def test_an_oversize_base64_image_is_refused_before_decoding(monkeypatch):
    """Just over the limit (20 MB + 100 kB), as a data URL with line breaks: refused from its length."""
    from llmvox.llm.images import ImageLimits, load_image, load_images

    text = base64.b64encode(bytes(20 * MB + 100_000)).decode()
    url = "data:image/png;base64," + "\n".join(text[i:i + 76] for i in range(0, len(text), 76))
    _no_big_decode(monkeypatch)
    with pytest.raises(InputTooLarge, match=r"^image 1 is 20\.1 MB; the limit is 20 MB"):
        load_images([url], limits=ImageLimits(max_bytes=20 * MB))
    with pytest.raises(InputTooLarge, match=r"^image_base64 is 20\.1 MB"):
        load_image(text, limits=ImageLimits(max_bytes=20 * MB), what="image_base64")


def test_every_too_large_image_is_413():
    """Pixel bombs and metadata bombs (a 2 kB PNG whose text chunk inflates past Pillow's 1 MB cap) are too large,
    not damaged: before, the latter was a 400 naming PngImagePlugin.MAX_TEXT_CHUNK."""
    from PIL import Image, PngImagePlugin

    from llmvox.llm.images import ImageLimits, load_image, load_images

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a" * (2 * MB), zip=True)
    text_bomb = io.BytesIO()
    Image.new("RGB", (8, 8)).save(text_bomb, "PNG", pnginfo=info)
    assert len(text_bomb.getvalue()) < 10_000
    pixel_bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(pixel_bomb, "PNG")
    wide = io.BytesIO()
    Image.new("RGB", (300, 200)).save(wide, "PNG")
    cases = [(text_bomb.getvalue(), ImageLimits(), "inflates past the image reader's limit"),
             (pixel_bomb.getvalue(), ImageLimits(), "pixels"),
             (wide.getvalue(), ImageLimits(max_pixels=50_000), "300x200 pixels; the limit is 50,000 pixels"),
             (b"\x89PNG" + bytes(MB), ImageLimits(max_bytes=MB), "the limit is 1 MB")]
    for data, limits, words in cases:
        with pytest.raises(InputTooLarge) as err:
            load_image(data, limits=limits)
        assert err.value.status == 413 and words in str(err.value), str(err.value)
        assert "Plugin" not in str(err.value) and not re.search(r"0x[0-9a-f]{6,}", str(err.value))
    with pytest.raises(InputTooLarge, match="5 images sent; the limit is 4"):
        load_images([wide.getvalue()] * 5)
