"""Speakable text: concrete readings, safety on arbitrary input, idempotence, linear time."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmvox.text.normalize import normalize

CASES = [
    # cardinals, decimals, negatives
    ("I have 3 cats.", "I have three cats."),
    ("It has 1,234,567 rows", "It has one million two hundred thirty four thousand five hundred sixty seven rows"),
    ("Pi is 3.14159", "Pi is three point one four one five nine"),
    ("3.5 and .5 and 0.25", "three point five and point five and zero point two five"),
    ("It fell to -7 today", "It fell to minus seven today"),
    ("Agent 007", "Agent zero zero seven"),
    ("1,2,3", "one, two, three"),
    ("I have 3.", "I have three."),
    # ordinals, years, decades
    ("She came 21st, he came 2nd and 3rd.", "She came twenty first, he came second and third."),
    ("In 1999 it rained.", "In nineteen ninety nine it rained."),
    ("It happened in 2005.", "It happened in two thousand five."),
    ("There were 1999 people", "There were one thousand nine hundred ninety nine people"),
    ("From 2010-2020 and in 1905", "From twenty ten to twenty twenty and in nineteen oh five"),
    ("The 1990s and the '80s", "The nineteen nineties and the eighties"),
    # currencies
    ("It costs $5.99.", "It costs five dollars and ninety nine cents."),
    ("$1 and $0.50 and $1.00", "one dollar and fifty cents and one dollar"),
    ("They raised $1.2M and $3B", "They raised one point two million dollars and three billion dollars"),
    ("$1.2 million", "one point two million dollars"),
    ("€20 or £5.50 or ¥300", "twenty euros or five pounds and fifty pence or three hundred yen"),
    ("5 € or 10 USD", "five euros or ten dollars"),
    ("A loss of -$3", "A loss of minus three dollars"),
    ("$1,234.56", "one thousand two hundred thirty four dollars and fifty six cents"),
    ("~$50", "about fifty dollars"),
    # percentages and units
    ("50% of 5 km", "fifty percent of five kilometers"),
    ("1 km, 2.5 kg and 100 GB", "one kilometer, two point five kilograms and one hundred gigabytes"),
    ("It is 20°C or 68 °F, at 60 mph", "It is twenty degrees Celsius or sixty eight degrees Fahrenheit, at sixty miles per hour"),
    ("A 90° angle at -5°C", "A ninety degrees angle at minus five degrees Celsius"),
    ("3.5 GHz, 10 ms, 5 min", "three point five gigahertz, ten milliseconds, five minutes"),
    ("10-20 km and 5–10 people", "ten to twenty kilometers and five to ten people"),
    ("2x faster at 1920x1080", "two times faster at one thousand nine hundred twenty by one thousand eighty"),
    # dates and times
    ("Due 2024-03-05.", "Due March fifth, twenty twenty four."),
    ("On March 5, 2024 we met", "On March fifth, twenty twenty four we met"),
    ("On March 5th and Jan. 1", "On March fifth and January first"),
    ("On 5 March 2024", "On the fifth of March, twenty twenty four"),
    ("in May 2021", "in May twenty twenty one"),
    ("on 12/25/2023", "on December twenty fifth, twenty twenty three"),
    ("At 3:30 pm, 14:05 and 3:00", "At three thirty p m, fourteen oh five and three o'clock"),
    ("at 7 a.m. and 11PM", "at seven a m and eleven p m"),
    ("We left at 5 p.m. Then we ate.", "We left at five p m. Then we ate."),
    ("at 12:30:15", "at twelve thirty and fifteen seconds"),
    ("a 16:9 screen", "a sixteen to nine screen"),
    # phone numbers, fractions, versions
    ("Call 555-123-4567", "Call five five five, one two three, four five six seven"),
    ("Call +1 (555) 123-4567", "Call plus one, five five five, one two three, four five six seven"),
    ("Add 1/2 cup or 3/4, 9/10 agree, open 24/7", "Add one half cup or three quarters, nine out of ten agree, open twenty four seven"),
    ("Use v1.2.3 or 192.168.0.1", "Use version one point two point three or one hundred ninety two dot one hundred sixty eight dot zero dot one"),
    # abbreviations
    ("Dr. Smith met Mr. and Mrs. Brown.", "Doctor Smith met Mister and Missus Brown."),
    ("St. Louis is on Main St. today", "Saint Louis is on Main Street today"),
    ("fruit, e.g. apples, i.e. food", "fruit, for example apples, that is food"),
    ("apples, pears, etc. and plums", "apples, pears, et cetera and plums"),
    ("apples, pears, etc.", "apples, pears, et cetera."),
    ("cats vs. dogs vs birds", "cats versus dogs versus birds"),
    ("See No. 5", "See number five"),
    ("the U.S. and the U.K.", "the U S and the U K."),
    ("Acme Inc. Then more", "Acme Incorporated. Then more"),
    # addresses
    ("Visit https://www.example.com/docs/page-1?x=2 now",
     "Visit example dot com slash docs slash page one now"),
    ("See example.com or node.js", "See example dot com or node dot js"),
    ("Mail john.doe@example.org.", "Mail john dot doe at example dot org."),
    ("Ping @alice", "Ping at alice"),
    # markdown
    ("**Bold** and *italic* and __also__", "Bold and italic and also"),
    ("Run `pip install x` now", "Run pip install x now"),
    ("Read [the docs](https://x.org/a_(b)) now", "Read the docs now"),
    ("![a cat](cat.png)", "a cat"),
    ("# Title", "Title"),
    ("### Sub heading ###", "Sub heading"),
    ("- item one\n- item two", "item one item two"),
    ("* star item", "star item"),
    ("1. first\n2. second", "first second"),
    ("- [x] done", "done"),
    ("> quoted text", "quoted text"),
    ("Here:\n```python\nprint('x. y')\nx = 1\n```\nDone.", "Here: Done."),
    ("| Name | Age |\n|---|---|\n| Bob | 5 |", "Name Age Bob five"),
    ("a\n\n---\n\nb", "a b"),
    ("fact[1] here", "fact here"),
    ("<b>bold</b><br/>", "bold"),
    # symbols
    ("Tom & Jerry", "Tom and Jerry"),
    ("C++ and C# and F#", "C plus plus and C sharp and F sharp"),
    ("x = 5 + 3", "x equals five plus three"),
    ("2 * 3 and 2^10", "two times three and two to the power of ten"),
    ("a/b and and/or", "a slash b and and or"),
    ("x < y and y > z", "x less than y and y greater than z"),
    ("#1 and #python", "number one and hashtag python"),
    ("snake_case", "snake underscore case"),
    ("Paris - the capital — is big", "Paris, the capital, is big"),
    ("A -> B", "A to B"),
    ("approx. 5 people, ~5 dogs", "approximately five people, about five dogs"),
    ("Q&A", "Q and A"),
    ("COVID-19 and H2O and mp3", "COVID-nineteen and H two O and mp three"),
    # emoji and unicode
    ("Great job 🎉!", "Great job!"),
    ("Family 👨‍👩‍👧 and thumbs 👍🏽 up", "Family and thumbs up"),
    ("“Quoted” text’s", "\"Quoted\" text's"),
    ("C'est déjà vu, naïve café.", "C'est déjà vu, naïve café."),
    ("©2024 Acme™", "copyright two thousand twenty four Acme"),
    ("Wait… what", "Wait... what"),
    # nothing to say
    ("", ""),
    ("   \n\t ", ""),
    ("😀😀", ""),
    ("**", ""),
    ("```\ncode only\n```", ""),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:30] for c in CASES])
def test_reading(text: str, expected: str) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:30] for c in CASES])
def test_reading_is_stable(text: str, expected: str) -> None:
    """Already-spoken text reads the same again (the engine may normalise twice)."""
    assert normalize(expected) == expected


def test_already_normal_text_is_unchanged() -> None:
    text = ("Hello there, how are you today? I'm fine, thanks! Let's meet at three thirty p m near the "
            "old bridge; bring twenty dollars and fifty cents.")
    assert normalize(text) == text


_ALLOWED = set(".,;:!?'\"()- ")


def _speakable_char(c: str) -> bool:
    return c.isalpha() or c in _ALLOWED or unicodedata.category(c).startswith("M")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_input_gives_only_speakable_characters(text: str) -> None:
    out = normalize(text)
    assert not any(c.isdigit() for c in out)
    assert all(_speakable_char(c) for c in out), out
    assert out == out.strip() and "  " not in out


_SOUP = ["Hello", "the", "Dr.", "St.", "Louis", "e.g.", "etc.", "U.S.", "No.", "5", "3.5", "$1,234.56",
         "$1.2M", "March", "5,", "2024", "1999", "3:30", "pm", "p.m.", "21st", "km", "20°C", "50%",
         "v1.2.3", "https://example.com/a-b", "john@example.com", "**bold**", "`code`", "[link](http://x.y)",
         "😀", "&", "+", "=", "a/b", "...", "?", "!", ",", "(555)", "123-4567", "-5", "1990s", "24/7", "~5"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_SOUP), st.sampled_from([" ", "\n", "  "])), max_size=15))
def test_idempotent_on_word_soup(parts: list[tuple[str, str]]) -> None:
    text = "".join(word + sep for word, sep in parts)
    once = normalize(text)
    assert normalize(once) == once


PATHOLOGICAL = {
    "letters": ("a" * 100_000, lambda out: out == "a" * 100_000),
    "digits": ("1" * 100_000, lambda out: out.split() == ["one"] * 100_000),
    "dots": ("." * 100_000, lambda out: out == ""),
    "dollars": ("$" * 100_000, lambda out: out == ""),
    "stars": ("*" * 100_000, lambda out: out == ""),
    "open links": ("](" * 50_000, lambda out: out == ""),
    "nested links": ("](a(b)" * 16_000, lambda out: out.split() == ["(a(b)"] * 16_000),
    "urls": ("http://x," * 11_000, lambda out: out.count("x") == 11_000),
    "at signs": ("a@" * 50_000, lambda out: out.split().count("at") == 50_000),
    "hyphens": ("a-" * 50_000, lambda out: out == "a-" * 49_999 + "a-"),
    "spaces": (" " * 100_000, lambda out: out == ""),
    "fences": ("```\n" * 25_000, lambda out: out == ""),
    "emoji": ("😀" * 50_000, lambda out: out == ""),
    "dotted": ("e.g." * 25_000, lambda out: out.startswith("for example")),
    "number groups": ("1,1" * 33_000, lambda out: "one" in out and not any(c.isdigit() for c in out)),
    "colons": ("1:" * 50_000, lambda out: not any(c.isdigit() for c in out)),
    "slashes": ("1/" * 50_000, lambda out: not any(c.isdigit() for c in out)),
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_100k_input(name: str) -> None:
    """Each finishes in well under a second here; a catastrophic regex would take minutes."""
    text, check = PATHOLOGICAL[name]
    assert check(normalize(text))
