"""A phonetically rich, seeded sentence set for training a voice (templates x vocabulary).

Why generated rather than collected: nothing can be downloaded here, and a generator gives control
over what the decoder must learn: many distinct words, names, places, numbers read as words, questions
and exclamations, short and long sentences. Every sentence is already in spoken form (no digits or
symbols), so the text the model sees is exactly what the teacher says.

The held-out evaluation sentences (`llmvox/voices/heldout_sentences.txt`) are never produced: any
generated sentence that matches one (case and punctuation ignored) is dropped.

Besides the hand-written word lists and templates (`llmvox.train.sentence_vocabulary`), the
generator can borrow a large tagged word list (nouns, adjectives, -ing forms, adverbs) from the
hibari-tts tagger when that package is installed, which multiplies the number of distinct words
cheaply. `sentence_set(..., extended_vocab=False)` turns it off.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from llmvox.text.normalize import cardinal_words, ordinal_words, year_words
from llmvox.train.sentence_vocabulary import (
    ABSTRACT,
    ADJECTIVES,
    ADVERBS,
    ANIMALS,
    CITIES,
    COLORS,
    CONNECTORS,
    COUNTRIES,
    DAYS,
    EXCLAMATIONS,
    FOODS,
    INTRANSITIVE,
    JOBS,
    MONTHS,
    NAMES,
    NATURE,
    OBJECTS,
    PLACES,
    QUESTIONS,
    QUOTES,
    SHORT,
    STATEMENTS,
    SURNAMES,
    TITLES,
    VERBS,
)

HELDOUT_PATH = Path(__file__).resolve().parent.parent / "voices" / "heldout_sentences.txt"

# ---------------------------------------------------------------------------------------------
# numbers in words: the inference normaliser's own speller (one speller for training and inference)

_ONES = tuple(cardinal_words(n) for n in range(20))  # "zero" .. "nineteen": single digits read aloud
number_words = cardinal_words


# ---------------------------------------------------------------------------------------------
# word forms


_IRREGULAR_PLURALS = {"mouse": "mice", "sheep": "sheep", "deer": "deer", "moose": "moose", "goose": "geese",
                      "fish": "fish", "leaf": "leaves", "knife": "knives", "scissors": "scissors",
                      "octopus": "octopuses", "cactus": "cacti", "child": "children", "person": "people",
                      "shelf": "shelves", "volcano": "volcanoes", "tomato": "tomatoes", "potato": "potatoes"}


def plural(noun: str) -> str:
    """English plural of a regular or listed irregular noun."""
    if noun in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[noun]
    if re.search(r"(s|x|z|ch|sh)$", noun):
        return noun + "es"
    if re.search(r"[^aeiou]y$", noun):
        return noun[:-1] + "ies"
    return noun + "s"


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" and not word.lower().startswith(("uni", "use", "eu", "one")) \
        else "a"


# ---------------------------------------------------------------------------------------------
# extended vocabulary


@lru_cache(maxsize=1)
def extended_vocabulary() -> dict[str, tuple[str, ...]]:
    """Frequent words by part of speech from hibari-tts' tagger dictionary, if installed (else empty).

    Only plain lowercase alphabetic words are kept; proper nouns are skipped (they are often foreign
    or odd) since the hand-written name lists cover names.
    """
    try:
        import gzip
        import json
        from importlib.resources import files

        with gzip.open(str(files("hibari") / "assets" / "tagger.json.gz"), "rt", encoding="utf-8") as f:
            tagdict: dict[str, str] = json.load(f)["tagdict"]
    except Exception:  # noqa: BLE001 - optional source: any failure means "not available"
        return {}
    wanted = {"NN": "noun", "NNS": "nouns", "JJ": "adj", "VBG": "ing", "RB": "adv"}
    out: dict[str, list[str]] = {v: [] for v in wanted.values()}
    for word, tag in sorted(tagdict.items()):
        if tag in wanted and word.isalpha() and word.islower() and 3 <= len(word) <= 14:
            if tag == "RB" and not word.endswith("ly"):
                continue
            out[wanted[tag]].append(word)
    return {k: tuple(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# filling the templates (`llmvox.train.sentence_vocabulary` lists the slots)


_TIME_WORDS = ["o'clock", "fifteen", "thirty", "forty five", "oh five", "twenty", "ten", "fifty"]


def _time(r: random.Random) -> str:
    h = r.randint(1, 12)
    kind = r.random()
    if kind < 0.15:
        return f"quarter past {number_words(h)}"
    if kind < 0.25:
        return f"half past {number_words(h)}"
    if kind < 0.3:
        return "noon" if r.random() < 0.5 else "midnight"
    m = r.choice(_TIME_WORDS)
    ampm = r.choice(["", "", " in the morning", " in the evening", " a m", " p m"])
    return f"{number_words(h)} {m}{ampm}"


def _money(r: random.Random) -> str:
    dollars = r.choice([r.randint(1, 20), r.randint(1, 99), r.randint(100, 999), r.randint(1000, 50000)])
    if r.random() < 0.4:
        cents = r.randint(1, 99)
        return f"{number_words(dollars)} dollars and {number_words(cents)} cents"
    unit = r.choice(["dollars", "dollars", "euros", "pounds"])
    return f"{number_words(dollars)} {unit}" if dollars != 1 else f"one {unit[:-1]}"


def _duration(r: random.Random) -> str:
    n = r.randint(2, 59)
    unit = r.choice(["minutes", "hours", "days", "weeks", "seconds"])
    return r.choice([f"{number_words(n)} {unit}", "about an hour", "half a day", f"{number_words(n)} {unit}"])


def _phone(r: random.Random) -> str:
    digits = [r.randint(0, 9) for _ in range(10)]
    say = ["oh" if d == 0 and r.random() < 0.5 else _ONES[d] for d in digits]
    return f"{' '.join(say[:3])}, {' '.join(say[3:6])}, {' '.join(say[6:])}"


class _Filler:
    """Fills template slots from the vocabulary with one seeded random generator."""

    def __init__(self, r: random.Random, ext: dict[str, tuple[str, ...]], ext_share: float) -> None:
        self.r, self.ext, self.ext_share = r, ext, ext_share

    def _pick(self, base: list[str] | tuple[str, ...], ext_key: str | None = None) -> str:
        pool = self.ext.get(ext_key or "", ())
        if pool and self.r.random() < self.ext_share:
            return self.r.choice(pool)
        return self.r.choice(base)

    def slot(self, key: str) -> str:
        r = self.r
        base = key.rstrip("0123456789")
        verb, iverb = r.choice(VERBS), r.choice(INTRANSITIVE)
        table = {
            "name": lambda: r.choice(NAMES),
            "surname": lambda: r.choice(SURNAMES),
            "full": lambda: f"{r.choice(NAMES)} {r.choice(SURNAMES)}",
            "title": lambda: r.choice(TITLES),
            "city": lambda: r.choice(CITIES),
            "country": lambda: r.choice(COUNTRIES),
            "day": lambda: r.choice(DAYS),
            "month": lambda: r.choice(MONTHS),
            "color": lambda: r.choice(COLORS),
            "obj": lambda: self._pick(OBJECTS, "noun"),
            "objs": lambda: self._plural_pick(OBJECTS),
            "thing": lambda: self._pick(OBJECTS + ABSTRACT, "noun"),
            "food": lambda: r.choice(FOODS),
            "foods": lambda: plural(r.choice(FOODS)),
            "animal": lambda: r.choice(ANIMALS),
            "animals": lambda: plural(r.choice(ANIMALS)),
            "job": lambda: r.choice(JOBS),
            "jobs": lambda: plural(r.choice(JOBS)),
            "place": lambda: r.choice(PLACES),
            "idea": lambda: self._pick(ABSTRACT, "noun"),
            "nature": lambda: r.choice(NATURE),
            "adj": lambda: self._pick(ADJECTIVES, "adj"),
            "adv": lambda: self._pick(ADVERBS, "adv"),
            "sup": lambda: superlative(r.choice(ADJECTIVES)),
            "v": lambda: verb[0],
            "vs": lambda: verb[1],
            "ved": lambda: verb[2],
            "ven": lambda: verb[3],
            "ving": lambda: self._pick([verb[4]], "ing"),
            "iv": lambda: iverb[0],
            "ivs": lambda: iverb[1],
            "ived": lambda: iverb[2],
            "iving": lambda: iverb[3],
            "num": lambda: number_words(r.choice([r.randint(2, 20), r.randint(21, 99), r.randint(100, 999)])),
            "small": lambda: number_words(r.randint(2, 12)),
            "big": lambda: number_words(r.choice([r.randint(1000, 99999), r.randint(100000, 9999999)])),
            "year": lambda: year_words(r.randint(1700, 2030)),
            "ord": lambda: ordinal_words(r.randint(1, 31)),
            "time": lambda: _time(r),
            "money": lambda: _money(r),
            "pct": lambda: number_words(r.randint(2, 99)) + " percent",
            "dec": lambda: f"{number_words(r.randint(0, 9))} point {_ONES[r.randint(1, 9)]}",
            "phone": lambda: _phone(r),
            "dur": lambda: _duration(r),
        }
        if base not in table:
            raise KeyError(f"unknown template slot {{{key}}}")
        return table[base]()

    def _plural_pick(self, base: list[str]) -> str:
        pool = self.ext.get("nouns", ())
        if pool and self.r.random() < self.ext_share:
            return self.r.choice(pool)
        return plural(self.r.choice(base))

    def fill(self, template: str) -> str:
        """Fill every slot (a repeated slot name gets the same word) and fix a/an."""
        values: dict[str, str] = {}

        def sub(m: re.Match[str]) -> str:
            key = m.group(1)
            if key not in values:
                values[key] = self.slot(key)
            return values[key]

        text = re.sub(r"\{(\w+)\}", sub, template)
        return re.sub(r"\b([Aa]) (\w+)", lambda m: _fix_article(m.group(1), m.group(2)), text)


def _fix_article(a: str, word: str) -> str:
    art = _article(word) if len(word) > 1 else "a"  # "a m" (the time) stays as it is
    return (art if a == "a" else art.capitalize()) + " " + word


def superlative(adj: str) -> str:
    """"-est" form for short adjectives, "most ..." for long ones."""
    if len(adj) > 6 or adj.endswith(("ful", "ous", "ive", "ing", "ed", "ic", "al")):
        return "most " + adj
    if adj.endswith("y"):
        return adj[:-1] + "iest"
    if adj.endswith("e"):
        return adj + "st"
    if re.fullmatch(r"[^aeiou]*[aeiou][^aeiouwxy]", adj):
        return adj + adj[-1] + "est"
    return adj + "est"


def _capitalise(text: str) -> str:
    for i, ch in enumerate(text):
        if ch.isalpha():
            return text[:i] + ch.upper() + text[i + 1:]
    return text


def sentence_key(text: str) -> str:
    """Comparison key: lowercase words only (punctuation and spacing ignored)."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def load_heldout(path: str | Path = HELDOUT_PATH) -> list[str]:
    """The held-out evaluation sentences (one a line, blank lines and # comments skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


_PROPER = frozenset(NAMES + CITIES + COUNTRIES + MONTHS + DAYS + TITLES + ["I"])


def _one_sentence(f: _Filler) -> str:
    r = f.r
    kind = r.random()
    if kind < 0.12:
        text = f.fill(r.choice(SHORT))
    elif kind < 0.52:
        text = f.fill(r.choice(STATEMENTS))
    elif kind < 0.72:
        text = f.fill(r.choice(QUESTIONS))
    elif kind < 0.78:
        text = f.fill(r.choice(EXCLAMATIONS))
    elif kind < 0.85:
        quote = r.choice(QUOTES)
        inner_s = f.fill(r.choice(STATEMENTS)).rstrip(".")
        inner_q = f.fill(r.choice(QUESTIONS))
        lowered = inner_s if inner_s.split(" ", 1)[0] in _PROPER else inner_s[0].lower() + inner_s[1:]
        text = f.fill(quote.replace("{Sentence}", "@S@").replace("{Question}", "@Q@").replace("{sentence}", "@s@"))
        text = text.replace("@S@", inner_s + ".").replace("@Q@", inner_q).replace("@s@", lowered + ".")
    else:  # a long compound sentence
        a = f.fill(r.choice(STATEMENTS)).rstrip(".!")
        b = f.fill(r.choice(STATEMENTS)).rstrip(".!")
        b = b if b.split(" ", 1)[0] in _PROPER else b[0].lower() + b[1:]
        text = a + r.choice(CONNECTORS) + b + "."
    return _capitalise(text)


def sentence_set(n: int, seed: int = 0, *, extended_vocab: bool = True, ext_share: float = 0.35,
                 exclude: list[str] | None = None) -> list[str]:
    """`n` distinct generated sentences, the same list for the same seed.

    `exclude` (default: the held-out set) lists sentences that must never appear.
    """
    exclude = load_heldout() if exclude is None else exclude
    banned = {sentence_key(s) for s in exclude}
    ext = extended_vocabulary() if extended_vocab else {}
    filler = _Filler(random.Random(seed), ext, ext_share)
    out: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"could only generate {len(out)} distinct sentences of {n}")
        text = _one_sentence(filler)
        key = sentence_key(text)
        if key in seen or key in banned:
            continue
        seen.add(key)
        out.append(text)
    return out


def iter_words(texts: list[str]) -> Iterator[str]:
    """Lowercase words of the texts (for vocabulary statistics)."""
    for t in texts:
        yield from re.findall(r"[a-z']+", t.lower())
