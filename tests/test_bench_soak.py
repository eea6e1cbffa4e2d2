"""`llmvox bench soak` against a real server (subprocess): the JSON it writes, and its flag errors."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from llmvox.bench.soak import mix_for, rss_trend


def soak(tmp_path: Path, *flags: str, timeout: float = 240) -> tuple[dict, subprocess.CompletedProcess]:
    out = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, "-m", "llmvox", "bench", "soak", *flags, "--json", str(out)],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done


def check_result(result: dict, done: subprocess.CompletedProcess, chat_type: str, seconds: float,
                 concurrency: int) -> None:
    assert result["chat_type"] == chat_type and result["concurrency"] == concurrency
    assert result["seconds"] == seconds and result["elapsed_seconds"] >= seconds
    assert result["warmup_seconds"] == pytest.approx(seconds / 3, abs=0.1)  # the default 30 s, clamped
    assert result["errors"]["count"] == 0, result["errors"]["first"]
    assert result["machine"]["cpu_count"] >= 1 and result["server_exit_code"] == 0
    by_kind = result["by_kind"]
    assert set(by_kind) <= set(mix_for(chat_type)) and len(by_kind) >= 4, by_kind
    assert sum(k["requests"] for k in by_kind.values()) == result["requests"] >= 8
    assert result["requests_per_second"] == pytest.approx(result["requests"] / result["elapsed_seconds"], rel=0.05)
    for kind, counts in by_kind.items():
        want = {"bad": ("400", "415", "422"), "websocket": ("101",)}.get(kind, ("200",))
        assert counts["errors"] == 0 and set(counts["status"]) <= set(want), (kind, counts)
    rss = result["rss_mb"]
    assert 100 < rss["start"] <= rss["peak"] and rss["after_warmup"] <= rss["peak"] and rss["end"] <= rss["peak"]
    samples = result["rss_samples"]  # once a second while the load runs
    assert len(samples) >= seconds - 3 and all(b[0] > a[0] for a, b in zip(samples, samples[1:], strict=False))
    assert rss["peak"] == max(mb for _, mb in samples)
    assert rss["end"] == pytest.approx(statistics.median(mb for _, mb in samples[-5:]), abs=0.1)
    assert isinstance(result["rss_slope_after_warmup_mb_per_minute"], float)
    assert result["rss_growth_after_warmup_mb"] == pytest.approx(rss["end"] - rss["after_warmup"], abs=0.11)
    assert result["health_after_load"] == {"status": "ok", "active_streams": 0, "queued_requests": 0}
    [line] = done.stdout.strip().splitlines()
    assert line.startswith(f"soak {chat_type}: {result['requests']} requests") and "0 errors" in line


@pytest.mark.slow
def test_soak_of_a_speech_server_has_no_errors_and_samples_rss(tmp_path):
    result, done = soak(tmp_path, "--seconds", "20", "--chat_type", "tts", "--concurrency", "3")
    check_result(result, done, "tts", 20, 3)
    assert not {"textchat", "voicechat"} & set(result["by_kind"])


@pytest.mark.slow
def test_soak_of_a_text_chat_server_includes_llm_turns(tmp_path):
    result, done = soak(tmp_path, "--seconds", "18", "--chat_type", "text", "--concurrency", "3")
    check_result(result, done, "text", 18, 3)
    assert result["by_kind"]["textchat"]["status"]["200"] >= 1
    assert "--llm_temperature" in result["server_args"]  # greedy answers: a run repeats


def test_rss_trend_takes_medians_and_a_slope():
    samples = [(float(t), 500.0 + t + (80.0 if t % 7 == 0 else 0.0)) for t in range(1, 41)]  # +1 MB/s, spikes
    after, end, slope = rss_trend(samples, warmup=10)
    assert after == 512 and end == 538 and slope == pytest.approx(60, rel=0.15)
    assert rss_trend([], 10) == (None, None, None) and rss_trend([(1.0, 9.0)], 10) == (9.0, 9.0, None)


def test_the_mix_has_only_what_the_chat_type_serves():
    assert not {"textchat", "voicechat"} & set(mix_for("tts"))
    assert "textchat" in mix_for("text") and "voicechat" not in mix_for("text")
    assert {"textchat", "voicechat", "bad", "websocket", "leave_early", "speech_sse"} <= set(mix_for("voice"))


def test_a_bad_flag_is_a_one_line_error_with_exit_code_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "llmvox", "bench", "soak", "--seconds", "0", "--json",
                           str(tmp_path / "x.json")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == "" and not (tmp_path / "x.json").exists()
    assert done.stderr.strip().splitlines() == ["llmvox: error: --seconds must be a positive number (got 0)"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--seconds", "inf"], "--seconds must be a positive number"),
    (["--seconds", "nan"], "--seconds must be a positive number"),
    (["--warmup", "-1"], "--warmup must be zero or more seconds"),
    (["--concurrency", "0"], "--concurrency must be at least 1"),
    (["--bundle", "x", "--wav_model_path", "y"], "give either --bundle or the original model paths"),
])
def test_other_bad_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    from llmvox.cli import main

    assert main(["bench", "soak", *flags, "--json", str(tmp_path / "x.json")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not (tmp_path / "x.json").exists()
    [line] = captured.err.strip().splitlines()
    assert line.startswith(f"llmvox: error: {message}")
