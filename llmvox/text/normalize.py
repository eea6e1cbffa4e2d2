"""Speakable text: turn written LLM output into the words a person would say aloud.

Why: the decoder reads raw bytes, so "$1.2M", "**Note**", "14:05" or a URL must become plain words
before they reach it, or the voice mumbles symbols. The output style follows the training sentences
(`llmvox.train.sentences`): American number words without "and" or hyphens ("twenty four"), "a m" /
"p m", phone digits in comma-separated groups.

How: one left-to-right scan over a table of rules (`_RULES`, in priority order). At each position the
first rule whose pattern matches produces a *piece* (its spoken form); text between matches is plain
and is only filtered by Unicode category: symbols, emoji (with their skin tones, flags, joiners and
variation selectors) and control characters are dropped, fancy quotes become ASCII. No emoji table is
needed for that. The pieces are joined (`PieceJoiner`) and split into words (`split_words`). One pass,
bounded patterns, a cheap "can a rule start here" gate in front of the rule alternation: linear time on
any input, about 1-5 microseconds per character.

Streaming contract (used by `llmvox.text.segment`): a rule that matches at a position inside
whitespace-separated word i reads and consumes text only up to the end of word i+RULE_SPAN_WORDS-1
(plus the character after it), never across a line break or a sentence end. So once that many
complete words follow a piece, the piece can no longer change and its words may be spoken before the
sentence is finished.

The stage is optional: the engine calls `normalize` only when normalisation is switched on.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

from num2words import num2words

__all__ = [
    "RULE_SPAN_WORDS",
    "Piece",
    "PieceJoiner",
    "normalize",
    "pieces",
    "split_words",
]

RULE_SPAN_WORDS = 3  # the widest rule: "March 5, 2024" (3 words); see the module docstring

CODE_BLOCK_PHRASE = ""  # what a fenced code block is read as (nothing: the code is for the screen)

# ---------------------------------------------------------------------------------------------
# numbers in words (num2words does the work; we only make its style match the training text)

_DIGITS = "zero one two three four five six seven eight nine".split()
_MAX_CARDINAL_DIGITS = 15  # longer digit runs are read digit by digit (IDs, hashes, nonsense)


def _tidy(words: str) -> str:
    """num2words says "one thousand, two hundred and thirty-four"; we say it without ',', 'and', '-'."""
    return " ".join(words.replace(",", " ").replace("-", " ").replace(" and ", " ").split())


def _digit_words(digits: str) -> str:
    return " ".join(_DIGITS[int(c)] for c in digits if c.isdigit())


@lru_cache(maxsize=4096)
def _int_words(digits: str) -> str:
    """Cardinal for a digit string (commas allowed); leading zeros or very long runs go digit by digit."""
    digits = digits.replace(",", "")
    if not digits:
        return ""
    if (len(digits) > 1 and digits[0] == "0") or len(digits) > _MAX_CARDINAL_DIGITS:
        return _digit_words(digits)
    return _tidy(num2words(int(digits)))


def _number_words(num: str) -> str:
    """'1,234.56' -> 'one thousand two hundred thirty four point five six'; '.5' -> 'point five'."""
    whole, _, frac = num.partition(".")
    words = _int_words(whole)
    if frac:
        words = f"{words} point {_digit_words(frac)}".strip()
    return words


@lru_cache(maxsize=1024)
def _ordinal_words(digits: str) -> str:
    digits = digits.replace(",", "")
    if len(digits) > _MAX_CARDINAL_DIGITS:
        return _digit_words(digits)
    return _tidy(num2words(int(digits), to="ordinal"))


@lru_cache(maxsize=1024)
def _year_words(year: int) -> str:
    return _tidy(num2words(year, to="year"))


def cardinal_words(n: int) -> str:
    """An integer in words, as the voice says it: 2024 -> "two thousand twenty four" (also the training
    sentences' speller, so what the voice hears is what it was trained on)."""
    return "minus " + _int_words(str(-n)) if n < 0 else _int_words(str(n))


def ordinal_words(n: int) -> str:
    """21 -> "twenty first"."""
    return _ordinal_words(str(n))


def year_words(year: int) -> str:
    """1984 -> "nineteen eighty four", 2005 -> "two thousand five"."""
    return _year_words(year)


def _plural_last(words: str) -> str:
    """'nineteen ninety' -> 'nineteen nineties' (decades)."""
    head, _, last = words.rpartition(" ")
    last = last[:-1] + "ies" if last.endswith("y") else last + "s"
    return f"{head} {last}".strip()


def _is_one(num: str) -> bool:
    return num.replace(",", "") == "1"


# ---------------------------------------------------------------------------------------------
# word tables

MONTHS = {
    "jan": "January", "feb": "February", "mar": "March", "apr": "April", "may": "May", "jun": "June",
    "jul": "July", "aug": "August", "sep": "September", "oct": "October", "nov": "November",
    "dec": "December",
}
_MONTH_NAMES = list(MONTHS.values())

# Abbreviations written with a final '.', shared with the sentence segmenter so both agree on where a
# sentence can end. Titles never end a sentence; the others end one when the next word is capitalised.
TITLE_ABBREVIATIONS = {
    "Dr": "Doctor", "Mr": "Mister", "Mrs": "Missus", "Ms": "Miz", "Prof": "Professor", "St": "Saint",
    "Mt": "Mount", "Gen": "General", "Capt": "Captain", "Lt": "Lieutenant", "Col": "Colonel",
    "Sgt": "Sergeant", "Sen": "Senator", "Rep": "Representative", "Gov": "Governor", "Fig": "figure",
    "Vol": "volume", "vs": "versus", "Vs": "versus", "cf": "compare", "approx": "approximately",
    "Approx": "approximately", "Ave": "Avenue", "Blvd": "Boulevard", "Dept": "Department",
}
END_ABBREVIATIONS = {
    "etc": "et cetera", "Inc": "Incorporated", "Ltd": "Limited", "Corp": "Corporation", "Co": "Company",
    "Jr": "Junior", "Sr": "Senior", "Bros": "Brothers",
    "Jan": "January", "Feb": "February", "Mar": "March", "Apr": "April", "Jun": "June", "Jul": "July",
    "Aug": "August", "Sep": "September", "Sept": "September", "Oct": "October", "Nov": "November",
    "Dec": "December",
}
# dotted forms: never the end of a sentence (except at the very end of the text)
DOTTED_ABBREVIATIONS = {"e.g.": "for example", "i.e.": "that is", "a.k.a.": "also known as",
                        "E.g.": "for example", "I.e.": "that is", "Ph.D.": "P h D"}

CURRENCIES = {  # symbol or code -> (one, many, one cent, many cents)
    "$": ("dollar", "dollars", "cent", "cents"),
    "USD": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"),
    "EUR": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "GBP": ("pound", "pounds", "penny", "pence"),
    "¥": ("yen", "yen", "", ""),
    "JPY": ("yen", "yen", "", ""),
    "₹": ("rupee", "rupees", "paisa", "paise"),
    "INR": ("rupee", "rupees", "paisa", "paise"),
}
SCALES = {"k": "thousand", "K": "thousand", "m": "million", "M": "million", "mn": "million",
          "b": "billion", "B": "billion", "bn": "billion", "t": "trillion", "T": "trillion",
          "tn": "trillion", "thousand": "thousand", "million": "million", "billion": "billion",
          "trillion": "trillion"}

UNITS = {  # written unit (case-sensitive) -> (singular, plural)
    "%": ("percent", "percent"), "‰": ("per mille", "per mille"),
    "km": ("kilometer", "kilometers"), "m": ("meter", "meters"), "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"), "µm": ("micrometer", "micrometers"),
    "μm": ("micrometer", "micrometers"), "nm": ("nanometer", "nanometers"), "mi": ("mile", "miles"),
    "ft": ("foot", "feet"), "yd": ("yard", "yards"),
    "km²": ("square kilometer", "square kilometers"), "m²": ("square meter", "square meters"),
    "ft²": ("square foot", "square feet"), "sq ft": ("square foot", "square feet"),
    "m³": ("cubic meter", "cubic meters"), "cm³": ("cubic centimeter", "cubic centimeters"),
    "kg": ("kilogram", "kilograms"), "g": ("gram", "grams"), "mg": ("milligram", "milligrams"),
    "lb": ("pound", "pounds"), "lbs": ("pounds", "pounds"), "oz": ("ounce", "ounces"),
    "L": ("liter", "liters"), "l": ("liter", "liters"), "ml": ("milliliter", "milliliters"),
    "mL": ("milliliter", "milliliters"),
    "mph": ("mile per hour", "miles per hour"), "km/h": ("kilometer per hour", "kilometers per hour"),
    "kph": ("kilometer per hour", "kilometers per hour"), "m/s": ("meter per second", "meters per second"),
    "°C": ("degree Celsius", "degrees Celsius"), "ºC": ("degree Celsius", "degrees Celsius"),
    "°F": ("degree Fahrenheit", "degrees Fahrenheit"), "ºF": ("degree Fahrenheit", "degrees Fahrenheit"),
    "°": ("degree", "degrees"), "º": ("degree", "degrees"),
    "B": ("byte", "bytes"), "KB": ("kilobyte", "kilobytes"), "kB": ("kilobyte", "kilobytes"),
    "MB": ("megabyte", "megabytes"), "GB": ("gigabyte", "gigabytes"), "TB": ("terabyte", "terabytes"),
    "PB": ("petabyte", "petabytes"), "kbps": ("kilobit per second", "kilobits per second"),
    "Mbps": ("megabit per second", "megabits per second"),
    "Gbps": ("gigabit per second", "gigabits per second"),
    "Hz": ("hertz", "hertz"), "kHz": ("kilohertz", "kilohertz"), "MHz": ("megahertz", "megahertz"),
    "GHz": ("gigahertz", "gigahertz"), "kW": ("kilowatt", "kilowatts"), "MW": ("megawatt", "megawatts"),
    "kWh": ("kilowatt hour", "kilowatt hours"), "mAh": ("milliamp hour", "milliamp hours"),
    "mA": ("milliamp", "milliamps"), "kcal": ("kilocalorie", "kilocalories"), "cal": ("calorie", "calories"),
    "ms": ("millisecond", "milliseconds"), "s": ("second", "seconds"), "sec": ("second", "seconds"),
    "min": ("minute", "minutes"), "mins": ("minutes", "minutes"), "h": ("hour", "hours"),
    "hr": ("hour", "hours"), "hrs": ("hours", "hours"), "yr": ("year", "years"), "yrs": ("years", "years"),
    "px": ("pixel", "pixels"), "fps": ("frame per second", "frames per second"),
    "k": ("thousand", "thousand"), "bn": ("billion", "billion"),
}

SYMBOLS = {  # said wherever they stand (context-dependent symbols have their own rules)
    "&": "and", "@": "at", "+": "plus", "=": "equals", "==": "equals", "!=": "not equal to",
    "≠": "not equal to", "<=": "less than or equal to", "≤": "less than or equal to",
    ">=": "greater than or equal to", "≥": "greater than or equal to", "×": "times", "÷": "divided by",
    "±": "plus or minus", "≈": "approximately", "->": "to", "=>": "to", "→": "to", "⟶": "to",
    "°": "degrees", "©": "copyright", "§": "section", "%": "percent", "½": "one half",
    "¼": "one quarter", "¾": "three quarters", "²": "squared", "³": "cubed",
}

# words before a 4-digit number that make it a year ("in 1999", "since 2010", "March 2024")
_YEAR_CUES = frozenset(
    "in since by from until till to of year years circa around before after during early late mid the "
    "and or between through summer winter spring fall autumn".split()
) | frozenset(m.lower() for m in _MONTH_NAMES)

_FRACTIONS = {2: ("half", "halves"), 4: ("quarter", "quarters")}
_FRACTION_DENOMINATORS = {2, 3, 4, 8, 16}

# ---------------------------------------------------------------------------------------------
# context helpers (each looks a bounded distance, see the streaming contract)

_PREV_WORD = re.compile(r"([A-Za-z]+)[^A-Za-z\n]{0,3}\Z")
_HSPACE = re.compile(r"[ \t]{0,64}")  # bounded look past spaces; the segmenter uses the same bound


def _prev_word(text: str, pos: int) -> str:
    m = _PREV_WORD.search(text, max(0, pos - 40), pos)
    return m.group(1).lower() if m else ""


def _next_char(text: str, pos: int) -> str:
    """First character after pos past spaces on the same line; '' at a line break or end of text."""
    q = _HSPACE.match(text, pos).end()
    return text[q] if q < len(text) and text[q] != "\n" else ""


def _ends_sentence(text: str, pos: int, always: bool = False) -> bool:
    """Whether a '.' ending at pos also ends the sentence (mirrors the segmenter's rule)."""
    c = _next_char(text, pos)
    if not c:
        return True
    if always:
        return False
    return not (c.islower() or c.isdigit() or c in ",;:")


# ---------------------------------------------------------------------------------------------
# speakers: (match, whole text) -> spoken words


def _say_number(m: re.Match[str], text: str) -> str:
    num = m["num"]
    sign = "minus " if m["neg"] else ""
    digits = num.replace(",", "")
    if (not sign and "," not in num and "." not in num and len(digits) == 4 and digits[0] != "0"
            and 1000 <= int(digits) <= 2099):
        nxt = text[m.end():m.end() + 2]
        followed_by_word = len(nxt) == 2 and nxt[0] in " \t" and nxt[1].isalpha()
        if _prev_word(text, m.start()) in _YEAR_CUES or not followed_by_word:
            return _year_words(int(digits))
    return sign + _number_words(num)


def _say_unit(m: re.Match[str], _text: str) -> str:
    one, many = UNITS[m["unit"]]
    sign = "minus " if m["neg"] else ""
    return f"{sign}{_number_words(m['num'])} {one if _is_one(m['num']) else many}"


def _say_currency(m: re.Match[str], _text: str) -> str:
    one, many, cent, cents = CURRENCIES[m["sym"]]
    sign = "minus " if m["neg"] else ""
    num = m["num"]
    scale = m.groupdict().get("scale") or m.groupdict().get("scale2")
    if scale:
        return f"{sign}{_number_words(num)} {SCALES[scale]} {many}"
    whole, _, frac = num.partition(".")
    if len(frac) == 2 and cent:
        main, sub = int(whole.replace(",", "") or "0"), int(frac)
        parts = []
        if main or not sub:
            parts.append(f"{_int_words(whole or '0')} {one if main == 1 else many}")
        if sub:
            parts.append(f"{_int_words(str(sub))} {cent if sub == 1 else cents}")
        return sign + " and ".join(parts)
    return f"{sign}{_number_words(num)} {one if _is_one(num) else many}"


def _say_ordinal(m: re.Match[str], _text: str) -> str:
    return _ordinal_words(m["num"])


def _say_decade(m: re.Match[str], _text: str) -> str:
    num = m["num"]
    words = _year_words(int(num)) if len(num) == 4 else _int_words(num.lstrip("0") or "0")
    if num == "00":
        words = "two thousand"
    return _plural_last(words)


def _month_name(token: str) -> str:
    return MONTHS[token[:3].lower()]


def _date_words(month: int | str, day: int | None, year: str | None, day_first: bool = False) -> str:
    name = month if isinstance(month, str) else _MONTH_NAMES[month - 1]
    words = name
    if day is not None:
        words = f"the {_ordinal_words(str(day))} of {name}" if day_first else f"{name} {_ordinal_words(str(day))}"
    if year:
        words += f", {_year_words(int(year))}" if day is not None else f" {_year_words(int(year))}"
    return words


def _say_iso_date(m: re.Match[str], _text: str) -> str:
    y, mo, d = int(m["y"]), int(m["m"]), int(m["d"])
    if 1 <= mo <= 12 and 1 <= d <= 31:
        return _date_words(mo, d, m["y"])
    return f"{_year_words(y)} {_int_words(m['m'])} {_int_words(m['d'])}"


def _say_slash_date(m: re.Match[str], _text: str) -> str:
    a, b, y = int(m["a"]), int(m["b"]), m["y"]
    year = y if len(y) == 4 else ("20" + y if int(y) < 50 else "19" + y)
    if 1 <= a <= 12 and 1 <= b <= 31:
        return _date_words(a, b, year)
    if 1 <= b <= 12 and 1 <= a <= 31:
        return _date_words(b, a, year, day_first=True)
    return " slash ".join(_int_words(x) for x in (m["a"], m["b"], y))


def _say_month_day(m: re.Match[str], _text: str) -> str:
    day = int(m["day"])
    if not 1 <= day <= 31:
        return f"{_month_name(m['mon'])} {_int_words(m['day'])}"
    return _date_words(_month_name(m["mon"]), day, m["year"])


def _say_day_month(m: re.Match[str], _text: str) -> str:
    day = int(m["day"])
    if not 1 <= day <= 31:
        return f"{_int_words(m['day'])} {_month_name(m['mon'])}"
    return _date_words(_month_name(m["mon"]), day, m["year"], day_first=True)


def _say_month_year(m: re.Match[str], _text: str) -> str:
    return _date_words(_month_name(m["mon"]), None, m["year"])


def _ampm(m: re.Match[str], text: str) -> str:
    if not m["ap"]:
        return ""
    words = " a m" if m["ap"] in "Aa" else " p m"
    if m.group(0).endswith(".") and _ends_sentence(text, m.end()):
        words += "."
    return words


def _say_time(m: re.Match[str], text: str) -> str:
    hour, minute = int(m["h"]), m["min"]
    words = _int_words(str(hour))
    if minute == "00":
        if not m["ap"]:
            words += " hundred" if hour >= 13 or m["h"].startswith("0") else " o'clock"
    elif minute.startswith("0"):
        words += f" oh {_DIGITS[int(minute[1])]}"
    else:
        words += " " + _int_words(minute)
    if m["sec"]:
        words += f" and {_int_words(m['sec'].lstrip('0') or '0')} seconds"
    return words + _ampm(m, text)


def _say_hour_ampm(m: re.Match[str], text: str) -> str:
    return _int_words(str(int(m["h"]))) + _ampm(m, text)


def _say_phone(m: re.Match[str], _text: str) -> str:
    groups = [g for g in (m["area"], m["area2"], m["mid"], m["mid2"], m["mid3"], m["last"]) if g]
    spoken = ", ".join(_digit_words(g) for g in groups)
    if m["cc"]:
        spoken = f"plus {_digit_words(m['cc'])}, {spoken}"
    return spoken


def _is_year(num: str) -> bool:
    return len(num) == 4 and num.isdigit() and 1000 <= int(num) <= 2099


def _say_range(m: re.Match[str], _text: str) -> str:
    a, b = m["a"], m["b"]
    if _is_year(a) and _is_year(b) and not m["unit"]:
        return f"{_year_words(int(a))} to {_year_words(int(b))}"
    words = f"{_number_words(a)} to {_number_words(b)}"
    if m["unit"]:
        words += " " + UNITS[m["unit"]][1]
    return words


def _say_fraction(m: re.Match[str], _text: str) -> str:
    a, b = m["a"], m["b"]
    if (a, b) in (("24", "7"), ("50", "50")):
        return f"{_int_words(a)} {_int_words(b)}"
    num, den = int(a), int(b)
    if 0 < num < den and den in _FRACTION_DENOMINATORS:
        one, many = _FRACTIONS.get(den, (_ordinal_words(b), _ordinal_words(b) + "s"))
        return f"{_int_words(a)} {one if num == 1 else many}"
    return f"{_int_words(a)} out of {_int_words(b)}"


def _say_ratio(m: re.Match[str], _text: str) -> str:
    return f"{_int_words(m['a'])} to {_int_words(m['b'])}"


def _say_by(m: re.Match[str], _text: str) -> str:
    return f"{_number_words(m['a'])} by {_number_words(m['b'])}"


def _say_times(m: re.Match[str], _text: str) -> str:
    return f"{_number_words(m['num'])} times"


def _say_version(m: re.Match[str], _text: str) -> str:
    return "version " + " point ".join(_int_words(p) for p in m["num"].split("."))


def _say_dotted_number(m: re.Match[str], _text: str) -> str:
    parts = m["num"].split(".")
    return (" point " if len(parts) == 3 else " dot ").join(_int_words(p) for p in parts)


def _say_abbreviation(m: re.Match[str], text: str) -> str:
    word = m["abbr"]
    if word == "St":
        after = text[m.end():m.end() + 3]  # "St. Louis" (saint) versus "Main St." (street)
        saint = len(after) >= 2 and after[0] in " \t" and after[1].isupper()
        return "Saint" if saint else "Street" + ("." if _ends_sentence(text, m.end()) else "")
    if word in TITLE_ABBREVIATIONS:
        return TITLE_ABBREVIATIONS[word] + ("." if _ends_sentence(text, m.end(), always=True) else "")
    return END_ABBREVIATIONS[word] + ("." if _ends_sentence(text, m.end()) else "")


def _say_dotted_abbreviation(m: re.Match[str], text: str) -> str:
    word = m.group(0)
    spoken = DOTTED_ABBREVIATIONS.get(word if word.endswith(".") else word + ".")
    always = True
    if spoken is None:  # U.S. -> "U S"; a.m. / p.m. end sentences like "etc."
        spoken = " ".join(c for c in word if c.isalpha())
        always = word.lower() not in ("a.m.", "p.m.")
    keep_dot = word.endswith(".") and _ends_sentence(text, m.end(), always=always)
    return spoken + ("." if keep_dot else "")


def _say_dotted_word(m: re.Match[str], _text: str) -> str:
    """'node.js' -> 'node dot js'; the parts are normalised again (digits, underscores)."""
    return normalize(" dot ".join(p for p in m.group(0).split(".") if p))


def _say_url(m: re.Match[str], _text: str) -> str:
    url = re.sub(r"^(?:https?|ftp)://", "", m.group(0), flags=re.I)
    url = re.sub(r"^www\.", "", url, flags=re.I)
    host, _, path = url.partition("/")
    host = host.split("@")[-1]
    host, _, port = host.partition(":")
    path = re.split(r"[?#]", path, maxsplit=1)[0].strip("/")
    spoken = " dot ".join(p for p in host.split(".") if p)
    if port.isdigit():
        spoken += " port " + port
    for part in path.split("/"):
        part = re.sub(r"[-_.+~%=]+", " ", part).strip()
        if part:
            spoken += " slash " + part
    return normalize(spoken)


def _say_email(m: re.Match[str], _text: str) -> str:
    local, _, domain = m.group(0).partition("@")
    local = (local.replace(".", " dot ").replace("_", " underscore ").replace("-", " dash ")
             .replace("+", " plus "))
    return normalize(f"{local} at {' dot '.join(domain.split('.'))}")


def _say_symbol(m: re.Match[str], _text: str) -> str:
    return SYMBOLS[m.group(0)]


def _const(words: str) -> Callable[[re.Match[str], str], str]:
    return lambda _m, _t: words


# ---------------------------------------------------------------------------------------------
# the rule table


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    pattern: str
    speak: Callable[[re.Match[str], str], str]
    spaced: bool = True  # spoken words: keep them apart from neighbouring letters ("abc5" -> "abc five")


def _alternation(words: Iterable[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_NUM = r"\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?"
_UNIT = _alternation(UNITS)
_MONTH = (r"(?P<mon>Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
          r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
_NEG = r"(?P<neg>[-−](?=[\d.]))?"
_URL_CHARS = r"[^\s<>()\[\]{}\"'`]"  # bounded below: a piece never runs away on pathological input
_URL_END = r"[^\s<>()\[\]{}\"'`.,;:!?*_]"
_AMPM = r"(?:[ \t]?(?P<ap>[AaPp])\.?[Mm]\b\.?)"

_RULES: list[_Rule] = [
    # --- markdown structure (first, so its characters are never read as symbols) -------------------
    _Rule("code_fence",
          r"(?m:^)[ \t]*(?P<fence>`{3,32}|~{3,32})[^\n]*(?s:.*?)(?:\n[ \t]*(?P=fence)[`~]*[ \t]*(?=\n|\Z)|\Z)",
          _const(CODE_BLOCK_PHRASE), spaced=False),
    _Rule("html_tag", r"</?[A-Za-z][A-Za-z0-9]{0,15}[ \t]*/?>", _const(" "), spaced=False),
    _Rule("heading", r"(?m:^)[ \t]*#{1,6}(?=[ \t\n]|\Z)", _const(""), spaced=False),
    _Rule("rule_line", r"(?<![\w-])-{3,}(?![\w-])|(?m:^)[ \t]*(?:\*{3,}|_{3,})[ \t]*(?=\n|\Z)",
          _const(""), spaced=False),
    _Rule("bullet", r"(?m:^)[ \t]*[-*+•][ \t]+(?:\[[ xX]\][ \t]+)?", _const(""), spaced=False),
    _Rule("numbered_item", r"(?m:^)[ \t]*\d{1,3}[.)][ \t]+", _const(""), spaced=False),
    _Rule("blockquote", r"(?m:^)[ \t]*>+[ \t]?", _const(""), spaced=False),
    _Rule("image_mark", r"!\[", _const(""), spaced=False),
    _Rule("link_target", r"\]\((?:[^()\s]|\([^()\s]{0,100}\)){0,300}\)", _const(" "), spaced=False),
    _Rule("citation", r"\[\d{1,3}\]", _const(""), spaced=False),
    # --- addresses ---------------------------------------------------------------------------------
    _Rule("url", rf"(?<![\w@/.])(?:(?:https?|ftp)://|www\.){_URL_CHARS}{{0,300}}{_URL_END}", _say_url),
    _Rule("email", r"(?<![\w.+-])[\w.+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,8}", _say_email),
    # --- dates and times ---------------------------------------------------------------------------
    _Rule("iso_date", r"(?<![\w.-])(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})(?![\w-])", _say_iso_date),
    _Rule("slash_date", r"(?<![\w/.])(?P<a>\d{1,2})/(?P<b>\d{1,2})/(?P<y>\d{4}|\d{2})(?![\w/])",
          _say_slash_date),
    _Rule("month_day",
          rf"(?<![\w.]){_MONTH}\.?[ \t]{{1,4}}(?P<day>\d{{1,2}})(?:st|nd|rd|th)?(?!\d)"
          r"(?:,?[ \t]{1,4}(?P<year>\d{4})(?!\d))?(?![\w:])", _say_month_day),
    _Rule("day_month",
          rf"(?<![\w.,])(?P<day>\d{{1,2}})(?:st|nd|rd|th)?[ \t]{{1,4}}{_MONTH}\.?"
          r"(?:,?[ \t]{1,4}(?P<year>\d{4})(?!\d))?(?![\w])", _say_day_month),
    _Rule("month_year", rf"(?<![\w.]){_MONTH}\.?[ \t]{{1,4}}(?P<year>\d{{4}})(?![\w])", _say_month_year),
    _Rule("time",
          r"(?<![\w:.])(?P<h>[01]?\d|2[0-3]):(?P<min>[0-5]\d)(?::(?P<sec>[0-5]\d))?(?![\d:])" + _AMPM + "?",
          _say_time),
    _Rule("hour_ampm", r"(?<![\w:.])(?P<h>1[0-2]|0?[1-9])" + _AMPM, _say_hour_ampm),
    _Rule("ratio", r"(?<![\w:.])(?P<a>\d{1,4}):(?P<b>\d{1,4})(?![\d:])", _say_ratio),
    # --- numbers with something attached -----------------------------------------------------------
    _Rule("phone",
          r"(?<![\w.+-])(?:\+(?P<cc>\d{1,3})[ -]?)?(?:\((?P<area>\d{3})\)[ ]?(?P<mid>\d{3})[-.]"
          r"|(?P<area2>\d{3})[-.](?P<mid2>\d{3})[-.]|(?P<mid3>\d{3})-)(?P<last>\d{4})(?![\w-])", _say_phone),
    _Rule("currency",
          rf"(?<![\w.])(?P<neg>[-−](?=[$€£¥₹]))?(?P<sym>[$€£¥₹])[ \t]?(?P<num>{_NUM})"
          r"(?:(?P<scale>bn|mn|tn|[kKmMbBtT])|[ \t]?(?P<scale2>thousand|million|billion|trillion))?(?![\w])",
          _say_currency),
    _Rule("currency_after",
          rf"(?<![\w.,]){_NEG}(?P<num>{_NUM})[ \t]?(?P<sym>[$€£¥₹]|USD|EUR|GBP|JPY|INR)(?![\w])",
          _say_currency),
    _Rule("range", rf"(?<![\w.,-])(?P<a>{_NUM})[–—-](?P<b>{_NUM})(?![\d.]\d)(?:[ \t]?(?P<unit>{_UNIT}))?(?![\w])",
          _say_range),
    _Rule("range_dash", r"(?<=\d)[ \t]+[–—][ \t]+(?=\d)", _const("to")),
    _Rule("fraction", r"(?<![\w/.])(?P<a>\d{1,2})/(?P<b>\d{1,2})(?![\w/])", _say_fraction),
    _Rule("by", r"(?<![\w.,])(?P<a>\d+(?:\.\d+)?)[x×](?P<b>\d+(?:\.\d+)?)(?![\w])", _say_by),
    _Rule("decade", r"(?<![\w.,])'?(?P<num>\d0|\d{3}0)'?s(?![\w])", _say_decade),
    _Rule("ordinal", r"(?<![\w.,])(?P<num>\d{1,3}(?:,\d{3})+|\d+)(?:st|nd|rd|th|ST|ND|RD|TH)(?![A-Za-z])",
          _say_ordinal),
    _Rule("version", r"(?<![\w.])v(?P<num>\d+(?:\.\d+)*)(?![\w]|\.\d)", _say_version),
    _Rule("dotted_number", r"(?<![\w.])(?P<num>\d+(?:\.\d+){2,})(?![\w]|\.\d)", _say_dotted_number),
    _Rule("unit", rf"(?<![\w.,]){_NEG}(?P<num>{_NUM})[ \t]?(?P<unit>{_UNIT})(?![\w])", _say_unit),
    _Rule("times", rf"(?<![\w.,])(?P<num>{_NUM})x(?![\w])", _say_times),
    # --- abbreviations -----------------------------------------------------------------------------
    _Rule("number_abbr", r"(?<![\w.])(?:No|no|Nos|nos)\.[ \t]?(?=\d)", _const("number")),
    _Rule("dotted_abbr",
          rf"(?<![\w.])(?:{_alternation(DOTTED_ABBREVIATIONS)}|e\.g(?![\w.])|i\.e(?![\w.])|(?:[A-Za-z]\.){{2,}}(?![A-Za-z0-9]))",
          _say_dotted_abbreviation),
    _Rule("abbr", rf"(?<![\w.])(?P<abbr>{_alternation({**TITLE_ABBREVIATIONS, **END_ABBREVIATIONS})})\.",
          _say_abbreviation),
    _Rule("vs", r"(?<![\w.])vs(?![\w.])", _const("versus")),
    _Rule("with", r"(?<![\w/])w/o(?![\w/])", _const("without")),
    _Rule("with2", r"(?<![\w/])w/(?=[ \t])", _const("with")),
    _Rule("and_or", r"(?<![\w/])and/or(?![\w/])", _const("and or")),
    _Rule("dotted_word", r"(?<![\w.@/-])[A-Za-z][\w-]{0,63}(?:\.[A-Za-z0-9][\w-]{0,63}){1,8}(?![\w@])",
          _say_dotted_word),
    # --- symbols -----------------------------------------------------------------------------------
    _Rule("compare", r"(?<=\s)[<>](?=\s)", lambda m, _t: "less than" if m.group(0) == "<" else "greater than"),
    _Rule("multiply", r"(?<=\d)[ \t]?\*[ \t]?(?=\d)", _const("times")),
    _Rule("power", r"(?<=\d)\^(?=\d)", _const("to the power of")),
    _Rule("about", r"~(?=[\d$€£¥₹])", _const("about")),
    _Rule("sharp", r"(?<=\b[A-G])#(?![\w#])", _const("sharp")),
    _Rule("hash_number", r"#(?=\d)", _const("number")),
    _Rule("hashtag", r"(?<![\w#])#(?=[A-Za-z])", _const("hashtag")),
    _Rule("underscore", r"(?<=[^\W_])_(?=[^\W_])", _const("underscore")),
    _Rule("slash", r"(?<=\w)/(?=\w)", _const("slash")),
    _Rule("symbol", _alternation(SYMBOLS), _say_symbol),
    _Rule("spaced_dash", r"(?<=\s)-(?=\s)|--+|[—–]", _const(", "), spaced=False),
    _Rule("emphasis", r"[*_`~]+", _const(""), spaced=False),
    _Rule("separator", r"[\[\]{}|\\<>^#/]+", _const(" "), spaced=False),
    # --- plain numbers last ------------------------------------------------------------------------
    _Rule("number", r"(?:(?<![^\s(\[\"'])(?P<neg>[-−])(?=\.?\d))?(?P<num>" + _NUM + r"|\.\d+)", _say_number),
]


def _prefixed(pattern: str, prefix: str) -> str:
    """Make a rule's group names unique inside the combined pattern."""
    return re.sub(r"\(\?P([<=])(\w+)", lambda m: f"(?P{m.group(1)}{prefix}{m.group(2)}", pattern)


_COMPILED = [re.compile(r.pattern) for r in _RULES]
# Where a rule can start at all: a line start, a character that is not an ASCII letter or space, a
# letter that starts a word, or a space after a digit. Checked first, so plain text is skipped fast.
_MAY_START = r"(?:(?m:^)|(?=[^\sA-Za-z])|(?<!\w)(?=[A-Za-z])|(?<=\d)(?=\s))"
_MASTER = re.compile(
    _MAY_START + "(?:" + "|".join(f"(?P<r{i}>{_prefixed(r.pattern, f'r{i}_')})" for i, r in enumerate(_RULES)) + ")")

# ---------------------------------------------------------------------------------------------
# plain text filter: keep letters, digits, marks and ordinary punctuation; drop emoji and symbols

_KEEP_PUNCT = frozenset(".,;:!?'\"()-")
_REMAP = {"“": '"', "”": '"', "„": '"', "«": '"', "»": '"', "‘": "'", "’": "'", "‚": "'", "′": "'",
          "″": '"', "…": "...", "‐": "-", "‑": "-", "\u00ad": ""}


class _FilterTable(dict):
    """str.translate table computed lazily per character (one unicodedata lookup per new character)."""

    def __missing__(self, code: int) -> str | None:
        c = chr(code)
        if c in _REMAP:
            out: str | None = _REMAP[c]
        elif c in _KEEP_PUNCT or c.isspace():
            out = c
        else:
            cat = unicodedata.category(c)
            keep = cat[0] in "LN" and cat not in ("No", "Nl") or (cat in ("Mn", "Mc") and not 0xFE00 <= code <= 0xFE0F)
            out = c if keep else None
        self[code] = out
        return out


_FILTER = _FilterTable()
_RUN = re.compile(r"\s+|\S+")


# ---------------------------------------------------------------------------------------------
# scanning, joining, splitting


@dataclass(frozen=True, slots=True)
class Piece:
    """Spoken form of text[start:end]. `spaced`: rule output that must not glue onto letters."""

    start: int
    end: int
    text: str
    spaced: bool = False


def _plain(text: str, start: int, stop: int) -> Iterator[Piece]:
    for m in _RUN.finditer(text, start, stop):
        s = m.group()
        yield Piece(m.start(), m.end(), " " if s[0].isspace() else s.translate(_FILTER), False)


def pieces(text: str, pos: int = 0) -> Iterator[Piece]:
    """Spoken pieces of `text` from `pos` (a piece boundary) to the end, in order.

    Plain text comes as whitespace and non-whitespace runs, so a piece never straddles a word start.
    """
    n = len(text)
    while pos < n:
        m = _MASTER.search(text, pos)
        stop = m.start() if m else n
        if stop > pos:
            yield from _plain(text, pos, stop)
        if m is None:
            return
        if m.end() == m.start():  # cannot happen with the table above; never loop forever
            yield from _plain(text, m.start(), m.start() + 1)
            pos = m.start() + 1
            continue
        index = int(m.lastgroup[1:])  # the wrapper group closes last, so it is `lastgroup`
        rule = _RULES[index]
        own = _COMPILED[index].match(text, m.start())
        try:
            spoken = rule.speak(own if own is not None and own.end() == m.end() else m, text)
        except Exception:  # a malformed number or a library surprise: read it plainly instead
            spoken = m.group(0).translate(_FILTER)
        yield Piece(m.start(), m.end(), spoken, rule.spaced)
        pos = m.end()


class PieceJoiner:
    """Concatenates pieces, putting a space between spoken words and letters that would otherwise touch.

    Incremental so the streaming side can add pieces as they become final.
    """

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._last = ""
        self._last_spaced = False

    def add(self, piece: Piece) -> None:
        t = piece.text
        if not t:
            return
        if (piece.spaced or self._last_spaced) and t[0].isalnum() and (self._last.isalnum() or self._last in ",;:.!?"):
            self._parts.append(" ")  # "abc5" -> "abc five", "1,2" -> "one, two"
        self._parts.append(t)
        self._last = t[-1]
        self._last_spaced = piece.spaced

    @property
    def text(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""


_OPENING = frozenset("([{")
_QUOTES = frozenset("\"'")


def split_words(text: str) -> list[str]:
    """Whitespace words, with stray punctuation glued to its neighbour ("wow !" -> "wow!").

    A word made only of punctuation joins the previous word, or the next one if it opens a bracket;
    lone quotes are dropped. Only the last word can change when more text is appended, which is what
    lets the streaming side emit all but the last word early.
    """
    words: list[str] = []
    opening = ""
    for w in text.split():
        if any(c.isalnum() for c in w):
            words.append(opening + w)
            opening = ""
        elif all(c in _QUOTES for c in w):
            continue
        elif all(c in _OPENING for c in w):
            opening += w
        elif words:
            words[-1] += w
    return words


def normalize(text: str) -> str:
    """Written text -> speakable words, single-spaced. Never raises; linear time in len(text)."""
    try:
        joiner = PieceJoiner()
        for p in pieces(text):
            joiner.add(p)
        return " ".join(split_words(joiner.text))
    except Exception:  # last line of defence: keep only plainly readable characters
        return " ".join(split_words(text.translate(_FILTER)))
