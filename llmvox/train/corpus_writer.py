"""The output folder of a synthesis run (`llmvox.train.synth`, whose docstring shows its layout).

Everything here is resumable: an utterance goes to manifest.jsonl once its WAV is in place (written
by rename), an LLM answer to answers.jsonl as it comes, skipped text to skipped.jsonl once; a torn
last line (a run killed mid-write) is ignored when read back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmvox.train.dataset import write_json_atomic


@dataclass(frozen=True)
class Utterance:
    id: str
    text: str
    source: str = "sentences"


class CorpusWriter:
    """Owns an output folder: resume records, WAV writes, the dataset JSON and the skip log."""

    def __init__(self, out_dir: str | os.PathLike, *, json_name: str = "data.json",
                 absolute_paths: bool = True, flush_every: int = 200) -> None:
        self.out_dir = Path(out_dir)
        self.wav_dir = self.out_dir / "wavs"
        self.wav_dir.mkdir(parents=True, exist_ok=True)
        self.json_path = self.out_dir / json_name
        self.absolute_paths = absolute_paths
        self.flush_every = flush_every
        self.records: dict[str, dict] = read_jsonl(self.out_dir / "manifest.jsonl", key="id")
        self.order: list[str] = []  # ids in dataset order for this run
        self._manifest = open(self.out_dir / "manifest.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._skipped = open(self.out_dir / "skipped.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._skipped_seen = set(read_jsonl(self.out_dir / "skipped.jsonl", key="key"))
        self._since_flush = 0

    def wav_path(self, uid: str) -> Path:
        return self.wav_dir / f"{uid}.wav"

    def is_done(self, utt: Utterance) -> bool:
        rec = self.records.get(utt.id)
        return bool(rec and rec["text"] == utt.text and self.wav_path(utt.id).is_file())

    def add(self, utt: Utterance, audio: np.ndarray, sr: int) -> float:
        """Write one utterance (atomically) and record it; returns its duration in seconds."""
        import soundfile as sf

        path = self.wav_path(utt.id)
        tmp = path.with_name(f".{path.name}.tmp")
        sf.write(str(tmp), np.clip(audio, -1.0, 1.0), sr, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
        seconds = round(len(audio) / sr, 3)
        rec = {"id": utt.id, "text": utt.text, "seconds": seconds, "source": utt.source}
        self.records[utt.id] = rec
        self._manifest.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._manifest.flush()
        self.order.append(utt.id)
        self._since_flush += 1
        if self._since_flush >= self.flush_every:
            self.write_json()
        return seconds

    def keep(self, utt: Utterance) -> float:
        self.order.append(utt.id)
        return float(self.records[utt.id]["seconds"])

    def skip(self, text: str, reason: str, source: str, uid: str | None = None) -> None:
        key = f"{source}|{reason}|{uid or ''}|{text}"
        if key in self._skipped_seen:
            return
        self._skipped_seen.add(key)
        rec = {"key": key, "id": uid, "source": source, "reason": reason, "text": text}
        self._skipped.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._skipped.flush()

    def entries(self) -> list[dict[str, str]]:
        folder = str(self.wav_dir.resolve()) if self.absolute_paths else "wavs"
        seen: set[str] = set()
        out = []
        for uid in self.order:
            if uid in seen:
                continue
            seen.add(uid)
            rec = self.records[uid]
            out.append({"speech_folder": folder, "speech_file": f"{uid}.wav", "answer_text": rec["text"],
                        "id": uid})
        return out

    def write_json(self) -> None:
        write_json_atomic(self.json_path, self.entries())
        self._since_flush = 0

    def close(self) -> None:
        self.write_json()
        self._manifest.close()
        self._skipped.close()


def read_jsonl(path: Path, key: str) -> dict[str, dict]:
    """Records of a JSON-lines file by `key`; a torn last line (killed mid-write) is ignored."""
    out: dict[str, dict] = {}
    if not path.is_file():
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and key in rec:
                out[str(rec[key])] = rec
    return out


class AnswerCache:
    """LLM answers by prompt index, in answers.jsonl: a resumed run never asks the LLM twice."""

    def __init__(self, path: str | os.PathLike, generate: Callable[[str, int], str], seed: int) -> None:
        self.path = Path(path)
        self.cache = read_jsonl(self.path, key="pid")
        self.generate, self.seed = generate, seed
        self.new = 0

    def __call__(self, i: int, prompt: str) -> str:
        rec = self.cache.get(str(i))
        if rec is not None and rec.get("prompt") == prompt and rec.get("seed") == self.seed:
            return rec["answer"]
        answer = self.generate(prompt, self.seed * 1_000_003 + i)
        rec = {"pid": i, "prompt": prompt, "seed": self.seed, "answer": answer}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self.cache[str(i)] = rec
        self.new += 1
        return answer
