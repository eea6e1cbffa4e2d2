"""Pronunciation lexicon: the user's own reading of names, acronyms and units, applied before the decoder.

A lexicon maps a word (or a few words) to a pronunciation: misaki phonemes for a phoneme voice, a
respelling (plain words) for a byte voice. It is read from a file (`--lexicon FILE`) or a request's
`lexicon` object, checked against the voice once, and applied by the voice's front-end reader.

Order: the normaliser runs first, then the lexicon, then the front-end. Every key is itself run
through the normaliser when the lexicon is loaded, so a key matches the words the normaliser makes of
it in the text: "U.S." (spoken "U S"), "km/h" ("km slash h"), "AT&T" ("AT and T") and "R2-D2" ("R two
D two") all match as written, while names and acronyms the normaliser leaves alone ("Nguyen", "NASA")
match as themselves. Matching after the normaliser means a lexicon can never break a number, date or
currency rule, and a pronunciation is never spelled out again. (A unit after a number is read by the
normaliser's unit rule: "60 km/h" is already "sixty kilometers per hour", which a key "kilometers"
can change.)

Matching: whole words only, the longest key first (keys span at most MAX_KEY_WORDS words); punctuation
around a word is kept around its pronunciation ("NASA," -> "Nassa,"), and "'s" after a key is kept
("NASA's"). A key in lower case matches any casing ("nguyen": "Nguyen", "NGUYEN"); a key with a capital
letter matches only that casing ("US" the country, not "us"). A one-word key delays nothing; a word
that begins a longer key waits for the next word.

File formats (UTF-8, at most MAX_FILE_BYTES, MAX_ENTRIES entries):
- TSV: `word<TAB>pronunciation` per line; blank lines and lines starting with `#` are skipped.
- JSON: one object `{"word": "pronunciation", ...}` (a file whose first character is `{`).
A key is at most MAX_KEY_CHARS characters and MAX_KEY_WORDS words, a pronunciation at most
MAX_PRONUNCIATION_CHARS; a key listed twice is an error, not a silent override.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmvox.errors import LLMVoXError
from llmvox.text.frontend import TextFrontend, WordReader
from llmvox.text.normalize import normalize, split_words

MAX_FILE_BYTES = 1 << 20  # a lexicon file
MAX_ENTRIES = 10_000  # in a file
MAX_REQUEST_ENTRIES = 256  # in one request's `lexicon` object
MAX_KEY_CHARS = 64
MAX_PRONUNCIATION_CHARS = 200
MAX_KEY_WORDS = 4

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_POSSESSIVE = ("'s", "’s")

Key = tuple[str, ...]


def _split(word: str) -> tuple[str, str, str]:
    """Punctuation before, the core (first to last letter or digit), punctuation after."""
    start, end = 0, len(word)
    while start < end and not word[start].isalnum():
        start += 1
    while end > start and not word[end - 1].isalnum():
        end -= 1
    return word[:start], word[start:end], word[end:]


class Lexicon:
    """Entries checked against one voice's front-end, compiled for whole-word matching."""

    def __init__(self, entries: Mapping[str, str], frontend: TextFrontend, source: str = "lexicon") -> None:
        self.kind = frontend.kind
        self.source = source
        self.entries = len(entries)
        self._exact: dict[Key, str] = {}
        self._folded: dict[Key, str] = {}
        self._prefixes: set[Key] = set()  # proper prefixes of keys (folded), to know when to wait
        for word, pronunciation in entries.items():
            reason = frontend.pronunciation_error(pronunciation)
            if reason:
                raise LLMVoXError(f"{source}: the pronunciation of {word!r} {reason}", 400, code="invalid_lexicon")
            for key in _key_forms(word):
                table = self._exact if any(c.isupper() for c in word) else self._folded
                table[key if table is self._exact else _fold(key)] = pronunciation
                self._prefixes.update(_fold(key[:n]) for n in range(1, len(key)))

    def __len__(self) -> int:
        return self.entries

    def lookup(self, key: Key) -> str | None:
        """The pronunciation of these word cores (punctuation already stripped), or None."""
        found = self._exact.get(key)
        return found if found is not None else self._folded.get(_fold(key))

    def may_grow(self, key: Key) -> bool:
        """True when `key` begins a longer key: the reader waits for the next word."""
        return _fold(key) in self._prefixes

    def bind(self, frontend: TextFrontend) -> TextFrontend:
        """`frontend` reading with this lexicon first (over any lexicon it already reads with)."""
        base, lexicons = (frontend.inner, frontend.lexicons) if isinstance(frontend, LexiconFrontend) else (frontend, ())
        if base.kind != self.kind:
            raise LLMVoXError(f"{self.source} was checked for a {self.kind} voice, not a {base.kind} one")
        return LexiconFrontend(base, (self, *lexicons))


class LexiconFrontend(TextFrontend):
    """A voice's front-end with lexicons (first wins); the bundle's description stays the voice's own."""

    def __init__(self, inner: TextFrontend, lexicons: tuple[Lexicon, ...]) -> None:
        self.inner = inner
        self.lexicons = lexicons
        self.kind = inner.kind

    def reader(self) -> WordReader:
        return LexiconReader(self.inner, self.lexicons)

    def config(self) -> dict[str, Any]:
        return self.inner.config()

    def pronunciation_error(self, pronunciation: str) -> str | None:
        return self.inner.pronunciation_error(pronunciation)

    def __getattr__(self, name: str) -> Any:  # the inner front-end's own attributes (a phoneme table)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class LexiconReader(WordReader):
    """Matches lexicon keys in the words of one sentence and hands the front-end's reader their
    pronunciations in place of the words; a word that begins a longer key is held until it is decided."""

    def __init__(self, frontend: TextFrontend, lexicons: tuple[Lexicon, ...]) -> None:
        self.frontend = frontend
        self.lexicons = lexicons
        self.inner = frontend.reader()
        self.held: list[str] = []

    def push(self, word: str) -> list[int]:
        self.held.append(word)
        return self._drain(final=False)

    def finish(self) -> list[int]:
        return self._drain(final=True) + self.inner.finish()

    def _drain(self, *, final: bool) -> list[int]:
        ids: list[int] = []
        while self.held:
            if not final and len(self.held) < MAX_KEY_WORDS and self._may_grow(self.held):
                break
            n, words = self._match(self.held)
            del self.held[:n]
            for word in words:
                ids.extend(self.inner.push(word))
        return ids

    def _may_grow(self, held: list[str]) -> bool:
        parts = [_split(w) for w in held]
        if any(p[2] for p in parts) or any(p[0] for p in parts[1:]):
            return False  # punctuation ends the span: no longer key can match through it
        return any(lexicon.may_grow(tuple(p[1] for p in parts)) for lexicon in self.lexicons)

    def _match(self, held: list[str]) -> tuple[int, list[str]]:
        """How many held words the longest match at the front takes, and the words to read instead."""
        parts = [_split(w) for w in held[:MAX_KEY_WORDS]]
        for n in range(len(parts), 0, -1):
            if any(p[2] for p in parts[:n - 1]) or any(p[0] for p in parts[1:n]):
                continue  # punctuation inside the span: these words are not one key
            cores = tuple(p[1] for p in parts[:n])
            lead, trail = parts[0][0], parts[n - 1][2]
            found = self._lookup(cores)
            if found is None and cores[-1].endswith(_POSSESSIVE):
                found = self._lookup((*cores[:-1], cores[-1][:-2]))
                if found is not None:
                    trail = cores[-1][-2:] + trail
                    cores = (*cores[:-1], cores[-1][:-2])
            if found is not None:
                return n, self.frontend.pronounce(lead, " ".join(cores), found, trail)
        return 1, [held[0]]

    def _lookup(self, key: Key) -> str | None:
        for lexicon in self.lexicons:
            found = lexicon.lookup(key)
            if found is not None:
                return found
        return None


def _fold(key: Key) -> Key:
    return tuple(w.casefold() for w in key)


def _key_forms(word: str) -> set[Key]:
    """The word cores a key matches: as written, and as the normaliser reads it."""
    forms = set()
    for words in (word.split(), split_words(normalize(word))):
        key = tuple(core for core in (_split(w)[1] for w in words) if core)
        if key and len(key) <= MAX_KEY_WORDS:
            forms.add(key)
    return forms


# ---- reading entries --------------------------------------------------------------------------------


def check_entries(entries: Mapping[Any, Any], source: str, *, limit: int = MAX_ENTRIES) -> dict[str, str]:
    """The entries as str -> str, bounded, each a speakable key and a non-empty pronunciation."""
    if len(entries) > limit:
        raise LLMVoXError(f"{source} has {len(entries)} entries; the limit is {limit}", 400, code="invalid_lexicon")
    out: dict[str, str] = {}
    for word, pronunciation in entries.items():
        if not isinstance(word, str) or not isinstance(pronunciation, str):
            raise LLMVoXError(f"{source}: each entry is a word and its pronunciation, both text "
                              f"(got {word!r}: {pronunciation!r})", 400, code="invalid_lexicon")
        word, pronunciation = word.strip(), " ".join(pronunciation.split())
        problem = _entry_problem(word, pronunciation)
        if problem:
            raise LLMVoXError(f"{source}: {problem}", 400, code="invalid_lexicon")
        out[word] = pronunciation
    return out


def _entry_problem(word: str, pronunciation: str) -> str | None:
    if not word or not any(c.isalnum() for c in word):
        return f"the word {word!r} has no letters or digits"
    if len(word) > MAX_KEY_CHARS or len(word.split()) > MAX_KEY_WORDS:
        return f"the word {word[:MAX_KEY_CHARS]!r} is too long (at most {MAX_KEY_CHARS} characters, " \
               f"{MAX_KEY_WORDS} words)"
    if _CONTROL.search(word) or "[" in word or "]" in word:
        return f"the word {word!r} has a control character or a bracket"
    if not pronunciation:
        return f"the pronunciation of {word!r} is empty"
    if len(pronunciation) > MAX_PRONUNCIATION_CHARS:
        return f"the pronunciation of {word!r} is longer than {MAX_PRONUNCIATION_CHARS} characters"
    if _CONTROL.search(pronunciation):
        return f"the pronunciation of {word!r} has a control character"
    return None


def parse_lexicon(text: str, source: str) -> dict[str, str]:
    """Entries of a lexicon file's text: a JSON object, or `word<TAB>pronunciation` lines."""
    if text.lstrip()[:1] in ("{", "["):  # JSON (a TSV word cannot start with a bracket)
        try:
            entries = json.loads(text, object_pairs_hook=lambda pairs: _no_duplicates(pairs, source))
        except json.JSONDecodeError as exc:
            raise LLMVoXError(f"{source} is not valid JSON: {exc}", 400, code="invalid_lexicon") from None
        if not isinstance(entries, dict):
            raise LLMVoXError(f"{source} must be one JSON object of word: pronunciation", 400, code="invalid_lexicon")
        return check_entries(entries, source)
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, tab, pronunciation = line.partition("\t")
        if not tab:
            raise LLMVoXError(f"{source} line {number}: expected WORD<TAB>PRONUNCIATION, got {line[:60]!r}", 400,
                              code="invalid_lexicon")
        pairs.append((word.strip(), pronunciation))
        if len(pairs) > MAX_ENTRIES:
            break  # check_entries names the limit
    return check_entries(_no_duplicates(pairs, source), source)


def _no_duplicates(pairs: list[tuple[Any, Any]], source: str) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for word, pronunciation in pairs:
        if word in out:
            raise LLMVoXError(f"{source}: {word!r} is listed twice", 400, code="invalid_lexicon")
        out[word] = pronunciation
    return out


def read_lexicon(path: str | Path) -> dict[str, str]:
    """The entries of the lexicon file at `path` (its size bounded before it is read)."""
    path = Path(path)
    source = f"lexicon {path}"
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise LLMVoXError(f"{source} is {size} bytes; the limit is {MAX_FILE_BYTES}")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LLMVoXError(f"{source}: no such file") from None
    except UnicodeDecodeError:
        raise LLMVoXError(f"{source} is not UTF-8 text") from None
    except OSError as exc:
        raise LLMVoXError(f"{source} cannot be read: {exc.strerror or exc}") from None
    return parse_lexicon(text, source)


def load_lexicon(path: str | Path, frontend: TextFrontend) -> Lexicon:
    """The lexicon file at `path`, checked against the voice's front-end."""
    return Lexicon(read_lexicon(path), frontend, f"lexicon {path}")


def request_lexicon(value: Any, frontend: TextFrontend, param: str = "lexicon") -> Lexicon | None:
    """A request's `lexicon` object (None: none given), checked against the voice: a 400 naming `param`."""
    if value is None:
        return None
    try:
        if not isinstance(value, dict):
            raise LLMVoXError(f"{param} must be a JSON object of word: pronunciation", 400, code="invalid_lexicon")
        return Lexicon(check_entries(value, param, limit=MAX_REQUEST_ENTRIES), frontend, param)
    except LLMVoXError as exc:
        raise LLMVoXError(exc.message, 400, code="invalid_lexicon", param=param) from None
