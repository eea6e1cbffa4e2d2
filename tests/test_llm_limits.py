"""Chat input bounded before the work: text and history limits, the prompt fitted to the real model's
context (the embedded SmolLM2 through llama.cpp), failures that end a turn cleanly, and audio and
images refused from their size before they are decoded."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
import soundfile as sf

from llmvox.chat import ChatError, ChatRequest, ChatSettings, ChatTurn, request_from_openai
from llmvox.input_errors import InputError, InputTooLarge
from llmvox.llm.base import LLMBackend


@pytest.fixture(scope="module")
def smollm2():
    from llmvox.llm.llamacpp import LlamaCppBackend

    llm = LlamaCppBackend(n_threads=1)
    yield llm
    llm.close()


WORDS = "the quick brown fox jumps over a lazy dog while seven cats watch quietly from the old wall".split()


def _text(n_words: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, n_words))


def test_overlong_chat_text_is_413_before_the_llm():
    with pytest.raises(ChatError, match="the limit is 4096") as err:
        ChatRequest.from_body("text", {"text": "Tell me about cats. " * 10000}, ChatSettings())
    assert err.value.status == 413
    with pytest.raises(ChatError) as err:
        request_from_openai([{"role": "user", "content": "hi"}] * 3000, ChatSettings(), llm_hears=False, has_asr=False)
    assert err.value.status == 413 and "1000" in str(err.value)


def test_long_history_is_trimmed_to_the_context_and_the_turn_answers(smollm2):
    history = []
    for i in range(40):  # about 40 x 2 x 110 tokens: far more than the 2048-token context
        history += [{"role": "user", "content": _text(100, i)}, {"role": "assistant", "content": _text(100, i + 99)}]
    request = ChatRequest(mode="text", text="What colour is the sky?", history=history)
    turn = ChatTurn(request, smollm2, settings=ChatSettings(max_tokens=16, temperature=0.0, seed=1))
    fitted, budget = smollm2.fit_messages(turn.messages(), 16)
    assert fitted[0]["role"] == "system" and fitted[-1]["content"] == "What colour is the sky?"
    assert 2 < len(fitted) < len(history) + 2 and budget == 16
    assert fitted[1:-1] == history[len(history) - (len(fitted) - 2):]  # the newest turns are kept
    assert turn.run().strip()
    assert turn.done and turn.error is None


def test_a_question_larger_than_the_context_is_413(smollm2):
    request = ChatRequest(mode="text", text=_text(3000))
    turn = ChatTurn(request, smollm2, settings=ChatSettings(max_text_chars=10**6))
    with pytest.raises(ChatError, match="context is 2048 tokens") as err:
        turn.start()
    assert err.value.status == 413 and turn.done and turn.error


class _Broken(LLMBackend):
    name = "broken"

    def stream_chat(self, messages, **kwargs):
        raise ValueError("llama_decode returned -1")
        yield ""  # pragma: no cover - makes this a generator, as real backends are


def test_any_llm_failure_before_the_first_word_is_502_and_ends_the_turn():
    turn = ChatTurn(ChatRequest(mode="text", text="Hi"), _Broken())
    waiter = threading.Thread(target=turn.finished.wait, args=(5,))
    waiter.start()
    with pytest.raises(ChatError, match="failed before answering") as err:
        turn.start()
    assert err.value.status == 502
    waiter.join(1)
    assert not waiter.is_alive() and turn.done and "ValueError" in turn.error
    snapshot = turn.snapshot()
    assert snapshot["done"] is True and snapshot["error"]


def test_pcm_longer_than_the_limit_is_refused_before_conversion():
    from llmvox.asr.input import decode_audio_base64

    pcm = base64.b64encode(np.zeros(16000 * 61, "<i2").tobytes()).decode()
    with pytest.raises(InputTooLarge, match=r"61\.0 s .* the limit is 60 s"):
        decode_audio_base64(pcm, max_seconds=60)
    assert len(decode_audio_base64(pcm)) == 16000 * 61  # without a limit, as before


def test_audio_file_length_comes_from_its_header_and_a_lying_header_is_capped():
    from llmvox.asr.input import decode_file

    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(16000 * 90, np.int16), 16000, format="FLAC")
    with pytest.raises(InputTooLarge, match=r"90\.0 s long; the limit is 60 s"):
        decode_file(buffer.getvalue(), 16000, "audio_base64", max_seconds=60)
    raw = bytearray(io.BytesIO(_wav_bytes(90)).getvalue())
    raw[40:44] = (0xFFFFFFFF).to_bytes(4, "little")  # a streamed WAV: "unknown" data size
    samples_or_error = None
    try:
        samples_or_error = decode_file(bytes(raw), 16000, "audio_base64", max_seconds=60)
    except InputTooLarge as exc:
        samples_or_error = exc
    assert isinstance(samples_or_error, InputTooLarge)


def _wav_bytes(seconds: float) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(16000 * seconds), np.int16), 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_corrupt_audio_error_names_no_object():
    from llmvox.asr.input import decode_file

    with pytest.raises(InputError) as err:
        decode_file(b"RIFF" + bytes(200), 16000, "audio_base64")
    assert "0x" not in str(err.value) and "BytesIO" not in str(err.value)
    assert "not a readable audio file" in str(err.value)


def test_image_limits_use_the_flags_unit_and_are_413():
    from PIL import Image

    from llmvox.llm.images import ImageLimits, load_image

    limits = ImageLimits(max_bytes=20 * 1024 * 1024)
    with pytest.raises(InputTooLarge, match=r"the limit is 20 MB"):
        load_image(b"\x89PNG" + bytes(21 * 1024 * 1024), limits=limits)
    with pytest.raises(InputTooLarge, match=r"the limit is 20 MB"):  # refused from the base64 length
        load_image("A" * (30 * 1024 * 1024), limits=limits)
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")  # 400 M pixels in a small file
    with pytest.raises(InputTooLarge, match="pixels"):
        load_image(bomb.getvalue(), limits=limits)
