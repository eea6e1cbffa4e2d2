"""Text front-ends: how a voice turns the words it is given into the text ids its decoder reads.

A voice is trained with one front-end and its bundle says which (`config.json` -> "text_frontend"):

- `byt5`: UTF-8 bytes + 3, `</s>` after every word, 385 after the sentence's last one. The released
  LLMVoX and every original checkpoint read this; its ids are exactly the original's.
- `phonemes`: the misaki phonemes of the teacher's own g2p (`hibari-tts`), one id per phoneme symbol
  from the table the bundle stores, then the same `</s>` and sentence-end ids. The decoder no longer
  has to learn English spelling-to-sound from a few hours of speech.

Text streams in word by word (an LLM writing), and a word's phonemes can depend on its neighbours
("the apple" / "the dog", a verb or a noun "record"). The phoneme reader therefore holds one word
back: when word k+1 arrives it runs the g2p on the sentence so far and releases word k, read with all
of its left context and one word of right context; the sentence's end releases the last word. Training
encodes its transcripts with the same reader, so what the voice hears at inference is exactly what it
was trained on.

A pronunciation lexicon (`llmvox.text.lexicon`) reads through the same readers: each front-end says
which pronunciations it can read (`pronunciation_error`) and what to read in place of a matched word
(`pronounce`: the respelling's words, or the g2p's own `[word](/phonemes/)` override).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

from llmvox.errors import LLMVoXError
from llmvox.text.tokenizer import BYTE_OFFSET, EOS_ID, SENTENCE_END_ID, encode_chunk

FRONTENDS = ("byt5", "phonemes")
_OVERRIDE_SYNTAX = frozenset("[]()/")  # hibari's `[word](/phonemes/)`


class WordReader(ABC):
    """Reads one sentence word by word: `push` each word, then `finish`; each returns the ids that can be
    fed to the decoder now (a reader may hold a word back until it knows the next one)."""

    @abstractmethod
    def push(self, word: str) -> list[int]:
        """Ids released by this word (possibly none yet, possibly an earlier word's)."""

    @abstractmethod
    def finish(self) -> list[int]:
        """The sentence ends after the words pushed so far: every id still held, then the sentence end."""


class TextFrontend(ABC):
    """One way of reading text: a fresh `reader()` per sentence, and the bundle's description of it."""

    kind: str

    @abstractmethod
    def reader(self) -> WordReader:
        """A reader for one sentence."""

    def config(self) -> dict[str, Any]:
        """What a bundle's config.json stores under "text_frontend"."""
        return {"kind": self.kind}

    def pronunciation_error(self, pronunciation: str) -> str | None:
        """Why a lexicon pronunciation cannot be read by this voice (None: it can). A byte voice reads a
        respelling as written, after the normaliser: numbers in it would reach the decoder as digits."""
        digit = next((c for c in pronunciation if c.isdigit()), None)
        return f"has the digit {digit!r}: write numbers as words" if digit else None

    def pronounce(self, lead: str, text: str, pronunciation: str, trail: str) -> list[str]:
        """The words to read in place of `text` (a lexicon match, its punctuation `lead` and `trail`
        kept around it): a byte voice reads the respelling's words."""
        words = pronunciation.split()
        words[0] = lead + words[0]
        words[-1] += trail
        return words

    def encode_words(self, words: Iterable[str]) -> list[int]:
        """Ids of one whole sentence given as words, exactly as streaming them one by one would give."""
        words = [w for w in words if w]
        reader = self.reader()
        ids: list[int] = []
        for word in words:
            ids.extend(reader.push(word))
        return ids + reader.finish() if words else ids


class _ByteReader(WordReader):
    def push(self, word: str) -> list[int]:
        return encode_chunk(word)

    def finish(self) -> list[int]:
        return [SENTENCE_END_ID]


class ByteFrontend(TextFrontend):
    """The original LLMVoX ids: bytes + 3, `</s>` per word, 385 at the sentence's end."""

    kind = "byt5"

    def reader(self) -> WordReader:
        return _ByteReader()


class PhonemeFrontend(TextFrontend):
    """Misaki phonemes from hibari's g2p; `symbols` maps each phoneme character to its decoder id.

    Without `symbols` (a new voice) the table is built from the g2p's own phoneme vocabulary: symbol
    id i becomes decoder id i + 3, clear of the `</s>` (1), pad (384) and sentence-end (385) ids.
    """

    kind = "phonemes"

    def __init__(self, symbols: dict[str, int] | None = None) -> None:
        try:
            from hibari.g2p import G2P
            from hibari.g2p.normalize import normalize
        except ImportError:
            raise LLMVoXError("this voice reads phonemes, which needs the g2p of hibari-tts: "
                              "pip install 'hibari-tts>=0.2.1' (./setup.sh installs it)") from None
        self._g2p = G2P()
        self._normalize = normalize
        if symbols is None:
            symbols = {s: i + BYTE_OFFSET for s, i in _g2p_vocabulary().items() if i > 0}
        bad = sorted(i for i in symbols.values() if not BYTE_OFFSET <= i < BYTE_OFFSET + 256)
        if bad:
            raise LLMVoXError(f"phoneme ids must lie in {BYTE_OFFSET}..{BYTE_OFFSET + 255} (got {bad[:3]})")
        self.symbols = dict(symbols)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "g2p": "hibari-tts misaki (American English)", "symbols": self.symbols}

    def reader(self) -> WordReader:
        return _PhonemeReader(self)

    def word_phonemes(self, text: str) -> list[str]:
        """The phonemes of each whitespace-separated word of `text`, in order (a word may have none)."""
        tokens = self._g2p.phonemize_tokens(self._g2p.tokenize(self._normalize(text)))
        words, current = [], ""
        for token in tokens:
            current += token.phonemes or ""
            if token.whitespace:
                words.append(current)
                current = ""
        if current or not words:
            words.append(current)
        return words

    def pronunciation_error(self, pronunciation: str) -> str | None:
        """Misaki phonemes, each one in this voice's table (brackets would break the g2p's override)."""
        for c in pronunciation:
            if c in _OVERRIDE_SYNTAX:
                return f"uses {c!r}, which a pronunciation cannot contain"
            if c not in self.symbols:
                return f"uses {c!r}, which is not in this voice's phoneme table"
        return None

    def pronounce(self, lead: str, text: str, pronunciation: str, trail: str) -> list[str]:
        """One word for the g2p in its own override syntax, `[text](/phonemes/)`: the g2p still sees the
        word in its sentence, so its neighbours keep their context ("the" before a vowel)."""
        return [f"{lead}[{text}](/{pronunciation}/){trail}"]

    def ids(self, phonemes: str) -> list[int]:
        return [self.symbols[c] for c in phonemes if c in self.symbols]


class _PhonemeReader(WordReader):
    """One word of look-ahead: a word is released when the next one (or the sentence's end) is known."""

    def __init__(self, frontend: PhonemeFrontend) -> None:
        self.frontend = frontend
        self.words: list[str] = []
        self.released = 0  # how many of the g2p's words have been fed

    def push(self, word: str) -> list[int]:
        self.words.append(word)
        return self._release(final=False) if len(self.words) > 1 else []

    def finish(self) -> list[int]:
        return (self._release(final=True) if self.words else []) + [SENTENCE_END_ID]

    def _release(self, *, final: bool) -> list[int]:
        read = self.frontend.word_phonemes(" ".join(self.words))
        ready = read[self.released:] if final else read[self.released:-1]
        self.released += len(ready)
        ids: list[int] = []
        for phonemes in ready:
            word_ids = self.frontend.ids(phonemes)
            if word_ids:
                ids.extend([*word_ids, EOS_ID])
        return ids


def _g2p_vocabulary() -> dict[str, int]:
    """The teacher's phoneme symbols and their ids (0 is its padding, never a phoneme)."""
    import json
    from importlib.resources import files

    return json.loads(files("hibari").joinpath("assets/vocab.json").read_text(encoding="utf-8"))


def frontend_from_config(config: dict[str, Any] | None) -> TextFrontend:
    """The front-end a bundle's "text_frontend" entry describes (none: byt5, as every original voice)."""
    kind = (config or {}).get("kind", "byt5")
    if kind == "byt5":
        return ByteFrontend()
    if kind == "phonemes":
        symbols = config.get("symbols") if config else None
        if not isinstance(symbols, dict) or not symbols:
            raise LLMVoXError("a phoneme voice's config must store its phoneme table (text_frontend.symbols)")
        return PhonemeFrontend({str(k): int(v) for k, v in symbols.items()})
    raise LLMVoXError(f"unknown text front-end {kind!r} (known: {', '.join(FRONTENDS)})")


def new_frontend(kind: str) -> TextFrontend:
    """The front-end a new training run reads with."""
    if kind == "byt5":
        return ByteFrontend()
    if kind == "phonemes":
        return PhonemeFrontend()
    raise LLMVoXError(f"unknown text front-end {kind!r} (known: {', '.join(FRONTENDS)})")
