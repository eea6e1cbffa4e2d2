"""`llmvox bench stream --llm`: chat turns through the real server (subprocess), the embedded SmolLM2
on llama.cpp and the parity voice; the JSON must hold real, positive timings for every turn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def parity_voice_flags(parity_dir: Path) -> list[str]:
    return ["--llmvox_checkpoint_path", str(parity_dir / "llmvox.pt"),
            "--encoder_model_path", str(parity_dir / "byt5_g2p"),
            "--wav_config_path", str(parity_dir / "wavtokenizer_small.yaml"),
            "--wav_model_path", str(parity_dir / "wavtokenizer.ckpt")]


def run_bench(tmp_path: Path, parity_dir: Path, *extra: str) -> tuple[dict, str]:
    out = tmp_path / "chat.json"
    cmd = [sys.executable, "-m", "llmvox", "bench", "stream", "--llm", "--concurrency", "1", "--turns", "1",
           "--llm_max_tokens", "24", "--codes_per_sentence", "30", "--threads", "1", *parity_voice_flags(parity_dir),
           "--json", str(out), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def check_level(result: dict, chat_type: str) -> dict:
    assert result["mode"] == f"{chat_type} chat"
    assert "SmolLM2" in result["llm"]
    [level] = result["levels"]
    assert level["clients"] == 1 and level["turns"] == 1
    for key in ("ttfa_s_median", "llm_first_token_s_median", "answer_written_s_median", "total_s_median",
                "audio_seconds_median", "rtf_median", "throughput_audio_s_per_s"):
        assert level[key] is not None and level[key] > 0, key
    [turn] = level["runs"]
    assert turn["answer"].strip()
    # ordering a client can see: first audio comes before the stream ends; audio is whole codes, and each
    # sentence has at least its 30 forced codes (more when its text has more ids than that)
    assert turn["ttfa_s"] <= turn["total_s"]
    assert turn["llm_first_token_s"] < turn["total_s"]
    codes = turn["audio_seconds"] * 75
    assert codes >= 30 and abs(codes - round(codes)) < 1e-6
    assert turn["rtf"] == pytest.approx(turn["total_s"] / turn["audio_seconds"])
    return turn


def test_text_chat_bench_one_turn(tmp_path, parity_dir):
    result, table = run_bench(tmp_path, parity_dir)
    turn = check_level(result, "text")
    assert turn["asr_s"] == 0 and turn["heard"] is None
    assert "--chat_type" in result["server_args"] and "text" in result["server_args"]
    assert "| text chat | 1 | 1 |" in table


def test_voice_chat_bench_one_turn(tmp_path, parity_dir):
    pytest.importorskip("hibari")
    result, table = run_bench(tmp_path, parity_dir, "--chat_type", "voice")
    turn = check_level(result, "voice")
    assert turn["asr_s"] > 0
    # Whisper base heard the teacher's question (up to case and punctuation)
    words = lambda s: "".join(c for c in s.lower() if c.isalnum() or c == " ").split()  # noqa: E731
    assert words(turn["heard"]) == words(turn["question"])
    assert turn["ttfa_s"] > turn["asr_s"]
    assert "| voice chat | 1 | 1 |" in table
