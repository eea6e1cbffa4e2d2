"""Spoken questions in every wire form, the checks that refuse bad audio, and the embedded Whisper."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
import soundfile as sf
from _chat_models import QUESTION, png_bytes, speak

from llmvox.asr.input import (
    AudioLimits,
    check_speech,
    decode_audio_base64,
    load_question,
    pcm16_to_float,
)
from llmvox.audio import resample
from llmvox.input_errors import InputError, InputTooLarge, NoSpeech


@pytest.fixture(scope="module")
def question_24k():
    pytest.importorskip("hibari")
    audio, rate = speak(QUESTION)
    assert rate == 24000
    return audio


@pytest.fixture(scope="module")
def question_16k(question_24k):
    return resample(question_24k, 24000, 16000)


def pcm_b64(samples: np.ndarray) -> str:
    return base64.b64encode((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()).decode()


def file_bytes(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None, channels: int = 1) -> bytes:
    data = np.stack([samples] * channels, axis=1) if channels > 1 else samples
    buffer = io.BytesIO()
    sf.write(buffer, data, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def test_original_pcm16_base64(question_16k):
    decoded = decode_audio_base64(pcm_b64(question_16k))
    assert decoded.dtype == np.float32 and len(decoded) == len(question_16k)
    assert np.abs(decoded - question_16k).max() < 1e-4  # int16 rounding only
    assert load_question(audio_base64=pcm_b64(question_16k)).shape == question_16k.shape


@pytest.mark.parametrize("fmt,subtype,rate,channels", [("WAV", "PCM_16", 44100, 2), ("FLAC", None, 22050, 1),
                                                       ("OGG", "VORBIS", 48000, 1), ("WAV", "FLOAT", 8000, 1)])
def test_uploaded_files_at_any_rate(question_24k, fmt, subtype, rate, channels):
    samples = resample(question_24k, 24000, rate)
    raw = file_bytes(samples, rate, fmt, subtype, channels)
    from_upload = load_question(upload=raw)
    from_b64 = load_question(audio_base64=base64.b64encode(raw).decode())  # a file in the base64 field
    expected = len(question_24k) * 16000 / 24000
    assert abs(len(from_upload) - expected) <= 16000 * 0.01
    assert np.array_equal(from_upload, from_b64)
    reference = resample(question_24k, 24000, 16000)[: len(from_upload)]
    corr = np.corrcoef(reference[: len(from_upload)], from_upload[: len(reference)])[0, 1]
    assert corr > (0.5 if fmt == "OGG" or rate == 8000 else 0.95)


def test_bad_audio_is_refused_with_clear_errors(question_16k):
    with pytest.raises(InputError, match="not valid base64"):
        load_question(audio_base64="this is not base64!")
    with pytest.raises(InputError, match="odd number of bytes"):
        load_question(audio_base64=base64.b64encode(b"\x01\x02\x03").decode())
    with pytest.raises(InputError, match="not a readable audio file"):
        load_question(upload=png_bytes())
    broken = file_bytes(question_16k, 16000, "WAV", "PCM_16")[:30]  # a WAV header cut short
    with pytest.raises(InputError, match="audio"):
        load_question(audio_base64=base64.b64encode(broken).decode())
    with pytest.raises(InputError, match="empty"):
        load_question(audio_base64="")
    with pytest.raises(InputError, match="exactly one"):
        load_question()


def test_silence_noise_and_length_limits(question_16k):
    with pytest.raises(NoSpeech, match="silent"):
        load_question(audio_base64=pcm_b64(np.zeros(32000, np.float32)))
    with pytest.raises(NoSpeech, match="silent"):
        check_speech(np.full(16000, 1e-4, np.float32))  # a hum at -80 dBFS
    noise = (0.2 * np.random.default_rng(0).standard_normal(48000)).astype(np.float32)
    with pytest.raises(NoSpeech, match="no speech"):
        check_speech(noise)  # loud, but the voice activity detector hears no speech
    assert check_speech(noise, limits=AudioLimits(vad=False)) is not None  # the energy check alone passes it
    with pytest.raises(NoSpeech, match="ms long"):
        check_speech(question_16k[:800])
    with pytest.raises(InputTooLarge, match="--asr_max_audio_length"):
        check_speech(np.tile(question_16k, 3), limits=AudioLimits(max_seconds=3.0))
    assert len(check_speech(question_16k)) == len(question_16k)


def test_pcm_scale():
    assert np.allclose(pcm16_to_float(np.array([-32768, 0, 16384], "<i2").tobytes()), [-1.0, 0.0, 0.5])


def normalise(text: str) -> str:
    return re.sub(r"[^a-z ]", "", text.lower()).strip()


@pytest.mark.slow
def test_embedded_whisper_transcribes_the_teacher_voice(question_24k):
    """The question as a client uploads it (24 kHz WAV) goes through the input checks and Whisper base."""
    pytest.importorskip("faster_whisper")
    from llmvox.asr.whisper import WhisperASR

    asr = WhisperASR(threads=2, beam_size=1)
    question = load_question(upload=file_bytes(question_24k, 24000, "WAV", "PCM_16"))
    assert normalise(asr.transcribe(question)) == normalise(QUESTION)
