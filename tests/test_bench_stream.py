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


@pytest.mark.slow
def test_stream_bench_ab_reports_gaps_stalls_and_audio_under_load(tmp_path, parity_dir):
    """`llmvox bench stream --chunk_policy adaptive,fixed`: one server per policy, both measured at every
    level; per stream gaps and stalled seconds, their p50/p95/max, what the decoders delivered, and how
    far each stream's audio is from the same request served alone (the fixed schedule: identical)."""
    out = tmp_path / "stream.json"
    cmd = [sys.executable, "-m", "llmvox", "bench", "stream", "--concurrency", "1,2", "--sentences", "2",
           "--codes_per_sentence", "30", "--threads", "1", "--chunk_policy", "adaptive,fixed",
           *parity_voice_flags(parity_dir), "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["chunk_policies"] == ["adaptive", "fixed"]
    assert result["levels"] == result["by_policy"]["adaptive"]  # the old field: the first policy's levels
    for policy, levels in result["by_policy"].items():
        assert [lv["streams"] for lv in levels] == [1, 2]
        for lv in levels:
            n = lv["streams"]
            # each sentence: 30 forced codes, or one per text id when it has more
            assert lv["chunk_policy"] == policy and lv["audio_seconds_per_stream"] >= 60 / 75
            per = lv["per_stream"]
            assert len(per) == n
            gaps, stalls = sorted(p["gaps"] for p in per), sorted(p["stall_seconds"] for p in per)
            assert (lv["gaps_p50"], lv["gaps_max"], lv["gaps_total"]) == (gaps[n // 2], gaps[-1], sum(gaps))
            assert lv["stall_seconds_max"] == stalls[-1] and lv["stall_seconds_p50"] == stalls[n // 2]
            assert lv["stall_seconds_p50"] <= lv["stall_seconds_p95"] <= lv["stall_seconds_max"]
            assert lv["streams_with_gaps"] == sum(g > 0 for g in gaps)
            assert all((p["gaps"] == 0) == (p["stall_seconds"] == 0) for p in per)
            assert lv["codes_per_s_needed"] == 75 * n and lv["codes_per_s_delivered"] > 0
            assert lv["decoder_codes_per_s"] > 0 and lv["decoder_steps_per_s_per_worker"] > 0
        solo, loaded = levels
        assert solo["identical_to_solo"] == 1  # the reference is the first level's stream
    fixed_loaded = result["by_policy"]["fixed"][1]
    assert fixed_loaded["identical_to_solo"] == 2 and fixed_loaded["snr_vs_solo_db_min"] is None
    adaptive_loaded = result["by_policy"]["adaptive"][1]
    differ = adaptive_loaded["snr_vs_solo_db_min"]
    assert adaptive_loaded["identical_to_solo"] == 2 or differ > 5  # other joins, the same codes
    assert "| 2 | adaptive |" in done.stdout and "| 2 | fixed |" in done.stdout


def test_stream_bench_checks_its_chunk_policies_first(tmp_path):
    for policies, message in [("adaptive,bogus", "--chunk_policy takes fixed or adaptive"),
                              ("adaptive,fixed", "--url measures the running server's own chunk policy")]:
        done = subprocess.run([sys.executable, "-m", "llmvox", "bench", "stream", "--url", "http://127.0.0.1:9",
                               "--chunk_policy", policies, "--json", str(tmp_path / "x.json")],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "x.json").exists()
