"""`llmvox bench realtime` for one turn: the real server in a subprocess, the official openai client streaming
a question spoken by the teacher over /v1/realtime in real time, and the same question to /voicechat."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("faster_whisper")
pytest.importorskip("openai")
pytest.importorskip("hibari")


def test_last_speech_sample_finds_where_the_words_end():
    from llmvox.bench.realtime import last_speech_sample

    rate = 24_000
    audio = np.zeros(rate, np.float32)
    audio[2400:12000] = 0.3 * np.sin(np.arange(9600) / 5)
    assert last_speech_sample(audio, rate) == 12000
    assert last_speech_sample(np.zeros(100, np.float32), rate) == 100


@pytest.mark.slow
def test_bench_realtime_one_turn(tmp_path, capsys):
    from llmvox.cli import main

    out = tmp_path / "realtime.json"
    assert main(["bench", "realtime", "--json", str(out), "--turns", "1", "--concurrency", "1",
                 "--llm_max_tokens", "12", "--no_warmup", "--num_workers", "1"]) == 0
    result = json.loads(out.read_text())
    level = result["realtime"][0]
    assert (level["sessions"], level["turns"], level["completed"]) == (1, 1, 1)
    turn = level["runs"][0]
    assert "capital of france" in turn["heard"].lower()
    e2fa = level["end_of_speech_to_first_audio_ms"]["p50"]
    # the server VAD must hear 500 ms of silence before the turn ends; the answer comes after that
    assert 500 < e2fa < 60_000
    for part in ("vad_hangover_ms", "asr_tail_ms", "llm_first_token_ms", "tts_first_audio_ms"):
        assert level["server_parts_ms"][part]["p50"] is not None, part
    chat = result["voicechat"][0]
    assert chat["turns"] == 1 and chat["upload_to_first_audio_ms"]["p50"] > 0
    assert chat["ui_end_of_speech_to_first_audio_ms"]["p50"] == pytest.approx(
        chat["upload_to_first_audio_ms"]["p50"] + 800)
    wer = result["turn_wer_percent"]
    assert set(wer) == {"one_shot_full_window", "one_shot_short_window", "realtime_streamed", "voicechat"}
    assert wer["realtime_streamed"] <= 20
    short, full = result["one_shot_asr"]["short_window"]["ms_p50"], result["one_shot_asr"]["full_window"]["ms_p50"]
    assert short < full  # the short window is the point
    assert "| /v1/realtime | 1 |" in capsys.readouterr().out
