"""Streaming text stages: word joining, sentence boundaries, early words, split invariance."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmvox.text.normalize import normalize
from llmvox.text.segment import (
    SentenceSegmenter,
    SpeakableStream,
    SpeakableWord,
    WordJoiner,
    speakable_sentences,
    speakable_words,
)


def segment(deltas: list[str], max_chars: int | None = 300) -> list[str]:
    seg = SentenceSegmenter(max_chars)
    out: list[str] = []
    for d in deltas:
        out += seg.feed(d)
    return out + seg.flush()


def chars(text: str) -> list[str]:
    return list(text)


# --- WordJoiner -------------------------------------------------------------------------------


def test_word_joiner_yields_words_when_complete() -> None:
    joiner = WordJoiner()
    got = [joiner.feed(d) for d in ["Hel", "lo", " wor", "ld,", " this", " is", "\n", "it"]]
    assert got == [[], [], ["Hello"], [], ["world,"], ["this"], ["is"], []]
    assert joiner.flush() == ["it"]
    assert joiner.flush() == []


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="ab \n.", max_size=60), st.data())
def test_word_joiner_matches_split(text: str, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=10)))
    deltas = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    joiner = WordJoiner()
    words = [w for d in deltas for w in joiner.feed(d)] + joiner.flush()
    assert words == text.split()


# --- SentenceSegmenter ------------------------------------------------------------------------

SEGMENT_CASES = [
    ("Hello there. How are you? Fine!", ["Hello there.", "How are you?", "Fine!"]),
    ("Really?! Yes... OK.", ["Really?!", "Yes...", "OK."]),
    ('He said "Stop." Then left. "Go!" she said.', ['He said "Stop."', "Then left.", '"Go!" she said.']),
    ("(It works.) Next one.", ["(It works.)", "Next one."]),
    ("**Note.** Read this.", ["**Note.**", "Read this."]),
    ("Dr. Smith and Mr. Jones met Mrs. Brown.", ["Dr. Smith and Mr. Jones met Mrs. Brown."]),
    ("Fruit, e.g. apples, i.e. food, vs. meat.", ["Fruit, e.g. apples, i.e. food, vs. meat."]),
    ("Apples, pears, etc. are fruit.", ["Apples, pears, etc. are fruit."]),
    ("Apples, pears, etc. The end.", ["Apples, pears, etc.", "The end."]),
    ("The U.S. Army is big.", ["The U.S. Army is big."]),
    ("It is 3.5 times v1.2.3 here.", ["It is 3.5 times v1.2.3 here."]),
    ("See No. 5 there. No. I won't.", ["See No. 5 there.", "No.", "I won't."]),
    ("J. K. Rowling wrote it.", ["J. K. Rowling wrote it."]),
    ("I like Vitamin C. It helps.", ["I like Vitamin C.", "It helps."]),
    ("We met at 5 p.m. and ate. At 9 p.m. The end.", ["We met at 5 p.m. and ate.", "At 9 p.m.", "The end."]),
    ("Visit example.com now. Or www.x.org?", ["Visit example.com now.", "Or www.x.org?"]),
    ("A line\nwraps here. Done", ["A line\nwraps here.", "Done"]),
    ("Para one\n\nPara two", ["Para one", "Para two"]),
    ("Intro:\n- one\n- two\n1. three\n2. four", ["Intro:", "- one", "- two", "1. three", "2. four"]),
    ("# Title\nBody text", ["# Title", "Body text"]),
    ("Text\n## Heading\nMore", ["Text", "## Heading", "More"]),
    ("> quote\nafter", ["> quote", "after"]),
    ("Code:\n```python\nx = 1. y\n\nprint(x)\n```\nAfter it.",
     ["Code:", "```python\nx = 1. y\n\nprint(x)\n```", "After it."]),
    ("Open:\n```\nnever closed. at all", ["Open:", "```\nnever closed. at all"]),
    ("End with 3.", ["End with 3."]),
    ("   leading space. trailing   ", ["leading space.", "trailing"]),
    ("", []),
]


@pytest.mark.parametrize(("text", "expected"), SEGMENT_CASES, ids=[c[0][:30] for c in SEGMENT_CASES])
def test_sentences(text: str, expected: list[str]) -> None:
    assert segment([text]) == expected
    assert segment(chars(text)) == expected


def test_period_at_end_of_buffer_waits_for_the_next_character() -> None:
    seg = SentenceSegmenter()
    assert seg.feed("It costs 3.") == []
    assert seg.feed("5 dollars. ") == ["It costs 3.5 dollars."]
    assert seg.feed("Then") == []
    assert seg.flush() == ["Then"]


def test_sentence_is_emitted_as_soon_as_it_is_certain() -> None:
    seg = SentenceSegmenter()
    assert seg.feed("Hi there!") == []
    assert seg.feed(" ") == ["Hi there!"]
    assert seg.pending == ""
    assert seg.feed("Next") == []
    assert seg.pending == "Next"


def test_long_sentence_is_cut_in_its_second_half() -> None:
    words = " ".join(f"word{i}" for i in range(200))
    text = f"Start, {words}, more, {words} end."
    out = segment([text], max_chars=100)
    assert " ".join(out) == text
    assert all(len(s) <= 100 for s in out)
    assert all(len(s) >= 50 for s in out[:-1])
    cut_at_comma = [s for s in out if s.endswith(",")]
    assert cut_at_comma  # commas in the second half are preferred over plain spaces


def test_unbroken_text_is_cut_hard() -> None:
    out = segment(["x" * 250], max_chars=100)
    assert out == ["x" * 100, "x" * 100, "x" * 50]


def test_no_limit_keeps_long_sentences() -> None:
    text = "a " * 500 + "end."
    assert segment([text], max_chars=None) == [text.strip()]


# --- split invariance (the core streaming property) ------------------------------------------

_TOKENS = ["Hello", "world", "the", "Dr.", "Mr.", "St.", "Louis", "e.g.", "i.e.", "etc.", "U.S.", "No.",
           "5", "3.5", "$1,234.56", "$1.2M", "March", "5,", "2024", "2024.", "1999", "in", "3:30", "pm",
           "p.m.", "21st", "5 km", "20°C", "50%", "v1.2.3", "https://example.com/a-b", "john@example.com",
           "**bold**", "*it*", "`code`", "[link](http://x.y)", "😀", "&", "+", "=", "a/b", "...", "?", "!",
           "?!", ".", ",", '"Yes."', "(", ")", "-", "—", "J.", "K.", "Inc.", "The", "a.m.", "Jan.",
           "10-20", "1/2", "C++", "#1", "“quote”", "555-123-4567", "(555)", "123-4567", "-5", "1990s",
           "node.js", "~5", "No. 5", "5 March", "Mar.", "May"]
_SEPARATORS = [" ", " ", " ", "", "\n", "\n\n", "\n- ", "\n1. ", "\n# ", "\n```\ncode. x\n```\n", "  ", "\t"]


@st.composite
def texts_and_splits(draw: st.DrawFn) -> tuple[str, list[str]]:
    parts = draw(st.lists(st.tuples(st.sampled_from(_TOKENS), st.sampled_from(_SEPARATORS)), max_size=30))
    text = "".join(a + b for a, b in parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=len(text) // 2 + 1)))
    deltas = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    return text, deltas


@settings(max_examples=300, deadline=None)
@given(texts_and_splits(), st.sampled_from([300, 40, 12, None]))
def test_segmenter_is_split_invariant(case: tuple[str, list[str]], max_chars: int | None) -> None:
    text, deltas = case
    assert segment(deltas, max_chars) == segment([text], max_chars)


@settings(max_examples=300, deadline=None)
@given(texts_and_splits(), st.sampled_from([300, 40, 12, None]), st.booleans())
def test_word_stream_is_split_invariant(case: tuple[str, list[str]], max_chars: int | None, norm: bool) -> None:
    text, deltas = case
    assert list(speakable_words(deltas, norm, max_chars)) == list(speakable_words([text], norm, max_chars))


@settings(max_examples=300, deadline=None)
@given(texts_and_splits(), st.sampled_from([300, 40]))
def test_sentences_are_the_normalised_segments(case: tuple[str, list[str]], max_chars: int) -> None:
    """Early word emission changes when words leave, never which words: same as normalising each
    sentence whole (sentences that read as nothing, like code blocks, are skipped)."""
    text, deltas = case
    expected = [w for w in (normalize(s).split() for s in segment([text], max_chars)) if w]
    if any(len(" ".join(s)) >= 2 * max_chars for s in expected):
        return  # the long-sentence budget splits these further (tested below)
    assert list(speakable_sentences(deltas, True, max_chars)) == expected


@settings(max_examples=100, deadline=None)
@given(texts_and_splits())
def test_raw_sentences_are_the_segments_split_into_words(case: tuple[str, list[str]]) -> None:
    text, deltas = case
    expected = [s.split() for s in segment([text], None)]
    assert list(speakable_sentences(deltas, normalize=False, max_chars=None)) == expected


# --- early words --------------------------------------------------------------------------------


def test_words_leave_before_the_sentence_ends() -> None:
    stream = SpeakableStream()
    text = "Well, I paid $1,234.56 on March 5, 2024 for the trip with Dr. Smith and we agreed. Next"
    seen: list[tuple[int, SpeakableWord]] = []
    for i, c in enumerate(text):
        seen += [(i, w) for w in stream.feed(c)]
    seen += [(len(text), w) for w in stream.flush()]
    words = [w.text for _, w in seen]
    assert words == normalize(text[:-5]).split() + ["Next"]
    first_sentence_end = text.index("agreed.") + len("agreed.")
    early = [w.text for i, w in seen if i < first_sentence_end]
    assert early[:4] == ["Well,", "I", "paid", "one"]
    assert "Doctor" in early and "cents" in early and "March" in early
    assert [w.text for w in (w for _, w in seen) if w.ends_sentence] == ["agreed.", "Next"]


def test_multiword_expressions_are_not_spoken_half_read() -> None:
    stream = SpeakableStream()
    out: list[SpeakableWord] = []
    for d in ["Due on ", "March ", "5, ", "20", "24 ", "at ", "noon ", "so ", "be ", "ready."]:
        out += stream.feed(d)
        assert "5," not in [w.text for w in out]  # "March 5" never goes out before the year is known
    out += stream.flush()
    assert [w.text for w in out] == "Due on March fifth, twenty twenty four at noon so be ready.".split()


def test_code_blocks_are_silent_and_not_streamed_early() -> None:
    stream = SpeakableStream()
    out: list[SpeakableWord] = []
    for c in "Look:\n```\nx = 1 and y = 2 and z = 3\n```\nDone.":
        out += stream.feed(c)
    out += stream.flush()
    assert out == [SpeakableWord("Look:", True), SpeakableWord("Done.", True)]


def test_raw_mode_keeps_words_as_written() -> None:
    sentences = list(speakable_sentences(["I paid $5. **Bold** ", "text!"], normalize=False))
    assert sentences == [["I", "paid", "$5."], ["**Bold**", "text!"]]


def test_overlong_raw_code_is_split_for_the_decoder() -> None:
    code = "```\n" + "token " * 400 + "\n```"
    sentences = list(speakable_sentences([code], normalize=False, max_chars=100))
    assert sum(len(s) for s in sentences) == 402
    assert all(len(" ".join(s)) <= 200 + 10 for s in sentences)


# --- pathological input -------------------------------------------------------------------------

PATHOLOGICAL = {
    "letters": "a" * 100_000,
    "dots": "." * 100_000,
    "bangs and quotes": '!"' * 50_000,
    "backticks": "`" * 100_000,
    "newline spaces": "\n" + " " * 100_000 + "x",
    "initials": "J. " * 33_000,
    "etc": "etc. " * 20_000,
    "fences": "```\n" * 25_000,
    "list lines": "\n- " * 33_000,
    "mixed": ("Dr. Smith paid $1,234.56 on March 5, 2024 at 3:30 p.m. e.g. **bold** 😀 https://x.com/a?b " * 1100),
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_100k_stream(name: str) -> None:
    """Fed in 7-character deltas; finishes in about a second here (quadratic code would take minutes)."""
    text = PATHOLOGICAL[name][:100_000]
    deltas = [text[i:i + 7] for i in range(0, len(text), 7)]
    sentences = segment(deltas)
    assert "".join("".join(s.split()) for s in sentences) == "".join(text.split())
    assert all(len(s) <= 300 or s.startswith("```") for s in sentences)
    words = list(speakable_words(deltas))
    assert all(w.text for w in words)
    if name == "mixed":
        assert [w.text for w in words[:4]] == ["Doctor", "Smith", "paid", "one"]

