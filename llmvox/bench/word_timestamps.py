"""How accurate are a voice's word timestamps? Each sentence is spoken through the real streaming engine
with `word_timestamps=True`, its audio is transcribed by Whisper with faster-whisper's own word
timestamps, the two word lists are matched (normalised words, difflib), and every matched word adds two
boundary errors: |start - whisper start| and |end - whisper end|.

    .venv/bin/python -m llmvox.bench.word_timestamps --json bench_results/word_timestamps.json [--limit N]

Whisper's times are themselves an estimate (cross-attention + DTW, ~20-50 ms jitter on clean speech),
so the figure is the agreement of two aligners, not an error against hand labels.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HELDOUT = Path(__file__).resolve().parents[1] / "voices" / "heldout_sentences.txt"
CALIBRATION = 30  # the embedded voice's aligner (heads, lead, shift) was chosen on the first 30 of HELDOUT


def _norm(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower().replace("’", "'"))


def boundary_errors(ours: Sequence[tuple[str, float, float]], whisper: Sequence[tuple[str, float, float]]
                    ) -> list[float]:
    """Absolute start and end differences (seconds) of the words both lists agree on, in order."""
    a, b = [_norm(w[0]) for w in ours], [_norm(w[0]) for w in whisper]
    errors: list[float] = []
    for block in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            (_, s1, e1), (_, s2, e2) = ours[block.a + k], whisper[block.b + k]
            errors += [abs(s1 - s2), abs(e1 - e2)]
    return errors


def summary(errors: Sequence[float]) -> dict[str, float | int]:
    """p50 / p90 / max in milliseconds (and the count) of boundary errors."""
    x = np.asarray(errors, dtype=np.float64) * 1000
    if x.size == 0:
        return {"boundaries": 0, "p50_ms": float("nan"), "p90_ms": float("nan"), "max_ms": float("nan")}
    return {"boundaries": int(x.size), "mean_ms": round(float(x.mean()), 1),
            "p50_ms": round(float(np.percentile(x, 50)), 1), "p90_ms": round(float(np.percentile(x, 90)), 1),
            "max_ms": round(float(x.max()), 1)}


def speak_with_words(engine, text: str) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """(audio, [(word, start, end)]) of `text` through the streaming engine with word timestamps on."""
    from llmvox.engine.config import StreamConfig

    stream = engine.open(StreamConfig.from_options(engine.config, word_timestamps=True))
    stream.feed(text)
    stream.end()
    audio, words = [], []
    for chunk in stream.chunks(timeout=120):
        audio.append(chunk.samples)
        words += [(w.word, w.start, w.end) for w in chunk.words or ()]
    return (np.concatenate(audio) if audio else np.zeros(0, np.float32)), words


def evaluate(voice, asr, sentences: Sequence[str], *, log=print) -> dict[str, Any]:
    """Boundary-error figures of `voice` (an LLMVoX with an aligner) over `sentences`."""
    from llmvox.engine.engine import SpeechEngine
    from llmvox.text.normalize import normalize

    errors: list[float] = []
    rows = []
    with SpeechEngine(voice, num_workers=1, max_batch=4) as engine:
        for i, sentence in enumerate(sentences):
            audio, ours = speak_with_words(engine, normalize(sentence))
            heard = asr.transcribe_words(audio, voice.sample_rate) if audio.size else []
            errs = boundary_errors(ours, heard)
            errors += errs
            rows.append({"text": sentence, "words": len(ours), "whisper_words": len(heard), "matched": len(errs) // 2,
                         "p50_ms": summary(errs)["p50_ms"], "errors_ms": [round(e * 1000) for e in errs]})
            if log and (i + 1) % 10 == 0:
                log(f"{i + 1}/{len(sentences)}: running p50 {summary(errors)['p50_ms']} ms")
    return {**summary(errors), "n_sentences": len(sentences), "sentences": rows}


def step_overhead(voice, *, batch: int = 16, position: int = 200, rounds: int = 10, steps: int = 20
                  ) -> dict[str, float]:
    """Milliseconds of one batched decoder step without and with the aligner's probe (A/B interleaved,
    medians of `rounds` runs of `steps` steps, so a busy machine slows both alike)."""
    import torch

    from llmvox.model.gpt import HeadProbe

    decoder, aligner = voice.decoder, voice.aligner
    cache = decoder.new_cache(batch, position + steps + 1)
    text = torch.full((batch,), 384, dtype=torch.long)
    prev = torch.zeros(batch, dtype=torch.long)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for probed in (False, True):
            start = time.perf_counter()
            for k in range(steps):
                pos = torch.full((batch,), position + k, dtype=torch.long)
                probe = HeadProbe(aligner.layer, aligner.heads) if probed else None
                decoder.step(text, prev, pos, cache, position + k, probe)
            times[probed].append((time.perf_counter() - start) / steps * 1000)
    plain, probed = float(np.median(times[False])), float(np.median(times[True]))
    return {"batch": batch, "position": position, "step_ms": round(plain, 3), "step_with_probe_ms": round(probed, 3),
            "overhead_pct": round(100 * (probed / plain - 1), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default="bench_results/word_timestamps.json")
    p.add_argument("--sentences", default=str(HELDOUT))
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    from llmvox.api import LLMVoX
    from llmvox.asr.whisper import WhisperASR
    from llmvox.bench.intelligibility import read_sentences

    torch.set_num_threads(args.threads)
    sentences = read_sentences(args.sentences)[: args.limit]
    voice = LLMVoX.from_pretrained()
    asr = WhisperASR(threads=args.threads)
    start = time.perf_counter()
    result = evaluate(voice, asr, sentences)
    if len(sentences) > CALIBRATION:  # the sentences the embedded voice's aligner was not fitted on
        rest = [e / 1000 for row in result["sentences"][CALIBRATION:] for e in row["errors_ms"]]
        result["after_calibration_sentences"] = {"first": CALIBRATION, **summary(rest)}
    result["step_speed"] = step_overhead(voice)
    aligner = voice.aligner
    result = {"command": "python -m llmvox.bench.word_timestamps " + " ".join(argv or sys.argv[1:]),
              "voice": voice.name, "aligner": None if aligner is None else aligner.to_config(),
              "asr": "faster-whisper base (embedded), word_timestamps=True, beam 5",
              "seconds": round(time.perf_counter() - start, 1), **result}
    print(json.dumps({k: v for k, v in result.items() if k != "sentences"}, indent=2))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
