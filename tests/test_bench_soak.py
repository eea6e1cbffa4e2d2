"""`llmvox bench soak` against a real server: the JSON it writes, and its flag errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_soak_of_a_speech_server_reports_rss_and_no_errors(tmp_path):
    out = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, "-m", "llmvox", "bench", "soak", "--seconds", "15", "--warmup", "3",
                           "--chat_type", "tts", "--concurrency", "3", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["errors"] == 0, result["first_errors"]
    assert result["requests"] >= 6 and result["chat_type"] == "tts" and result["concurrency"] == 3
    assert {"speech_wav", "websocket", "bad"} & set(result["by_kind"])
    assert all(v["ok"] for v in result["by_kind"].values())
    rss = result["rss_mb"]
    assert 50 < rss["idle"] <= rss["peak"] and rss["after_warmup"] and len(result["rss_samples"]) >= 10
    assert result["rss_growth_after_warmup_mb"] == pytest.approx(rss["end"] - rss["after_warmup"], abs=0.1)
    assert "0 errors" in done.stderr


def test_bad_soak_flags_are_one_line_errors(tmp_path):
    done = subprocess.run([sys.executable, "-m", "llmvox", "bench", "soak", "--seconds", "0", "--json",
                           str(tmp_path / "x.json")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("llmvox: error: --seconds must be positive")
