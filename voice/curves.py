"""The voice's learning curves as one picture: loss by step of a decoder run, and WER by step of every
run that was probed, so that "what limits it" is read off evidence rather than memory.

    .venv/bin/python voice/curves.py voice/logs/decoder_v3_train_log.jsonl \
        voice/logs/decoder_v5_train_log.jsonl@7000 voice/curves.png

Left: training loss (mean per 100 steps), held-out loss and held-out phoneme CTC of the runs'
`train_log.jsonl`, one after the other (`LOG@N`: a run warm-started from the step-N weights of the
one before, drawn from step N on). Right: WER of the 40-sentence probes in voice/probe/ (`decoder_<tag>step_N.json`),
one line per tag, with the teacher's and the codec's WER on the same sentences as floors.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

PROBES = Path(__file__).parent / "probe"
# probe tag -> legend label (the runs the build log describes)
RUNS = {"": "v0.2 run (16.7 h)", "v2_": "session-4 continuation (from v0.2)", "v3_": "v3 (50.6 h + phoneme CTC)",
        "v5_": "v5: warm start from v3's step 7,000", "v6_": "v6 = v0.4: warm start from v3, CTC head fitted first"}
OFFSETS = {"v5_": 7000, "v6_": 7000}  # a warm-started run's probes are drawn at the steps of the run it continues
FLOORS = {"teacher": 0.017, "codec resynthesis": 0.096}  # full held-out set, voice/eval.json


def read_log(path: Path, offset: int = 0) -> tuple[list[tuple[int, float]], list[tuple[int, float]],
                                                   list[tuple[int, float]]]:
    """(train loss per 100-step window, held-out loss, held-out CTC) as (step + offset, value) lists."""
    windows: dict[int, list[float]] = defaultdict(list)
    val, ctc = [], []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        row["iter"] += offset
        if "loss" in row:
            windows[row["iter"] // 100 * 100 + 50].append(row["loss"])
        if "val/loss" in row:
            val.append((row["iter"], row["val/loss"]))
            if row.get("val/phoneme_ctc") is not None:
                ctc.append((row["iter"], row["val/phoneme_ctc"]))
    train = [(step, sum(v) / len(v)) for step, v in sorted(windows.items())]
    return train, sorted(set(val)), sorted(set(ctc))


def read_probes() -> dict[str, list[tuple[int, float]]]:
    """WER by step for each probe tag in RUNS."""
    runs: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for path in PROBES.glob("decoder_*step_*.json"):
        match = re.fullmatch(r"decoder_(.*?)step_(\d+)\.json", path.name)
        if match and match[1] in RUNS:
            step = int(match[2]) + OFFSETS.get(match[1], 0)
            runs[match[1]].append((step, json.loads(path.read_text())["wer"]))
    return {tag: sorted(points) for tag, points in runs.items()}


def main(log_paths: list[str], out_png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for spec in log_paths:
        path, _, offset = spec.partition("@")
        train, val, ctc = read_log(Path(path), int(offset or 0))
        name = Path(path).stem.removesuffix("_train_log")
        left.plot(*zip(*train, strict=True), lw=1, label=f"{name}: train loss (100-step mean)")
        left.plot(*zip(*val, strict=True), "o-", label=f"{name}: held-out loss")
        if ctc:
            left.plot(*zip(*ctc, strict=True), "s--", label=f"{name}: held-out phoneme CTC")
    left.set(xlabel="step", ylabel="nats", title="decoder runs", ylim=(0, 3))
    left.legend()
    left.grid(alpha=0.3)
    for tag, points in read_probes().items():
        steps, wers = zip(*points, strict=True)
        right.plot(steps, [100 * w for w in wers], "o-", label=RUNS[tag])
    for name, wer in FLOORS.items():
        right.axhline(100 * wer, ls=":", color="gray")
        right.text(right.get_xlim()[1], 100 * wer + 1, name, color="gray", fontsize=8, ha="right")
    right.set(xlabel="step (a warm start continues its run's count)", ylabel="WER % (first 40 held-out sentences, Whisper base)",
              title="intelligibility by step", ylim=(0, 100))
    right.legend()
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    print(f"wrote {out_png}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1:-1], sys.argv[-1])
