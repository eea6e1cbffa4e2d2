"""Text front-ends: the original byte ids, and misaki phonemes read word by word with one word of look-ahead."""

from __future__ import annotations

import sys

import pytest

from llmvox.errors import LLMVoXError
from llmvox.text.frontend import ByteFrontend, PhonemeFrontend, frontend_from_config, new_frontend
from llmvox.text.tokenizer import BYTE_OFFSET, EOS_ID, PAD_ID, SENTENCE_END_ID, encode_words

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "I don't want to read the record, Doctor Smith.",
             "Penguins cannot fly, but whales are mammals!", "It costs twelve dollars and fifty cents per person.",
             "Photosynthesis turns light into sugar.", "Hi."]


def stream(frontend, words: list[str]) -> list[list[int]]:
    reader = frontend.reader()
    return [reader.push(w) for w in words] + [reader.finish()]


def test_byte_frontend_reads_exactly_the_original_ids():
    frontend = ByteFrontend()
    for sentence in SENTENCES:
        words = sentence.split()
        assert frontend.encode_words(words) == encode_words(words)
        pieces = stream(frontend, words)
        assert sum(pieces, []) == encode_words(words) and pieces[-1] == [SENTENCE_END_ID]
    assert frontend.config() == {"kind": "byt5"} and frontend_from_config(None).kind == "byt5"


@pytest.fixture(scope="module")
def phonemes():
    pytest.importorskip("hibari")
    return PhonemeFrontend()


def test_streamed_phonemes_equal_the_whole_sentence_read_by_the_g2p(phonemes):
    for sentence in SENTENCES:
        words = sentence.split()
        pieces = stream(phonemes, words)
        assert pieces[0] == []  # the first word waits for its right-hand neighbour
        whole = []
        for p in phonemes.word_phonemes(sentence):
            if phonemes.ids(p):
                whole += [*phonemes.ids(p), EOS_ID]
        assert sum(pieces, []) == whole + [SENTENCE_END_ID] == phonemes.encode_words(words), sentence
        ids = sum(pieces, [])[:-1]
        assert ids.count(EOS_ID) == len(words)  # one word, one separator
        assert all(i == EOS_ID or BYTE_OFFSET <= i < PAD_ID for i in ids)


def test_a_word_is_read_with_its_right_hand_context(phonemes):
    """'the' before a vowel is /ði/, before a consonant /ðə/: the reader holds a word until it knows the next."""
    before_vowel = stream(phonemes, ["the", "apple"])
    before_consonant = stream(phonemes, ["the", "dog"])
    assert before_vowel[1] != before_consonant[1]  # the released "the" differs
    assert phonemes.word_phonemes("the apple")[0] == "ði" and phonemes.word_phonemes("the dog")[0] == "ðə"


def test_the_bundle_stores_the_phoneme_table(phonemes):
    config = phonemes.config()
    assert config["kind"] == "phonemes" and len(config["symbols"]) > 100
    again = frontend_from_config(config)
    assert again.symbols == phonemes.symbols
    assert again.encode_words(SENTENCES[0].split()) == phonemes.encode_words(SENTENCES[0].split())
    assert new_frontend("phonemes").symbols == phonemes.symbols


def test_front_end_errors_are_one_line(monkeypatch):
    with pytest.raises(LLMVoXError, match="unknown text front-end 'klingon'"):
        frontend_from_config({"kind": "klingon"})
    with pytest.raises(LLMVoXError, match="unknown text front-end"):
        new_frontend("klingon")
    with pytest.raises(LLMVoXError, match="must store its phoneme table"):
        frontend_from_config({"kind": "phonemes"})
    with pytest.raises(LLMVoXError, match="phoneme ids must lie in"):
        PhonemeFrontend({"a": 384})
    monkeypatch.setitem(sys.modules, "hibari.g2p", None)  # the g2p is not installed
    with pytest.raises(LLMVoXError, match=r"needs the g2p of hibari-tts: pip install") as err:
        frontend_from_config({"kind": "phonemes", "symbols": {"a": 4}})
    assert "\n" not in str(err.value)


def test_bench_frontend_times_each_word_and_counts_the_look_ahead(tmp_path, phonemes):
    import json

    from llmvox.cli import main

    sentences = tmp_path / "s.txt"
    sentences.write_text("The apple is red.\nPenguins cannot fly.\n")
    out = tmp_path / "frontend.json"
    assert main(["bench", "frontend", "--json", str(out), "--sentences", str(sentences), "--repeats", "1"]) == 0
    result = json.loads(out.read_text())
    assert result["sentences"] == 2 and result["words"] == 7
    byt5, phon = result["frontends"]["byt5"], result["frontends"]["phonemes"]
    assert byt5["words_held_back_max"] == 0 and phon["words_held_back_max"] == 1
    assert 0 < phon["ms_per_word_median"] <= phon["ms_per_word_p95"] <= phon["ms_per_word_max"]
