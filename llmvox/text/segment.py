"""Streaming text stages: LLM text deltas -> whole words -> sentences -> speakable words.

Why: an LLM streams sub-word pieces ("Hel", "lo", " wor", "ld,"), but the decoder was trained on whole
words (one `</s>` after each word) and on sentences (one segment each, ending in the sentence-end id).
And numbers, dates and markdown need context wider than one word ("March 5, 2024", "$1,234.56").

Latency choice. Waiting for each full sentence before speaking is simple and correct, but the first
audio would then wait for the LLM to finish the first sentence. The decoder instead only needs the
*next* word. So `SpeakableStream` emits a word as soon as nothing later in the text can change it:

1. `SentenceSegmenter` finds sentence boundaries on the raw text (it waits for the character after a
   '.', so "3." + "5" is never split), treating a fenced code block as one segment.
2. Inside the unfinished sentence, the normaliser's pieces (see `llmvox.text.normalize`) are final
   once RULE_SPAN_WORDS complete words follow them, because no rule reaches further. Their words are
   emitted then, all but the last one (a later "!" may still attach to it). So a word leaves once the
   three words after it are complete (about four LLM tokens later), not at the end of the sentence.
3. When the sentence ends, it is normalised as a whole and its remaining words are emitted, the last
   one marked `ends_sentence`. By construction the words equal `normalize(sentence).split()` (up to
   punctuation attached to neighbours): early emission changes when words leave, never which words.

A sentence longer than `max_chars` is cut at a comma or space in its second half; words are emitted
early only from the first half, which a cut never touches. `speakable_sentences` groups the same word
stream by sentence for callers that want whole sentences.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from llmvox.text.normalize import (
    DOTTED_ABBREVIATIONS,
    END_ABBREVIATIONS,
    RULE_SPAN_WORDS,
    TITLE_ABBREVIATIONS,
    PieceJoiner,
    pieces,
    split_words,
)

__all__ = [
    "SentenceSegmenter",
    "SpeakableStream",
    "SpeakableWord",
    "WordJoiner",
    "speakable_sentences",
    "speakable_words",
]

DEFAULT_MAX_CHARS = 300


class WordJoiner:
    """Joins sub-word deltas into whitespace-delimited words, each returned once it is complete."""

    def __init__(self) -> None:
        self._partial: list[str] = []

    def feed(self, delta: str) -> list[str]:
        if not delta:
            return []
        if not any(c.isspace() for c in delta):  # mid-word: no join, so a long word stays linear
            self._partial.append(delta)
            return []
        text = "".join(self._partial) + delta
        words = text.split()
        self._partial = [words.pop()] if words and not text[-1].isspace() else []
        return words

    def flush(self) -> list[str]:
        word = "".join(self._partial)
        self._partial = []
        return [word] if word else []


# ---------------------------------------------------------------------------------------------
# sentence segmentation

_WAIT = None  # a decision that needs characters not yet seen
_TERMINATORS = frozenset(".?!…")
_CLOSERS = frozenset(")]}\"'”’»*_`")
_QUOTES = frozenset("\"'”’»")
_CANDIDATE = re.compile(r"[.?!…\n]")
# Every look-ahead is bounded (64 spaces, 32 terminators, 32-character fences), so a decision never
# waits on an unbounded run and the scan stays linear on any input.
_SPACE = re.compile(r"\s*")
_LOOK_SPACE = re.compile(r"\s{0,64}")
_HSPACE = re.compile(r"[ \t]{0,64}")  # the normaliser uses the same bound when it keeps a final '.'
_MAX_RUN = 32
_BLOCK_START = re.compile(
    r"[ \t]{0,64}(?:(?P<fence>`{3,32}|~{3,32})|[-*+•][ \t]|\d{1,3}[.)][ \t]|#{1,6}[ \t]|>|\||-{3,}|\*{3,}|_{3,})")
_BLOCK_PARTIAL = re.compile(r"[ \t]{0,64}(?:`{1,2}|~{1,2}|[-*+•]|\d{1,3}[.)]?|#{1,6}|-{1,2}|\*{1,2}|_{1,2})?\Z")
_FENCE_TAIL = re.compile(r"[`~]*[ \t]*\Z")

# must agree with the normaliser, which keeps the '.' of an abbreviation exactly where a sentence ends
_NEVER_ENDS = {f"{a}." for a in TITLE_ABBREVIATIONS} | set(DOTTED_ABBREVIATIONS)
_MAY_END = {f"{a}." for a in END_ABBREVIATIONS} | {"a.m.", "p.m.", "A.M.", "P.M."}
_NUMBER_ABBR = {"No.", "no.", "Nos.", "nos."}
_ACRONYM = re.compile(r"(?:[A-Za-z]\.){2,}")
_INITIAL = re.compile(r"[A-Z]\.")
_LIST_NUMBER = re.compile(r"\d{1,3}\.")
_TOKEN_OPENERS = "(\"'[*_“‘`"


class SentenceSegmenter:
    """Incremental sentence splitter: feed text deltas, get complete sentences (stripped, non-empty).

    Boundaries: '.', '?', '!', '…' runs (plus closing quotes, brackets or markdown markers) followed by
    whitespace; a blank line; a line break before or after a markdown block line (list item, heading,
    quote, table row, rule); a fenced code block is one segment. Not a boundary: titles and dotted
    abbreviations ("Dr.", "e.g.", "U.S."), "etc." / "Inc." before a lowercase word, "No. 5", initials
    ("J. K."), list numbers ("1. "), and anything not yet followed by a character. A sentence that
    grows past `max_chars` is cut at the last ", " / "; " / ": " in its second half, else the last
    space there, else hard at `max_chars`. Output never depends on how the text was split into deltas.
    """

    def __init__(self, max_chars: int | None = DEFAULT_MAX_CHARS) -> None:
        if max_chars is not None and max_chars < 8:
            raise ValueError("max_chars must be at least 8 (or None for no limit)")
        self.max_chars = max_chars
        self._reset()

    def _reset(self) -> None:
        self._buf = ""
        self._base = 0  # start of the current segment in _buf
        self._i = 0  # candidates before _i are decided: not boundaries
        self._fresh = True  # nothing of the current segment scanned yet
        self._line_start = True  # the current segment starts at the beginning of a line
        self._line_kind: str | None = None  # "block" / "plain" for the line being scanned
        self._fence: str | None = None  # marker of the open code fence
        self._fence_scan = 0  # where to look for the next line break inside the open block
        self._fence_line = 0  # start of the block's line being examined

    @property
    def pending(self) -> str:
        """Text of the unfinished segment (a prefix of the segment it will become)."""
        return self.pending_prefix(None)

    def pending_prefix(self, chars: int | None) -> str:
        """The first `chars` characters of `pending` (all of it for None), without copying the rest."""
        if self._fresh:
            return ""  # nothing but whitespace since the last segment
        end = None if chars is None else self._base + chars
        return self._buf[self._base:end]

    @property
    def in_code_block(self) -> bool:
        return self._fence is not None

    def feed(self, delta: str) -> list[str]:
        if self._base > 4096 and self._base * 2 > len(self._buf):  # amortised compaction
            self._shift(self._base)
        self._buf += delta
        return self._run(final=False)

    def flush(self) -> list[str]:
        out = self._run(final=True)
        rest = self._buf[self._base:].strip()
        if rest:
            out.append(rest)
        self._reset()
        return out

    # --- internals -------------------------------------------------------------------------------

    def _shift(self, n: int) -> None:
        self._buf = self._buf[n:]
        self._base -= n
        self._i -= n
        self._fence_scan = max(0, self._fence_scan - n)
        self._fence_line = max(0, self._fence_line - n)

    def _emit(self, out: list[str], end: int) -> None:
        segment = self._buf[self._base:end].strip()
        if segment:
            out.append(segment)
        self._base = self._i = end
        self._fresh = True

    def _run(self, final: bool) -> list[str]:
        out: list[str] = []
        buf = self._buf
        n = len(buf)
        while True:
            if self._fresh and self._fence is None:
                q = _SPACE.match(buf, self._base).end()
                if "\n" in buf[self._base:q]:
                    self._line_start, self._line_kind = True, None
                self._base = self._i = q
                if q == n:
                    break  # only whitespace so far: the segment has not started
                self._fresh = False
            if self._fence is not None:
                end = self._fence_end(final)
                if end is None:
                    break
                self._emit(out, end)
                self._fence = None
                continue
            if self._i == self._base and self._line_start and self._line_kind is None:
                kind = self._kind_of_line(self._base, final)
                if kind is _WAIT:
                    break
                if kind.startswith("`") or kind.startswith("~"):
                    self._fence, self._fence_scan, self._fence_line = kind, self._base, self._base
                    continue
                self._line_kind = kind
            m = _CANDIDATE.search(buf, self._i)
            j = m.start() if m else n
            limit = self.max_chars
            if limit is not None and j - self._base >= limit and n - self._base > limit:
                self._emit(out, _cut_point(buf, self._base, limit))
                self._line_start = False
                continue
            if m is None:
                self._i = n
                break
            decision = self._decide(j, final)
            if decision is _WAIT:
                self._i = j
                break
            is_boundary, pos = decision
            if is_boundary:
                self._emit(out, pos)
            else:
                self._i = pos
        return out

    def _kind_of_line(self, p: int, final: bool) -> str | None:
        """'block', 'plain', the fence marker, or _WAIT if the line's first characters are not in yet."""
        buf = self._buf
        m = _BLOCK_START.match(buf, p)
        if m:
            if m["fence"]:
                growing = m.end() == len(buf) and len(m["fence"]) < 32 and not final
                return _WAIT if growing else m["fence"]
            return "block"
        if not final and _BLOCK_PARTIAL.match(buf, p):
            return _WAIT
        return "plain"

    def _fence_end(self, final: bool) -> int | None:
        """End of the open code block (after its closing fence line), or None while it is still open."""
        buf, marker = self._buf, self._fence
        assert marker is not None
        while True:
            nl = buf.find("\n", self._fence_scan)
            if nl < 0:
                if final:
                    return len(buf)
                self._fence_scan = len(buf)  # the line is unfinished: look again from here
                return None
            line = buf[self._fence_line:nl].lstrip(" \t")
            if (self._fence_line > self._base and line.startswith(marker)
                    and _FENCE_TAIL.match(line, len(marker))):
                return nl
            self._fence_line = self._fence_scan = nl + 1

    def _decide_newline(self, j: int, final: bool) -> tuple[bool, int] | None:
        """A line break ends a sentence unless the next line continues plain prose."""
        buf = self._buf
        if self._line_kind == "block":
            return True, j
        q = _HSPACE.match(buf, j + 1).end()
        if q == len(buf):
            return (True, j) if final else _WAIT
        if buf[q] == "\n":
            return True, j
        kind = self._kind_of_line(j + 1, final)
        if kind is _WAIT:
            return _WAIT
        if kind != "plain":
            return True, j
        self._line_kind = "plain"
        return False, j + 1

    def _decide(self, j: int, final: bool) -> tuple[bool, int] | None:
        """Is the candidate at j a boundary? (True, segment end) / (False, resume at) / _WAIT."""
        buf = self._buf
        n = len(buf)
        if buf[j] == "\n":
            return self._decide_newline(j, final)
        k, cap = j, min(n, j + _MAX_RUN)
        while k < cap and buf[k] in _TERMINATORS:
            k += 1
        single_period = k == j + 1 and buf[j] == "."
        run_end = k
        while k < cap and buf[k] in _CLOSERS:
            k += 1
        if k - j == _MAX_RUN:  # "!!!!!!..." without end: a boundary after the first 32
            return True, k
        if k == n:
            return (True, k) if final else _WAIT
        if not buf[k].isspace():
            return False, k
        if any(c in _QUOTES for c in buf[run_end:k]):  # '"Yes." she said' goes on
            q = _HSPACE.match(buf, k).end()
            if q == n:
                return (True, k) if final else _WAIT
            if buf[q].islower():
                return False, k
        if single_period:
            return self._after_period(j, k, final)
        return True, k

    def _after_period(self, j: int, k: int, final: bool) -> tuple[bool, int] | None:
        """'.' followed by whitespace at k: abbreviations, initials and list numbers are not ends."""
        buf = self._buf
        n = len(buf)
        s = max(buf.rfind(" ", self._base, j), buf.rfind("\t", self._base, j), buf.rfind("\n", self._base, j))
        s = max(s + 1, self._base)
        token = buf[s:j + 1].lstrip(_TOKEN_OPENERS)
        if token in _NEVER_ENDS or (_ACRONYM.fullmatch(token) and token.lower() not in ("a.m.", "p.m.")):
            return False, k
        if token in _NUMBER_ABBR:  # "No. 5" is "number five"
            if buf[k] in " \t" and k + 1 == n:
                return (True, k) if final else _WAIT
            return (not (buf[k] in " \t" and buf[k + 1].isdigit())), k
        if token in _MAY_END:  # "etc. and" continues, "etc. The" ends
            q = _HSPACE.match(buf, k).end()
            if q == n:
                return (True, k) if final else _WAIT
            c = buf[q]
            return (c == "\n" or not (c.islower() or c.isdigit() or c in ",;:")), k
        if _INITIAL.fullmatch(token):  # "J. K. Rowling"
            p = s
            while p > max(self._base, s - 64) and buf[p - 1].isspace():
                p -= 1
            if p - 2 >= self._base and _INITIAL.fullmatch(buf, p - 2, p) and (
                    p - 2 == self._base or buf[p - 3].isspace()):
                return False, k
            q = _LOOK_SPACE.match(buf, k).end()
            if q + 2 > n:
                if not final:
                    return _WAIT
            elif _INITIAL.fullmatch(buf, q, q + 2):
                return False, k
            return True, k
        if _LIST_NUMBER.fullmatch(token):  # "1. " at the start of a line is a list item
            line_begin = max(buf.rfind("\n", self._base, s) + 1, self._base)
            at_line_start = buf[line_begin:s].strip() == "" and (line_begin > self._base or self._line_start)
            if at_line_start:
                return False, k
        return True, k


def _cut_point(buf: str, base: int, limit: int) -> int:
    """Where to cut an over-long sentence: never in its first half (early words come from there)."""
    half, end = base + limit // 2, base + limit
    for q in range(end - 1, half - 1, -1):
        if buf[q].isspace() and buf[q - 1] in ",;:":
            return q
    for q in range(end - 1, half - 1, -1):
        if buf[q].isspace():
            return q
    return end


# ---------------------------------------------------------------------------------------------
# speakable words


class SpeakableWord(NamedTuple):
    """One word for the decoder; `ends_sentence` marks the last word of a segment."""

    text: str
    ends_sentence: bool


_COMPLETE_WORD = re.compile(r"(?<!\S)\S++(?=\s)")
_HAS_SPACE = re.compile(r"\s")


class SpeakableStream:
    """LLM deltas in, speakable words out, each as early as it is certain (see the module docstring).

    normalize: run `llmvox.text.normalize` on each sentence (False: words are passed on as written).
    max_chars: the segmenter's sentence cut; a sentence whose words add up to twice this (only possible
    for raw code or huge numbers) is also ended there, so no segment outgrows the decoder's limit.
    """

    def __init__(self, normalize: bool = True, max_chars: int | None = DEFAULT_MAX_CHARS) -> None:
        self._segmenter = SentenceSegmenter(max_chars)
        self._normalize = normalize
        self._span = RULE_SPAN_WORDS if normalize else 1
        self._horizon = max_chars // 2 if max_chars else None
        self._sentence_budget = 2 * max_chars if max_chars else None
        self._run_chars = 0
        self._reset_pending()

    def feed(self, delta: str) -> list[SpeakableWord]:
        out: list[SpeakableWord] = []
        sentences = self._segmenter.feed(delta)
        for sentence in sentences:
            self._finish(sentence, out)
        if sentences or _HAS_SPACE.search(delta):  # otherwise no word can have been completed
            self._early(out)
        return out

    def flush(self) -> list[SpeakableWord]:
        out: list[SpeakableWord] = []
        for sentence in self._segmenter.flush():
            self._finish(sentence, out)
        self._reset_pending()
        self._run_chars = 0
        return out

    # --- internals -------------------------------------------------------------------------------

    def _reset_pending(self) -> None:
        self._joiner = PieceJoiner()
        self._done = 0  # pending text up to here is joined into _joiner
        self._sent = 0  # words of the pending sentence already emitted
        self._complete = 0  # complete words seen in the pending text

    def _words(self, sentence: str) -> list[str]:
        if not self._normalize:
            return sentence.split()
        joiner = PieceJoiner()
        for piece in pieces(sentence):
            joiner.add(piece)
        return split_words(joiner.text)

    def _finish(self, sentence: str, out: list[SpeakableWord]) -> None:
        words = self._words(sentence)[self._sent:]
        for i, word in enumerate(words):
            self._emit(out, word, i == len(words) - 1)
        self._reset_pending()

    def _early(self, out: list[SpeakableWord]) -> None:
        if self._segmenter.in_code_block:
            return
        text = self._segmenter.pending_prefix(self._horizon)
        spans = [(m.start(), m.end()) for m in _COMPLETE_WORD.finditer(text)]
        if len(spans) == self._complete:
            return
        self._complete = len(spans)
        final_words = len(spans) - self._span + 1  # words whose pieces can no longer change
        if final_words <= 0:
            return
        if self._normalize:
            frontier = spans[final_words][0] if final_words < len(spans) else spans[-1][1]
            for piece in pieces(text, self._done):
                if piece.start >= frontier or piece.end >= len(text):  # a piece at the end may grow
                    break
                self._joiner.add(piece)
                self._done = piece.end
            words = split_words(self._joiner.text)
        else:
            words = text[:spans[final_words - 1][1]].split()
        for word in words[self._sent:-1]:  # the last one may still gain punctuation
            self._emit(out, word, False)
        self._sent = max(self._sent, len(words) - 1)

    def _emit(self, out: list[SpeakableWord], word: str, ends: bool) -> None:
        self._run_chars += len(word) + 1
        if self._sentence_budget is not None and self._run_chars >= self._sentence_budget:
            ends = True
        if ends:
            self._run_chars = 0
        out.append(SpeakableWord(word, ends))


def speakable_words(deltas: Iterable[str], normalize: bool = True,
                    max_chars: int | None = DEFAULT_MAX_CHARS) -> Iterator[SpeakableWord]:
    """Each speakable word as soon as it is certain; the last word of each sentence is marked."""
    stream = SpeakableStream(normalize=normalize, max_chars=max_chars)
    for delta in deltas:
        yield from stream.feed(delta)
    yield from stream.flush()


def speakable_sentences(deltas: Iterable[str], normalize: bool = True,
                        max_chars: int | None = DEFAULT_MAX_CHARS) -> Iterator[list[str]]:
    """Each sentence as a list of words (normalised if asked), as soon as the sentence is complete."""
    words: list[str] = []
    for word in speakable_words(deltas, normalize=normalize, max_chars=max_chars):
        words.append(word.text)
        if word.ends_sentence:
            yield words
            words = []
    if words:  # cannot happen (flush marks the last word); kept so no word is ever lost
        yield words
