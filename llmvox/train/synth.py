"""Synthetic training data the LLMVoX way: text (given sentences, generated sentences, LLM answers)
spoken by a teacher voice, written as WAVs plus the original dataset JSON.

Layout of an output folder:
    wavs/<id>.wav      24 kHz mono 16-bit PCM, conditioned by the teacher (level, silence margins)
    manifest.jsonl     one line per finished utterance {id, text, seconds, source}: the resume record
    answers.jsonl      LLM answers per prompt {pid, prompt, seed, answer}: never asked twice
    skipped.jsonl      text that was not spoken and why (duplicate, held out, unspeakable, too long)
    data.json          the dataset (original format), rewritten atomically as it grows
    report.json        counts, hours, unique words, throughput

Everything is a pure function of the inputs and `seed`: ids and texts are fixed before any audio is
made, the teacher's noise is seeded per text, the LLM is seeded per prompt. So a run that was killed
continues where it stopped (finished WAVs whose manifest text matches are kept), and a rerun with a
larger target only adds what is new.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmvox.errors import LLMVoXError
from llmvox.train.corpus_writer import AnswerCache, CorpusWriter, Utterance
from llmvox.train.dataset import write_json_atomic
from llmvox.train.sentences import iter_words, load_heldout, sentence_key
from llmvox.train.teachers import SAMPLE_RATE, Teacher

log = logging.getLogger(__name__)

SYSTEM_PROMPT = ("You are a friendly voice assistant. Answer in two to five short, plain spoken sentences. "
                 "Do not use lists, headings, code or emojis.")

# characters a spoken transcript may keep; anything else marks text the voice should not learn from
_ALLOWED = re.compile(r"^[A-Za-z0-9 .,!?;:'\"()\-%$&/]+$")


@dataclass
class SynthStats:
    """What a run did (written to report.json)."""

    done: int = 0  # utterances on disk after the run
    new: int = 0  # spoken in this run
    resumed: int = 0  # found on disk and kept
    skipped: dict[str, int] = field(default_factory=dict)
    audio_seconds: float = 0.0
    new_audio_seconds: float = 0.0
    wall_seconds: float = 0.0  # time spent speaking (teacher + write) in this run
    llm_seconds: float = 0.0
    llm_prompts_new: int = 0

    def throughput(self) -> float:
        """Audio seconds produced per wall second (teacher only)."""
        return self.new_audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# text preparation


def get_normalizer(mode: str = "auto") -> Callable[[str], str] | None:
    """The spoken-form normaliser for mode auto|on|off.

    `llmvox.text.normalize.normalize` (the one inference uses) when it is importable; with "auto"
    and no such module, a small built-in fallback that spells out plain numbers. Sentences that
    still hold digits afterwards are not spoken (see `speakable`), so text and audio always agree.
    """
    if mode == "off":
        return None
    try:
        from llmvox.text.normalize import normalize
    except ImportError:
        if mode == "on":
            raise LLMVoXError("--normalize on needs llmvox.text.normalize, which is not available") from None
        return fallback_normalize
    return normalize


_NUM = re.compile(r"(?<![\w.])(\$)?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(%|st|nd|rd|th)?(?![\w])")


def fallback_normalize(text: str) -> str:
    """Spell out integers, decimals, percentages, dollar amounts, ordinals and years in words."""
    from llmvox.train.sentences import _ONES, number_words, ordinal_words, year_words

    def spell(m: re.Match[str]) -> str:
        dollar, whole, frac, suffix = m.groups()
        n = int(whole.replace(",", ""))
        if n >= 10**12:
            return m.group(0)
        if suffix in ("st", "nd", "rd", "th") and not frac and not dollar:
            return ordinal_words(n)
        if frac is None and not dollar and suffix is None and "," not in whole and 1100 <= n <= 2099 \
                and not (2000 <= n <= 2009):
            words = year_words(n)
        else:
            words = number_words(n)
        if frac is not None:
            if dollar and len(frac) == 2:
                cents = int(frac)
                unit = "dollar" if n == 1 else "dollars"
                return f"{words} {unit}" + (f" and {number_words(cents)} cents" if cents else "")
            words += " point " + " ".join(_ONES[int(d)] for d in frac)
        if suffix == "%":
            words += " percent"
        if dollar:
            words += " dollar" if n == 1 and frac is None else " dollars"
        return words

    return _NUM.sub(spell, text)


_PUNCT_MAP = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": ",",
                            "\u2014": ",", "\u2026": ".", "\u00a0": " "})


def clean_answer(text: str) -> str:
    """Strip chat formatting (markdown, list markers, emphasis, typographic punctuation)."""
    text = text.translate(_PUNCT_MAP)
    text = re.sub(r"```.*?(```|$)", " ", text, flags=re.S)  # code blocks are not speech
    text = re.sub(r"^\s*(#+|[-*\u2022]|\d{1,2}[.)])\s+", "", text, flags=re.M)  # headings, list markers
    text = re.sub(r"(?<=[.!?:])\s+\d{1,2}[.)]\s+(?=[A-Z])", " ", text)  # inline "1. First ... 2. Then"
    text = re.sub(r"[*_`#]+", "", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links -> their text
    text = re.sub(r"\s+,", ",", text)
    return text




def split_sentences(text: str, max_chars: int = 180, min_words: int = 3) -> list[str]:
    """Sentences of an answer, cut by the splitter inference uses (`llmvox.text.segment`: a voice is
    trained on the sentences it will be given); tiny ones are joined to the next.

    `max_chars` ~ 180 keeps utterances under about 12 s of speech.
    """
    from llmvox.text.segment import SentenceSegmenter

    segmenter = SentenceSegmenter(max_chars=max_chars)
    out = [" ".join(s.split()) for s in [*segmenter.feed(text), *segmenter.flush()]]
    merged: list[str] = []
    for s in out:
        if merged and len(merged[-1].split()) < min_words and len(merged[-1]) + len(s) + 1 <= max_chars:
            merged[-1] = f"{merged[-1]} {s}"
        else:
            merged.append(s)
    return [s for s in merged if s]


def speakable(text: str, max_chars: int = 220) -> str | None:
    """Why `text` should not be spoken (a short reason), or None when it is fine."""
    if not text or not any(c.isalpha() for c in text):
        return "no_words"
    if len(text) > max_chars:
        return "too_long_text"
    if not _ALLOWED.match(text):
        return "odd_characters"
    if any(c.isdigit() for c in text):
        return "digits"  # the normaliser left a number it cannot say; text and audio would disagree
    words = text.lower().split()
    if len(words) >= 6 and len(set(words)) < len(words) / 3:
        return "repetitive"
    return None


def tidy(text: str) -> str:
    """One line, single spaces (the original tokenizer splits the transcript on ' ')."""
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# the pipeline


class Synthesizer:
    """Speaks utterances into a CorpusWriter, skipping what is on disk, deduplicating texts."""

    def __init__(self, teacher: Teacher, writer: CorpusWriter, *, normalizer: Callable[[str], str] | None = None,
                 max_seconds: float = 15.0, min_seconds: float = 0.3, exclude: Iterable[str] = (),
                 progress: bool = True) -> None:
        self.teacher, self.writer, self.normalizer = teacher, writer, normalizer
        self.max_seconds, self.min_seconds = max_seconds, min_seconds
        self.banned = {sentence_key(s) for s in exclude}
        self.seen: set[str] = set()
        self.stats = SynthStats()
        self.progress = progress

    def prepare(self, text: str) -> str:
        text = tidy(text)
        if self.normalizer is not None:
            text = tidy(self.normalizer(text))
        return text

    def admit(self, text: str, source: str, uid: str) -> bool:
        """True when `text` should be spoken (records why not otherwise)."""
        reason = speakable(text)
        key = sentence_key(text)
        if reason is None and key in self.banned:
            reason = "held_out"
        if reason is None and key in self.seen:
            reason = "duplicate"
        if reason is not None:
            self.writer.skip(text, reason, source, uid)
            self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + 1
            return False
        self.seen.add(key)
        return True

    def speak(self, utt: Utterance) -> None:
        """Speak and write one admitted utterance unless it is already on disk."""
        if self.writer.is_done(utt):
            self.stats.audio_seconds += self.writer.keep(utt)
            self.stats.resumed += 1
            self.stats.done += 1
            return
        t0 = time.perf_counter()
        audio, sr = self.teacher.speak(utt.text)
        seconds = len(audio) / sr
        reason = None
        if seconds < self.min_seconds:
            reason = "no_audio"
        elif seconds > self.max_seconds:
            reason = "too_long_audio"
        if reason is not None:
            self.writer.skip(utt.text, reason, utt.source, utt.id)
            self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + 1
            self.stats.wall_seconds += time.perf_counter() - t0
            return
        seconds = self.writer.add(utt, audio, sr)
        self.stats.wall_seconds += time.perf_counter() - t0
        self.stats.new += 1
        self.stats.done += 1
        self.stats.audio_seconds += seconds
        self.stats.new_audio_seconds += seconds

    def run_texts(self, texts: list[str], prefix: str, source: str) -> None:
        """Speak a fixed list of texts with ids `<prefix>_<index>`."""
        bar = _bar(len(texts), f"{source}", self.progress)
        for i, raw in enumerate(texts):
            uid = f"{prefix}_{i:06d}"
            text = self.prepare(raw)
            if self.admit(text, source, uid):
                self.speak(Utterance(uid, text, source))
            bar.update(1)
            bar.set_postfix(hours=f"{self.stats.audio_seconds / 3600:.2f}", refresh=False)
        bar.close()

    def run_llm(self, prompts: list[str], answer: Callable[[int, str], str], prefix: str = "llm",
                max_chars: int = 180) -> None:
        """Ask `answer(i, prompt)` for each prompt (cached by the caller) and speak its sentences."""
        bar = _bar(len(prompts), "llm answers", self.progress)
        for i, prompt in enumerate(prompts):
            t0 = time.perf_counter()
            reply = answer(i, prompt)
            self.stats.llm_seconds += time.perf_counter() - t0
            sents = split_sentences(clean_answer(reply), max_chars=max_chars)
            if sents and not re.search(r"[.!?][\"')]*$", sents[-1]):
                # cut off by the token limit: never teach the voice an unfinished sentence
                self.writer.skip(sents.pop(), "unfinished", "llm", f"{prefix}_{i:06d}_{len(sents):02d}")
                self.stats.skipped["unfinished"] = self.stats.skipped.get("unfinished", 0) + 1
            for j, sent in enumerate(sents):
                uid = f"{prefix}_{i:06d}_{j:02d}"
                text = self.prepare(sent)
                if self.admit(text, "llm", uid):
                    self.speak(Utterance(uid, text, "llm"))
            bar.update(1)
            bar.set_postfix(hours=f"{self.stats.audio_seconds / 3600:.2f}", refresh=False)
        bar.close()


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="utt", disable=not enabled, mininterval=5.0, smoothing=0.05)



def llm_answerer(backend, *, max_tokens: int = 200, temperature: float = 0.7, top_p: float = 0.95,
                 top_k: int = 40, system_prompt: str = SYSTEM_PROMPT) -> Callable[[str, int], str]:
    """(prompt, seed) -> answer text, through any LLMBackend."""

    def generate(prompt: str, seed: int) -> str:
        messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": prompt}]
        return "".join(backend.stream_chat(messages, max_tokens=max_tokens, temperature=temperature,
                                           top_p=top_p, top_k=top_k, seed=seed))

    return generate


def corpus_report(writer: CorpusWriter, stats: SynthStats) -> dict:
    """Statistics of what the dataset JSON now holds (all sources), plus this run's numbers."""
    recs = [writer.records[uid] for uid in dict.fromkeys(writer.order)]
    secs = np.array([r["seconds"] for r in recs]) if recs else np.zeros(0)
    by_source: dict[str, dict[str, float]] = {}
    for r in recs:
        s = by_source.setdefault(r["source"], {"utterances": 0, "hours": 0.0})
        s["utterances"] += 1
        s["hours"] += r["seconds"] / 3600
    words = list(iter_words([r["text"] for r in recs]))
    return {
        "utterances": len(recs),
        "hours": round(float(secs.sum()) / 3600, 3),
        "seconds": {"mean": round(float(secs.mean()), 2) if len(secs) else 0,
                    "p5": round(float(np.percentile(secs, 5)), 2) if len(secs) else 0,
                    "p50": round(float(np.percentile(secs, 50)), 2) if len(secs) else 0,
                    "p95": round(float(np.percentile(secs, 95)), 2) if len(secs) else 0,
                    "max": round(float(secs.max()), 2) if len(secs) else 0},
        "words": len(words),
        "unique_words": len(set(words)),
        "by_source": {k: {"utterances": v["utterances"], "hours": round(v["hours"], 3)} for k, v in by_source.items()},
        "run": {"new": stats.new, "resumed": stats.resumed, "skipped": stats.skipped,
                "new_audio_hours": round(stats.new_audio_seconds / 3600, 3),
                "teacher_wall_seconds": round(stats.wall_seconds, 1),
                "audio_seconds_per_wall_second": round(stats.throughput(), 1),
                "llm_seconds": round(stats.llm_seconds, 1)},
        "sample_rate": SAMPLE_RATE,
    }


def synthesize_corpus(out_dir: str | os.PathLike, teacher: Teacher, *, sentences: list[str] | None = None,
                      generated: list[str] | None = None, prompts: list[str] | None = None,
                      generate: Callable[[str, int], str] | None = None, seed: int = 0,
                      normalizer: Callable[[str], str] | None = None, exclude: Iterable[str] | None = None,
                      max_seconds: float = 15.0, absolute_paths: bool = True, progress: bool = True,
                      json_name: str = "data.json", extra_report: dict | None = None) -> dict:
    """Run every stage into `out_dir` (sentence list, generated sentences, LLM answers) and report.

    `exclude` defaults to the held-out evaluation set. Returns the report (also in report.json).
    """
    writer = CorpusWriter(out_dir, json_name=json_name, absolute_paths=absolute_paths)
    synth = Synthesizer(teacher, writer, normalizer=normalizer, max_seconds=max_seconds,
                        exclude=load_heldout() if exclude is None else exclude, progress=progress)
    try:
        if sentences:
            synth.run_texts(sentences, "sent", "sentences")
        if generated:
            synth.run_texts(generated, "gen", "generated")
            writer.write_json()
        if prompts:
            if generate is None:
                raise LLMVoXError("LLM prompts were given without an LLM")
            cache = AnswerCache(Path(out_dir) / "answers.jsonl", generate, seed)
            synth.run_llm(prompts, cache)
            synth.stats.llm_prompts_new = cache.new
    finally:
        writer.close()
        report = corpus_report(writer, synth.stats)
        report["run"]["llm_prompts_new"] = synth.stats.llm_prompts_new
        report.update(extra_report or {})
        write_json_atomic(Path(out_dir) / "report.json", report)
    return report


def read_sentence_file(path: str | os.PathLike) -> list[str]:
    """One sentence a line; blank lines and lines starting with # are ignored."""
    p = Path(path)
    if not p.is_file():
        raise LLMVoXError(f"sentence file not found: {p}")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    out = [ln for ln in lines if ln and not ln.startswith("#")]
    if not out:
        raise LLMVoXError(f"sentence file {p} holds no sentences")
    return out

