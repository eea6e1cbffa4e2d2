"""Pronunciation lexicon: respellings for byte voices, phonemes for phoneme voices, matched after the
normaliser; bad files and entries are one clear line (CLI) or a 400 (server), and the server keeps serving."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import numpy as np
import pytest
from test_server import AUTH, KEY, LiveServer, settings

from llmvox.engine.config import StreamConfig
from llmvox.errors import LLMVoXError
from llmvox.server.app import create_app
from llmvox.text.frontend import ByteFrontend, PhonemeFrontend
from llmvox.text.lexicon import (
    MAX_ENTRIES,
    MAX_FILE_BYTES,
    MAX_REQUEST_ENTRIES,
    Lexicon,
    load_lexicon,
    parse_lexicon,
    read_lexicon,
)
from llmvox.text.normalize import normalize, split_words
from llmvox.text.tokenizer import EOS_ID, SENTENCE_END_ID, encode_words

CODES = 30  # codes per sentence in the live-server tests

ENTRIES = {"Nguyen": "Win", "NASA": "Nassa", "U.S.": "you ess", "km/h": "kilometres per hour",
           "kilometers": "kilometres", "siobhan": "shiv awn"}


def spoken(text: str) -> list[str]:
    """The words the stream hands the front-end: the normaliser's."""
    return split_words(normalize(text))


@pytest.fixture(scope="module")
def embedded():
    from llmvox.api import LLMVoX

    return LLMVoX.from_pretrained(None)


@pytest.fixture(scope="module")
def phonemes():
    pytest.importorskip("hibari")
    return PhonemeFrontend()


# ---- byte voices: respellings ----------------------------------------------------------------------


def test_a_respelled_word_changes_the_embedded_voices_text_ids_exactly(embedded):
    frontend = embedded.frontend
    assert frontend.kind == "byt5"
    bound = Lexicon(ENTRIES, frontend).bind(frontend)
    text = "Mr. Nguyen of NASA's U.S. team drove 60 km/h, then the km/h sign said SIOBHAN."
    assert spoken(text) == ["Mister", "Nguyen", "of", "NASA's", "U", "S", "team", "drove", "sixty", "kilometers",
                            "per", "hour,", "then", "the", "km", "slash", "h", "sign", "said", "SIOBHAN."]
    expected = ["Mister", "Win", "of", "Nassa's", "you", "ess", "team", "drove", "sixty", "kilometres", "per",
                "hour,", "then", "the", "kilometres", "per", "hour", "sign", "said", "shiv", "awn."]
    assert bound.encode_words(spoken(text)) == encode_words(expected)
    assert frontend.encode_words(spoken(text)) == encode_words(spoken(text))  # the voice itself is untouched


def test_case_rules_and_whole_words_only():
    frontend = ByteFrontend()
    bound = Lexicon({"US": "you ess", "nguyen": "Win", "NASA": "Nassa"}, frontend).bind(frontend)
    # a capitalised key matches only that casing; a lower-case key any casing; never inside a word
    words = ["US", "us", "NGUYEN", "nguyen's", "NASAL", "nasa", "(NASA)"]
    assert bound.encode_words(words) == encode_words(["you", "ess", "us", "Win", "Win's", "NASAL", "nasa", "(Nassa)"])


def test_one_word_keys_delay_nothing_and_a_longer_key_waits_for_its_next_word():
    frontend = ByteFrontend()
    reader = Lexicon({"Nguyen": "Win", "U.S.": "you ess"}, frontend).bind(frontend).reader()
    assert reader.push("Nguyen") == encode_words(["Win"])[:-1]  # released at once (no sentence end yet)
    assert reader.push("U") == []  # "U" begins "U S": it waits
    assert reader.push("S") == [ord(c) + 3 for c in "you"] + [EOS_ID] + [ord(c) + 3 for c in "ess"] + [EOS_ID]
    assert reader.push("U,") == [ord(c) + 3 for c in "U,"] + [EOS_ID]  # punctuation ends any key: no wait
    assert reader.push("U") == []
    assert reader.push("boat") == [ord("U") + 3, EOS_ID] + [ord(c) + 3 for c in "boat"] + [EOS_ID]
    assert reader.finish() == [SENTENCE_END_ID]


# ---- phoneme voices ---------------------------------------------------------------------------------


def test_a_lexicon_entry_replaces_the_g2ps_phonemes(phonemes):
    words = spoken("Mr. Nguyen ate the apple.")
    plain = phonemes.word_phonemes(" ".join(words))
    assert plain[1] != "wˈɪn" and plain[3] == "ði"  # the g2p's own reading; "the" before a vowel
    bound = Lexicon({"Nguyen": "wˈɪn", "apple": "ˈæpᵊl"}, phonemes).bind(phonemes)
    expected = []
    for i, p in enumerate(plain):
        expected += [*phonemes.ids("wˈɪn" if i == 1 else "ˈæpᵊl." if i == 4 else p), EOS_ID]
    reader = bound.reader()
    got = [reader.push(w) for w in words] + [reader.finish()]
    assert sum(got, []) == expected + [SENTENCE_END_ID]
    assert got[0] == [] and got[2] == [*phonemes.ids("wˈɪn"), EOS_ID]  # still one word of look-ahead
    assert bound.kind == "phonemes" and bound.config() == phonemes.config()  # the bundle's table is unchanged


def test_phonemes_must_come_from_the_voices_table(phonemes):
    with pytest.raises(LLMVoXError, match=r"lexicon: the pronunciation of 'Nguyen' uses 'X', which is not in "
                                          r"this voice's phoneme table") as err:
        Lexicon({"NASA": "nˈæsə", "Nguyen": "wˈɪnX"}, phonemes)
    assert "\n" not in str(err.value)
    with pytest.raises(LLMVoXError, match=r"'\)', which a pronunciation cannot contain"):
        Lexicon({"Nguyen": "wˈɪn)"}, phonemes)
    tiny = PhonemeFrontend({"a": 4, "b": 5})
    assert len(Lexicon({"ab": "ba"}, tiny)) == 1
    with pytest.raises(LLMVoXError, match="'ab' uses 'ʃ'"):
        Lexicon({"ab": "aʃ"}, tiny)
    with pytest.raises(LLMVoXError, match="checked for a phonemes voice, not a byt5 one"):
        Lexicon({"ab": "ba"}, tiny).bind(ByteFrontend())


# ---- files and bad input ----------------------------------------------------------------------------


def test_tsv_and_json_files(tmp_path, phonemes):
    tsv = tmp_path / "names.tsv"
    tsv.write_text("# names\n\nNguyen\twˈɪn\n  NASA \t nˈæsə \n", encoding="utf-8")
    assert read_lexicon(tsv) == {"Nguyen": "wˈɪn", "NASA": "nˈæsə"}
    js = tmp_path / "names.json"
    js.write_text(json.dumps({"Nguyen": "Win"}), encoding="utf-8")
    assert read_lexicon(js) == {"Nguyen": "Win"}
    assert len(load_lexicon(tsv, phonemes)) == 2


@pytest.mark.parametrize(("content", "message"), [
    (None, r"lexicon .*missing.tsv: no such file"),
    ('{"Nguyen": "Win",}', r"is not valid JSON"),
    ('["Nguyen"]', r"must be one JSON object"),
    ('{"Nguyen": 3}', r"each entry is a word and its pronunciation, both text"),
    ("Nguyen\tWin\nNASA Nassa\n", r"line 2: expected WORD<TAB>PRONUNCIATION, got 'NASA Nassa'"),
    ("Nguyen\t \n", r"the pronunciation of 'Nguyen' is empty"),
    ("Nguyen\tWin\nNguyen\tWen\n", r"'Nguyen' is listed twice"),
    ("!!\tbang\n", r"the word '!!' has no letters or digits"),
    ("a b c d e\tx\n", r"is too long"),
    ("".join(f"w{i}\tx\n" for i in range(MAX_ENTRIES + 1)), rf"has {MAX_ENTRIES + 1} entries; the limit is"),
    ("x" * (MAX_FILE_BYTES + 1), rf"is {MAX_FILE_BYTES + 1} bytes; the limit is {MAX_FILE_BYTES}"),
    (b"\xff\xfe", r"is not UTF-8 text"),
])
def test_bad_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "missing.tsv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(LLMVoXError, match=message) as err:
        read_lexicon(path)
    assert "\n" not in str(err.value)


def test_a_respelling_is_words():
    with pytest.raises(LLMVoXError, match="the pronunciation of 'R2' has the digit '2': write numbers as words"):
        Lexicon(parse_lexicon("R2\tar 2\n", "lexicon x"), ByteFrontend())


@pytest.mark.slow  # starts `llmvox serve` / decodes three times with the embedded voice
def test_the_cli_says_a_bad_lexicon_in_one_line_before_loading_a_voice(tmp_path, capsys):
    from llmvox.cli import main

    bad = tmp_path / "bad.tsv"
    bad.write_text("Nguyen Win\n", encoding="utf-8")
    line = f"llmvox: error: lexicon {bad} line 1: expected WORD<TAB>PRONUNCIATION, got 'Nguyen Win'"
    assert main(["synthesize", "--text", "Hi.", "--out", str(tmp_path / "a.wav"), "--lexicon", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == line
    serve = subprocess.run([sys.executable, "-m", "llmvox", "serve", "--chat_type", "tts", "--api_port", "1",
                            "--lexicon", str(bad)], capture_output=True, text=True, timeout=120)
    assert serve.returncode == 2 and serve.stderr.strip() == line, serve.stderr


@pytest.mark.slow  # starts `llmvox serve` / decodes three times with the embedded voice
def test_synthesize_with_a_lexicon_speaks_the_respelling(tmp_path):
    from llmvox.cli import main

    lexicon = tmp_path / "names.tsv"
    lexicon.write_text("Nguyen\tWin\n", encoding="utf-8")
    runs = {}
    for name, text, extra in (("lexicon", "Nguyen is here.", ["--lexicon", str(lexicon)]),
                              ("respelled", "Win is here.", []), ("plain", "Nguyen is here.", [])):
        codes = tmp_path / f"{name}.npy"
        assert main(["synthesize", "--text", text, "--out", str(tmp_path / f"{name}.wav"), "--max_audio_length",
                     "12", "--codes_out", str(codes), *extra]) == 0
        runs[name] = np.load(codes)
    assert np.array_equal(runs["lexicon"], runs["respelled"])
    assert not np.array_equal(runs["lexicon"], runs["plain"])


# ---- the server ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(embedded, tmp_path_factory):
    server_lexicon = tmp_path_factory.mktemp("lex") / "server.tsv"
    server_lexicon.write_text("NASA\tNassa\n", encoding="utf-8")
    embedded.frontend = load_lexicon(server_lexicon, embedded.frontend).bind(embedded.frontend)  # as --lexicon
    server = LiveServer(create_app(settings(num_workers=1, stream=StreamConfig(max_audio_length=CODES)),
                                   tts=embedded))
    yield server
    server.stop()
    embedded.frontend = embedded.frontend.inner


def _speech(client: httpx.Client, text: str, **extra) -> httpx.Response:
    return client.post("/v1/audio/speech", json={"model": "llmvox", "input": text, "voice": "alloy",
                                                  "response_format": "pcm", **extra})


def test_a_request_lexicon_changes_the_audio(live):
    with httpx.Client(base_url=live.url, headers=AUTH, timeout=60) as client:
        plain = _speech(client, "Nguyen works at NASA.")
        again = _speech(client, "Nguyen works at NASA.")
        respelled = _speech(client, "Win works at Nassa.")
        lexicon = _speech(client, "Nguyen works at NASA.", lexicon={"nguyen": "Win"})
        for r in (plain, again, respelled, lexicon):
            assert r.status_code == 200 and len(r.content) > 0, r.text
        assert plain.content == again.content  # greedy decoding: same ids, same audio
        assert lexicon.content == respelled.content != plain.content  # the server's NASA entry still holds
        tts = client.post("/tts", json={"text": "Nguyen works at NASA.", "lexicon": {"Nguyen": "Win"}})
        assert tts.status_code == 200 and len(tts.content) == 2 * len(respelled.content)  # float32 vs s16


@pytest.mark.parametrize(("lexicon", "message"), [
    (["Nguyen"], "lexicon must be a JSON object of word: pronunciation"),
    ({"Nguyen": ""}, "lexicon: the pronunciation of 'Nguyen' is empty"),
    ({"Nguyen": 7}, "lexicon: each entry is a word and its pronunciation, both text"),
    ({"R2": "ar 2"}, "lexicon: the pronunciation of 'R2' has the digit '2'"),
    ({f"w{i}": "x" for i in range(MAX_REQUEST_ENTRIES + 1)}, f"the limit is {MAX_REQUEST_ENTRIES}"),
])
def test_a_bad_request_lexicon_is_a_400_and_the_server_keeps_serving(live, lexicon, message):
    with httpx.Client(base_url=live.url, headers=AUTH, timeout=60) as client:
        r = _speech(client, "Nguyen is here.", lexicon=lexicon)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert message in error["message"] and error["code"] == "invalid_lexicon" and error["param"] == "lexicon"
        assert _speech(client, "Still here.").status_code == 200


def test_the_websocket_takes_a_lexicon_on_the_text_that_starts_an_utterance(live):
    from websockets.sync.client import connect

    def say(messages: list[dict]) -> tuple[bytes, list[dict]]:
        audio, events = [], []
        with connect(f"ws://127.0.0.1:{live.port}/v1/stream?api_key={KEY}") as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "ready"
            for message in messages:
                ws.send(json.dumps(message))
            while True:
                msg = ws.recv(timeout=60)
                if isinstance(msg, bytes):
                    audio.append(msg)
                    continue
                events.append(json.loads(msg))
                if events[-1]["type"] == "done":
                    return b"".join(audio), events

    end = {"type": "end"}
    with_lexicon, events = say([{"type": "text", "text": "Nguyen is ", "lexicon": {"Nguyen": "Win"}},
                                {"type": "text", "text": "here."}, end])
    respelled, _ = say([{"type": "text", "text": "Win is here."}, end])
    plain, _ = say([{"type": "text", "text": "Nguyen is here."}, end])
    assert with_lexicon == respelled != plain and len(plain) > 0
    assert events[0] == {"type": "segment", "index": 0, "text": "Nguyen is here."}  # the text shown is the user's
    # a bad lexicon, or one sent mid-utterance: an error event, that message dropped, the session goes on
    _, events = say([{"type": "text", "text": "Win "}, {"type": "text", "text": "is", "lexicon": {"a": "b"}},
                        {"type": "text", "text": " here."}, end])
    assert [e["code"] for e in events if e["type"] == "error"] == ["invalid_lexicon"]
    bad, events = say([{"type": "text", "text": "Nguyen is here.", "lexicon": {"Nguyen": ""}},
                       {"type": "text", "text": "Win is here."}, end])
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1 and "the pronunciation of 'Nguyen' is empty" in errors[0]["message"]
    assert bad == respelled
