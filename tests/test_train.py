"""Tokenised cache, decoder trainer (overfit, DDP, exact resume), CLI flags, bench train.

Everything runs on a tiny codec (random encoder weights, codebook initialised from its own latents
as k-means would, so the codes are varied) and a tiny decoder, with tone-sequence "speech" made here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from llmvox.cli import main
from llmvox.errors import LLMVoXError
from llmvox.text.tokenizer import PAD_ID, encode_words
from llmvox.train.batching import IGNORE_INDEX, BucketSampler, make_batch, sequence_lengths

REPO = Path(__file__).resolve().parents[1]
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()
SR = 24000
TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "96", "--block_size", "256", "--num_threads", "1",
        "--progress", "False"]


def tone_utterance(rng: np.random.Generator, segments: int) -> np.ndarray:
    """80 ms tones of random pitch and level with a little noise: varied, speech-like code sequences."""
    seg = SR * 80 // 1000
    t = np.arange(seg) / SR
    parts = [rng.uniform(0.05, 0.5) * np.sin(2 * np.pi * rng.uniform(100, 3000) * t)
             + rng.uniform(0, 0.1) * rng.standard_normal(seg) for _ in range(segments)]
    return np.concatenate(parts).astype(np.float32)


def write_dataset(folder: Path, n: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    wavs = folder / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        sf.write(wavs / f"u{i}.wav", tone_utterance(rng, 8 + i), SR)
        entries.append({"speech_folder": "wavs", "speech_file": f"u{i}.wav",
                        "answer_text": f"{WORDS[i % 13]} {WORDS[(i + 1) % 13]}.", "id": f"u{i}"})
    path = folder / "data.json"
    path.write_text(json.dumps(entries))
    return path


def make_codec(seed: int, audios: list[np.ndarray]):
    from llmvox.codec.config import CodecConfig
    from llmvox.codec.wavtokenizer import WavTokenizer

    cfg = CodecConfig(encoder_filters=4, encoder_dimension=32, encoder_lstm_layers=1, codebook_size=512,
                      backbone_dim=32, backbone_intermediate_dim=64, backbone_layers=1)
    torch.manual_seed(seed)
    codec = WavTokenizer(cfg).eval()
    with torch.no_grad():
        latents = torch.cat([codec.encoder(torch.from_numpy(a)[None, None])[0].T for a in audios])
        rows = torch.randperm(len(latents))[:512] if len(latents) >= 512 else torch.randint(0, len(latents), (512,))
        codec.quantizer.embed.copy_(latents[rows])
    return codec


def save_codec(codec, folder: Path) -> tuple[Path, Path]:
    import yaml

    from llmvox.codec.checkpoint import save_lightning_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    config = codec.config.to_yaml_dict()
    (folder / "codec.yaml").write_text(yaml.safe_dump(config))
    save_lightning_checkpoint(codec, folder / "codec.ckpt", config)
    return folder / "codec.yaml", folder / "codec.ckpt"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A dataset, a tiny codec (YAML + Lightning ckpt) and its tokenised cache."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("train_world")
    data = write_dataset(root / "data")
    audios = [sf.read(root / "data" / "wavs" / f"u{i}.wav", dtype="float32")[0] for i in range(8)]
    codec_yaml, codec_ckpt = save_codec(make_codec(0, audios), root / "codec")
    cache = root / "cache"
    assert main(["data", "tokenize", "--data_path", str(data), "--cache_dir", str(cache), "--wav_config_path",
                 str(codec_yaml), "--wav_model_path", str(codec_ckpt), "--no_progress", "--threads", "1"]) == 0
    return {"root": root, "data": data, "yaml": codec_yaml, "ckpt": codec_ckpt, "cache": cache, "audios": audios}


def codec_args(world) -> list[str]:
    return ["--wav_config_path", str(world["yaml"]), "--wav_model_path", str(world["ckpt"])]


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------------
# cache
# ------------------------------------------------------------------------------------------------


def test_cache_holds_codec_codes_and_original_text_ids(world):
    from llmvox.codec.checkpoint import load_wavtokenizer
    from llmvox.model.speech_decoder import EOA_ID
    from llmvox.train.cache import CodeCache

    cache = CodeCache(world["cache"])
    codec = load_wavtokenizer(world["yaml"], world["ckpt"])
    entries = json.loads(world["data"].read_text())
    assert cache.ids == [e["id"] for e in entries] and len(cache) == 8
    for i, entry in enumerate(entries):
        with torch.inference_mode():
            codes = codec.encode(torch.from_numpy(world["audios"][i])[None])[0].numpy()
        np.testing.assert_array_equal(cache.codes(i), codes[codes != EOA_ID])
        assert cache.text_ids(i).tolist() == encode_words(entry["answer_text"].split())
        assert cache.text_ids(i)[-1] == 385
    np.testing.assert_array_equal(cache.codebook(), codec.codebook.numpy())
    assert cache.codes(0).dtype == np.int16  # 512 codes fit in 16 bits
    # the codes are varied: a model that ignores the context cannot predict them
    all_codes = np.concatenate([cache.codes(i) for i in range(len(cache))])
    assert len(np.unique(all_codes)) > 300


def test_cache_is_incremental_resumable_and_one_codec_only(world, tmp_path):
    from llmvox.codec.checkpoint import load_wavtokenizer
    from llmvox.train.cache import CodeCache, codec_fingerprint
    from llmvox.train.cache_writer import tokenize_dataset
    from llmvox.train.training_data import load_codec_source

    data = write_dataset(tmp_path / "d", n=4)
    codec = load_wavtokenizer(world["yaml"], world["ckpt"])
    cache_dir = tmp_path / "cache"
    first = tokenize_dataset(data, cache_dir, codec, shard_size=3, progress=False)
    assert (first["encoded_now"], first["utterances"]) == (4, 4)
    assert len(list(cache_dir.glob("shard_*.index.json"))) == 2
    # a crash mid-shard leaves arrays without an index: they are removed, nothing is re-encoded
    (cache_dir / "shard_00002.codes.npy").write_bytes(b"partial")
    again = tokenize_dataset(data, cache_dir, codec, progress=False)
    assert (again["encoded_now"], again["already_cached"]) == (0, 4)
    assert not (cache_dir / "shard_00002.codes.npy").exists()
    # a grown dataset encodes only its new entries; a changed transcript is encoded again
    entries = json.loads(data.read_text())
    entries[0]["answer_text"] = "changed words."
    sf.write(tmp_path / "d" / "wavs" / "extra.wav", tone_utterance(np.random.default_rng(9), 10), SR)
    entries.append({"speech_folder": "wavs", "speech_file": "extra.wav", "answer_text": "mike lima.", "id": "x"})
    data.write_text(json.dumps(entries))
    grown = tokenize_dataset(data, cache_dir, codec, progress=False)
    assert (grown["encoded_now"], grown["already_cached"], grown["utterances"]) == (2, 3, 5)
    cache = CodeCache(cache_dir)
    assert cache.ids == ["u0", "u1", "u2", "u3", "x"]
    assert cache.text_ids(0).tolist() == encode_words(["changed", "words."])
    # the same codec through a bundle has the same fingerprint ...
    from llmvox.bundle import save_bundle
    from llmvox.model.gpt import GPT, GPTConfig

    gpt = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=64, block_size=16, vocab_size=512))
    save_bundle(tmp_path / "bundle", gpt, torch.zeros(386, 32), codec)
    from_bundle, _ = load_codec_source(None, None, str(tmp_path / "bundle"))
    assert codec_fingerprint(from_bundle) == codec_fingerprint(codec) == cache.fingerprint
    # ... another codec is refused
    other = make_codec(1, world["audios"])
    with pytest.raises(LLMVoXError, match="cannot be mixed"):
        tokenize_dataset(data, cache_dir, other, progress=False)
    with pytest.raises(LLMVoXError, match="cannot be mixed"):
        cache.check_codec(codec_fingerprint(other))


def test_worker_processes_fill_the_same_cache_as_one_process(world, tmp_path, capsys):
    from llmvox.train.cache import CodeCache

    entries = json.loads(world["data"].read_text())
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(SR // 2, np.float32), SR)
    entries.insert(3, {"speech_folder": str(tmp_path), "speech_file": "silent.wav", "answer_text": "hush.", "id": "q"})
    for e in entries:
        e["speech_folder"] = str(world["data"].parent / e["speech_folder"]) if e["id"] != "q" else e["speech_folder"]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(entries))
    cache_dir = tmp_path / "cache"
    assert main(["data", "tokenize", "--data_path", str(data), "--cache_dir", str(cache_dir), *codec_args(world),
                 "--no_progress", "--workers", "2", "--shard_size", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["encoded_now"] == 8 and report["problems_by_kind"] == {"silent_audio": 1}
    one, many = CodeCache(world["cache"]), CodeCache(cache_dir)
    assert many.ids == one.ids  # dataset order, the silent entry left out
    for i in range(len(one)):
        np.testing.assert_array_equal(many.codes(i), one.codes(i))
        np.testing.assert_array_equal(many.text_ids(i), one.text_ids(i))
    assert main(["data", "tokenize", "--data_path", str(data), "--cache_dir", str(cache_dir), *codec_args(world),
                 "--no_progress", "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_every_invalid_entry_kind_gets_its_error(world, tmp_path, capsys):
    folder = tmp_path / "bad"
    wavs = folder / "wavs"
    wavs.mkdir(parents=True)
    rng = np.random.default_rng(3)
    sf.write(wavs / "good.wav", tone_utterance(rng, 10), SR)
    sf.write(wavs / "silent.wav", np.zeros(SR // 2, np.float32), SR)
    sf.write(wavs / "short.wav", tone_utterance(rng, 1), SR)
    sf.write(wavs / "empty.wav", np.zeros(0, np.float32), SR)
    (wavs / "text.wav").write_text("not audio at all")

    def item(i, **kw):
        return {"speech_folder": "wavs", "speech_file": "good.wav", "answer_text": "alpha bravo.", "id": i} | kw

    items = [
        item("ok"),
        "just a string",                                                   # not_an_object
        {"speech_folder": "wavs", "speech_file": "good.wav", "answer_text": "x"},  # missing_field (id)
        {"speech_folder": "wavs", "speech_file": "good.wav", "id": "no_text"},     # missing_field (text)
        item("bad_type", answer_text=42),                                  # wrong_type
        item("blank", answer_text="   "),                                  # empty_text
        item("ok"),                                                        # duplicate_id
        item("gone", speech_file="missing.wav"),                           # missing_file
        item("garbage", speech_file="text.wav"),                           # unreadable_audio
        item("nothing", speech_file="empty.wav"),                          # empty_audio
        item("quiet", speech_file="silent.wav"),                           # silent_audio
        item("too_long", speech_file="short.wav", answer_text=" ".join(WORDS) + "."),  # text_longer_than_audio
    ]
    data = folder / "data.json"
    data.write_text(json.dumps(items))
    cache = tmp_path / "cache"
    args = ["data", "tokenize", "--data_path", str(data), "--cache_dir", str(cache), *codec_args(world), "--no_progress"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    expected = {"not_an_object": 1, "missing_field": 2, "wrong_type": 1, "empty_text": 1, "duplicate_id": 1,
                "missing_file": 1, "unreadable_audio": 1, "empty_audio": 1, "silent_audio": 1,
                "text_longer_than_audio": 1}
    assert report["problems_by_kind"] == expected
    assert report["utterances"] == 1
    problems = json.loads((cache / "problems.json").read_text())
    by_id = {p["id"]: p["kind"] for p in problems}
    assert by_id["bad_type"] == "wrong_type" and by_id["gone"] == "missing_file"
    assert by_id["quiet"] == "silent_audio" and by_id["too_long"] == "text_longer_than_audio"
    assert by_id["garbage"] == "unreadable_audio" and by_id["nothing"] == "empty_audio"
    # --on_error fail stops at the first bad entry, with one line naming it
    assert main([*args[:5], str(tmp_path / "cache2"), *args[6:], "--on_error", "fail"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("llmvox: error:") and "entry #1" in err[-1] and "not_an_object" in err[-1]
    # an encoding problem also fails fast, after saving what was encoded
    only_quiet = folder / "quiet.json"
    only_quiet.write_text(json.dumps([item("ok"), item("quiet", speech_file="silent.wav")]))
    assert main(["data", "tokenize", "--data_path", str(only_quiet), "--cache_dir", str(tmp_path / "cache3"),
                 *codec_args(world), "--no_progress", "--on_error", "fail"]) == 2
    assert "'quiet': silent_audio" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# batches and schedule
# ------------------------------------------------------------------------------------------------


def test_batch_follows_the_original_step_semantics():
    codes = [np.array([10, 11, 12]), np.array([20])]
    texts = [np.array([100, 1, 385]), np.array([101, 102, 1, 385])]
    b = make_batch(codes, texts, max_len=100, eoa_id=453)
    # utterance 0: 3 codes -> 4 steps; text padded with PAD to 4 steps
    assert b.text_ids[0].tolist() == [100, 1, 385, PAD_ID]
    assert b.prev_codes[0].tolist() == [-1, 10, 11, 12]
    assert b.targets[0].tolist() == [10, 11, 12, 453]
    # utterance 1: 1 code -> 2 steps; its text is longer than that and is cut (as the original does)
    assert b.text_ids[1].tolist()[:2] == [101, 102]
    assert b.prev_codes[1].tolist()[:2] == [-1, 20]
    assert b.targets[1].tolist() == [20, 453, IGNORE_INDEX, IGNORE_INDEX]
    assert b.num_targets == 6
    cropped = make_batch(codes, texts, max_len=2, eoa_id=453)
    assert cropped.targets.tolist() == [[10, 11], [20, 453]]
    assert cropped.prev_codes.tolist() == [[-1, 10], [-1, 20]]


def test_bucket_sampler_is_seeded_covers_each_epoch_and_buckets_lengths():
    rng = np.random.default_rng(0)
    lengths = sequence_lengths(rng.integers(20, 500, 500), max_len=512)
    a = BucketSampler(lengths, 8, seed=5, bucket_window=16)
    b = BucketSampler(lengths, 8, seed=5, bucket_window=16)
    n = a.batches_per_epoch
    epoch0 = [a.micro_batch(i) for i in range(n)]
    assert all(np.array_equal(x, b.micro_batch(i)) for i, x in enumerate(epoch0))
    assert sorted(np.concatenate(epoch0).tolist()) == list(range(500))
    epoch1 = np.concatenate([a.micro_batch(n + i) for i in range(n)])
    assert sorted(epoch1.tolist()) == list(range(500)) and not np.array_equal(epoch1, np.concatenate(epoch0))
    def padding(batches) -> int:
        return sum(len(x) * lengths[x].max() - lengths[x].sum() for x in batches)

    unbucketed = BucketSampler(lengths, 8, seed=5, bucket_window=1)
    assert padding(epoch0) < 0.1 * padding(unbucketed.micro_batch(i) for i in range(n))


def test_schedule_and_optimizer_groups():
    from llmvox.model.gpt import GPT, GPTConfig
    from llmvox.model.speech_decoder import SpeechDecoder
    from llmvox.train.optim import get_lr, make_optimizer

    kw = {"learning_rate": 1e-3, "warmup_iters": 10, "lr_decay_iters": 110, "min_lr": 1e-5}
    assert get_lr(0, **kw) == 0.0
    assert get_lr(5, **kw) == pytest.approx(5e-4)
    assert get_lr(10, **kw) == pytest.approx(1e-3)
    assert get_lr(60, **kw) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert get_lr(110, **kw) == pytest.approx(1e-5) and get_lr(500, **kw) == 1e-5
    assert get_lr(3, decay_lr=False, **kw) == 1e-3
    gpt = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=512, bias=True))
    dec = SpeechDecoder(gpt, torch.randn(386, 16), torch.randn(512, 16))
    opt = make_optimizer(dec, learning_rate=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0 and decay["eps"] == 1e-5
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"][:-1])
    assert no_decay["params"][-1] is dec.text_embedding.weight
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(dec.parameters()))


def test_cli_parses_original_flags_and_booleans():
    from llmvox.cli import build_parser
    from llmvox.cli.train import config_from_args

    parser = build_parser()
    args = parser.parse_args(["train", "--batch_size=8", "--learning_rate=5e-5", "--n_layer=6", "--compile=False",
                              "--wandb_log", "--bias", "True", "--decay_lr=no", "--max-iters", "7", "--dtype=bfloat16"])
    cfg = config_from_args(args)
    assert (cfg.batch_size, cfg.learning_rate, cfg.n_layer, cfg.max_iters, cfg.dtype) == (8, 5e-5, 6, 7, "bfloat16")
    assert cfg.compile is False and cfg.wandb_log is True and cfg.bias is True and cfg.decay_lr is False
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--compile=maybe"])


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------


def test_tiny_decoder_overfits_and_its_bundle_speaks_the_training_codes(world, tmp_path):
    """Threshold: the codes' unigram entropy is > 5 nats (checked), the floor for any model that ignores
    text and history; a loss below 0.5 nats means the right next code gets ~60%+ probability on average,
    i.e. the eight utterances are memorised. Then greedy synthesis of a training text must replay them."""
    from llmvox.train.cache import CodeCache

    cache = CodeCache(world["cache"])
    codes = np.concatenate([np.append(cache.codes(i), 453) for i in range(len(cache))])
    p = np.unique(codes, return_counts=True)[1] / len(codes)
    assert -(p * np.log(p)).sum() > 5.0
    out = tmp_path / "run"
    bundle = tmp_path / "bundle"
    start = time.perf_counter()
    rc = main(["train", "--data_path", str(world["data"]), "--out_dir", str(out), "--cache_dir", str(world["cache"]),
               *codec_args(world), "--max_iters", "200", *TINY, "--batch_size", "4", "--learning_rate", "3e-3",
               "--warmup_iters", "10", "--min_lr", "3e-4", "--eval_interval", "100", "--log_interval", "10",
               "--val_fraction", "0", "--dtype", "float32", "--export_bundle", str(bundle)])
    assert rc == 0
    assert time.perf_counter() - start < 60
    rows = [r for r in read_log(out / "train_log.jsonl") if "loss" in r]
    assert rows[0]["loss"] > 5.5  # starts near ln(512) = 6.24
    assert np.mean([r["loss"] for r in rows[-3:]]) < 0.5
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert {"model", "model_args", "iter_num", "optimizer", "config"} <= set(ckpt)
    assert ckpt["iter_num"] == 200 and ckpt["model_args"]["vocab_size"] == 512
    assert ckpt["text_embedding"].shape == (386, 64)
    # the bundle replays a memorised utterance through the inference engine
    wav, codes_out = tmp_path / "s.wav", tmp_path / "s.npy"
    assert main(["synthesize", "--bundle", str(bundle), "--text", "alpha bravo.", "--out", str(wav),
                 "--codes_out", str(codes_out)]) == 0
    spoken = np.load(codes_out)
    target = cache.codes(0)
    n = min(len(spoken), len(target))
    assert n >= len(target) - 2
    assert np.mean(spoken[:n] == target[:n]) > 0.9
    assert sf.info(wav).frames > 0
    # a runaway sentence stops inside the positions the decoder was trained on
    block = ckpt["model_args"]["block_size"]
    assert json.loads((bundle / "config.json").read_text())["generation"]["max_audio_length"] == block - 24


def test_checkpoint_with_t5_table_loads_in_synthesize_by_original_paths(world, tmp_path):
    from safetensors.torch import save_file

    from llmvox.model.checkpoint import load_llmvox_checkpoint

    t5 = tmp_path / "t5"
    t5.mkdir()
    table = torch.randn(384, 64) * 3
    save_file({"shared.weight": table}, str(t5 / "model.safetensors"))
    (t5 / "config.json").write_text(json.dumps({"d_model": 64}))
    out = tmp_path / "run"
    assert main(["train", "--data_path", str(world["cache"]), "--out_dir", str(out), "--max_iters", "3", *TINY,
                 "--encoder_model_path", str(t5), "--eval_interval", "0", "--dtype", "float32"]) == 0
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["llmvox"]["text_table_frozen"] is True
    torch.testing.assert_close(ckpt["text_embedding"][:384], table)  # frozen, as the original's was
    gpt = load_llmvox_checkpoint(out / "ckpt.pt")
    assert gpt.config.n_layer == 2
    wav = tmp_path / "o.wav"
    assert main(["synthesize", "--llmvox_checkpoint_path", str(out / "ckpt.pt"), "--encoder_model_path", str(t5),
                 *codec_args(world), "--text", "alpha.", "--out", str(wav), "--max_tokens", "20"]) == 0
    assert sf.info(wav).frames == 20 * 320


def test_fine_tune_from_an_original_checkpoint_needs_its_text_table(world, tmp_path, capsys):
    from safetensors.torch import save_file

    from llmvox.model.checkpoint import save_llmvox_checkpoint
    from llmvox.model.gpt import GPT, GPTConfig

    original = tmp_path / "ckpt_original.pt"  # the original layout: no text table inside
    save_llmvox_checkpoint(original, GPT(GPTConfig(n_layer=2, n_head=2, n_embd=96, block_size=256, vocab_size=512)))
    base = ["train", "--data_path", str(world["cache"]), "--init_from", str(original), "--max_iters", "2", *TINY,
            "--eval_interval", "0"]
    assert main([*base, "--out_dir", str(tmp_path / "a")]) == 2
    assert "--encoder_model_path" in capsys.readouterr().err
    assert main(["convert", "--llmvox_checkpoint_path", str(original), *codec_args(world), "--out",
                 str(tmp_path / "bundle")]) == 2
    assert "no learned text table" in capsys.readouterr().err
    t5 = tmp_path / "t5"
    t5.mkdir()
    save_file({"shared.weight": torch.randn(384, 64)}, str(t5 / "model.safetensors"))
    assert main([*base, "--out_dir", str(tmp_path / "b"), "--encoder_model_path", str(t5)]) == 0
    assert torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)["iter_num"] == 2


def test_convert_takes_a_bundle_from_a_training_checkpoint(world, tmp_path, capsys):
    """`llmvox convert` without a T5 folder = the bundle `--export_bundle` writes; the codec must match."""
    from safetensors.torch import load_file

    out, exported, converted = tmp_path / "run", tmp_path / "exported", tmp_path / "converted"
    assert main(["train", "--data_path", str(world["cache"]), "--out_dir", str(out), "--max_iters", "3", *TINY,
                 "--eval_interval", "0", *codec_args(world), "--export_bundle", str(exported)]) == 0
    assert main(["convert", "--llmvox_checkpoint_path", str(out / "ckpt.pt"), *codec_args(world), "--out",
                 str(converted), "--name", "exported"]) == 0
    via_folder = tmp_path / "via_folder"  # the codec taken from a bundle / milestone folder
    assert main(["convert", "--llmvox_checkpoint_path", str(out / "ckpt.pt"), "--codec", str(exported), "--out",
                 str(via_folder)]) == 0
    for other_bundle in (converted, via_folder):
        for part in ("decoder.safetensors", "codec.safetensors"):
            a, b = load_file(str(exported / part)), load_file(str(other_bundle / part))
            assert a.keys() == b.keys()
            assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["convert", "--llmvox_checkpoint_path", str(out / "ckpt.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "give the codec" in capsys.readouterr().err
    assert (json.loads((converted / "config.json").read_text())["training"]["iter_num"] == 3)
    other = tmp_path / "other"
    save_codec(make_codec(1, world["audios"]), other)
    assert main(["convert", "--llmvox_checkpoint_path", str(out / "ckpt.pt"), "--wav_config_path",
                 str(other / "codec.yaml"), "--wav_model_path", str(other / "codec.ckpt"), "--out",
                 str(tmp_path / "bad")]) == 2
    assert "was trained on codec" in capsys.readouterr().err


def test_a_bundle_warm_starts_training_with_its_weights(world, tmp_path, capsys):
    """--init_from BUNDLE_DIR: a committed milestone continues when the full checkpoint is gone."""
    import re

    out, bundle = tmp_path / "run", tmp_path / "bundle"
    common = [*TINY, "--val_fraction", "0.3", "--dtype", "float32", "--progress", "False"]
    assert main(["train", "--data_path", str(world["cache"]), "--out_dir", str(out), "--max_iters", "20",
                 "--learning_rate", "3e-3", "--eval_interval", "0", *common, *codec_args(world),
                 "--export_bundle", str(bundle)]) == 0

    def held_out(*args: str) -> float:
        capsys.readouterr()
        assert main(["train", "--data_path", str(world["cache"]), "--eval_only", *common, *args]) == 0
        return float(re.search(r"held-out loss ([0-9.]+)", capsys.readouterr().err).group(1))

    trained = held_out("--out_dir", str(tmp_path / "e1"), "--init_from", str(out / "ckpt.pt"))
    warm = held_out("--out_dir", str(tmp_path / "e2"), "--init_from", str(bundle))
    fresh = held_out("--out_dir", str(tmp_path / "e3"))
    assert warm == trained != fresh
    assert main(["train", "--data_path", str(world["cache"]), "--out_dir", str(tmp_path / "more"), "--init_from",
                 str(bundle), "--max_iters", "2", "--eval_interval", "0", *common]) == 0


def test_resume_after_sigint_reproduces_the_uninterrupted_run(world, tmp_path):
    args = [sys.executable, "-m", "llmvox", "train", "--data_path", str(world["cache"]), "--max_iters", "150", *TINY,
            "--batch_size", "2", "--gradient_accumulation_steps", "2", "--learning_rate", "3e-3",
            "--warmup_iters", "5", "--eval_interval", "50", "--log_interval", "1", "--val_fraction", "0.2",
            "--dropout", "0.1", "--dtype", "bfloat16"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    full, part = tmp_path / "full", tmp_path / "part"
    subprocess.run([*args, "--out_dir", str(full)], check=True, env=env, capture_output=True)
    proc = subprocess.Popen([*args, "--out_dir", str(part)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = part / "train_log.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 5):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()[-2000:]
    stopped_at = torch.load(part / "ckpt.pt", weights_only=True)["iter_num"]
    assert 0 < stopped_at < 150
    subprocess.run([*args, "--out_dir", str(part), "--init_from", "resume"], check=True, env=env, capture_output=True)
    a = torch.load(full / "ckpt.pt", weights_only=True)
    b = torch.load(part / "ckpt.pt", weights_only=True)
    assert a["iter_num"] == b["iter_num"] == 150
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["text_embedding"], b["text_embedding"])
    def timeless(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]

    assert timeless(read_log(part / "train_log.jsonl")) == timeless(read_log(full / "train_log.jsonl"))


@pytest.mark.slow
@pytest.mark.parametrize("aux", [(), ("--phoneme_ctc_weight", "1", "--phoneme_ctc_layer", "0")],
                         ids=["decoder", "with_phoneme_ctc"])
def test_two_process_ddp_matches_one_process(world, tmp_path, aux):
    if aux:
        pytest.importorskip("hibari")
    common = ["--data_path", str(world["cache"]), "--max_iters", "6", *TINY, "--batch_size", "2",
              "--gradient_accumulation_steps", "4", "--learning_rate", "3e-3", "--warmup_iters", "2",
              "--eval_interval", "3", "--log_interval", "1", "--val_fraction", "0.2", "--dtype", "float32", *aux]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(REPO / "train.py"), *common, "--out_dir", str(ddp)], env=env, capture_output=True)
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    assert "2 process(es)" in run.stderr.decode()
    assert main(["train", *common, "--out_dir", str(single)]) == 0
    a = torch.load(ddp / "ckpt.pt", weights_only=True)
    b = torch.load(single / "ckpt.pt", weights_only=True)
    assert a["llmvox"]["world_size"] == 2 and len(a["train_state"]["rng"]) == 2
    for key in b["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a["text_embedding"], b["text_embedding"], rtol=1e-5, atol=1e-6)
    if aux:  # the head outside the model gets the same averaged gradient as the model
        for key in b["phoneme_ctc"]["head"]:
            torch.testing.assert_close(a["phoneme_ctc"]["head"][key], b["phoneme_ctc"]["head"][key],
                                       rtol=1e-5, atol=1e-6)
    la = [r for r in read_log(ddp / "train_log.jsonl") if "loss" in r]
    lb = [r for r in read_log(single / "train_log.jsonl") if "loss" in r]
    assert [r["loss"] for r in la] == pytest.approx([r["loss"] for r in lb], rel=1e-5)
    if aux:  # logged as the mean over both processes' micro-batches, like the loss
        assert [r["phoneme_ctc"] for r in la] == pytest.approx([r["phoneme_ctc"] for r in lb], rel=1e-4)


@pytest.mark.slow
def test_tensorboard_and_wandb_offline_logs(world, tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_SILENT="true")
    env.pop("WANDB_API_KEY", None)
    run = subprocess.run([sys.executable, "-m", "llmvox", "train", "--data_path", str(world["cache"]), "--out_dir",
                          str(out), "--max_iters", "2", *TINY, "--log_interval", "1", "--tensorboard_log=True",
                          "--wandb_log=True", "--wandb_run_name", "t"], env=env, capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert list((out / "wandb").glob("offline-run-*"))


def test_user_errors_are_one_line(world, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--data_path", str(world["cache"]), "--out_dir", str(out), "--max_iters", "1", *TINY]
    assert main([*base, "--init_from", "resume"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(base) == 0
    assert main(base) == 2  # would overwrite the checkpoint
    assert "--init_from=resume" in capsys.readouterr().err
    assert main([*base, "--overwrite", "--n_embd", "16", "--n_head", "2"]) == 2
    assert "no room for the text embedding" in capsys.readouterr().err
    other = tmp_path / "other"
    save_codec(make_codec(1, world["audios"]), other)
    assert main([*base, "--overwrite", "--wav_config_path", str(other / "codec.yaml"), "--wav_model_path",
                 str(other / "codec.ckpt")]) == 2
    assert "cannot be mixed" in capsys.readouterr().err
    assert main(["train", "--data_path", str(world["data"]), "--out_dir", str(tmp_path / "r2")]) == 2
    assert "give the codec" in capsys.readouterr().err
    assert main([*base, "--overwrite", "--gradient_accumulation_steps", "0"]) == 2
    assert main([*base, "--overwrite", "--max_codes", "1"]) == 2
    assert "no training utterance has at most --max_codes=1 codes" in capsys.readouterr().err


def test_max_codes_trains_on_the_short_utterances_only(world, tmp_path, capsys):
    from llmvox.train.cache import CodeCache

    lengths = np.sort(CodeCache(world["cache"]).code_lengths)
    limit = int(lengths[len(lengths) // 2])
    rc = main(["train", "--data_path", str(world["cache"]), "--out_dir", str(tmp_path / "run"), "--max_iters", "1",
               *TINY, "--val_fraction", "0", "--max_codes", str(limit), "--progress", "False"])
    assert rc == 0
    kept = int((lengths <= limit).sum())
    assert 0 < kept < len(lengths)
    assert f"curriculum: {kept} training utterances of at most {limit} codes" in capsys.readouterr().err


def test_bench_train_reports_tokens_and_matmul(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "train", "--json", str(out), "--sizes", "tiny", "--steps", "1", "--seq_len", "16",
                 "--batch_size", "2", "--threads", "1"]) == 0
    result = json.loads(out.read_text())
    assert result["matmul_flops_per_s"]["float32"] > 1e8
    row = result["sizes"][0]
    assert row["size"] == "tiny" and row["n_layer"] == 4
    for dtype in ("float32", "bfloat16"):
        assert row[dtype]["tokens_per_s"] > 0 and 0 < row[dtype]["mfu_vs_measured_matmul"] < 2
    assert "load_average_before" in result["machine"]


def test_guided_attention_trains_the_named_heads_toward_the_text_diagonal(world, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--data_path", str(world["cache"]), "--out_dir", str(out), "--max_iters", "60", *TINY,
               "--batch_size", "4", "--learning_rate", "3e-3", "--warmup_iters", "5", "--val_fraction", "0",
               "--log_interval", "5", "--dtype", "float32", "--guided_attn_heads", "1.0,1.1",
               "--guided_attn_weight", "2"])
    assert rc == 0
    assert "guided attention on heads 1.0,1.1" in capsys.readouterr().err
    rows = [r for r in read_log(out / "train_log.jsonl") if "loss" in r]
    guided = [r["guided_attn"] for r in rows]
    assert 0 < guided[-1] < 0.6 * guided[0]
    # the checkpoint is an ordinary one: nothing of the guide is stored in the model
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["config"]["guided_attn_heads"] == "1.0,1.1"
    assert not any("guide" in k for k in ckpt["model"])
    assert main(["train", "--data_path", str(world["cache"]), "--out_dir", str(tmp_path / "bad"), "--max_iters", "1",
                 *TINY, "--val_fraction", "0", "--guided_attn_heads", "2.0"]) == 2
    assert "--guided_attn_heads 2.0: the decoder has 2 layers of 2 heads" in capsys.readouterr().err
    for bad, message in ((["--guided_attn_sigma", "0"], "--guided_attn_sigma > 0"),
                         (["--compile"], "does not work with --compile")):
        assert main(["train", "--data_path", str(world["cache"]), "--out_dir", str(tmp_path / "bad"), "--max_iters",
                     "1", *TINY, "--val_fraction", "0", "--guided_attn_heads", "1.0", *bad]) == 2
        assert message in capsys.readouterr().err


def test_phoneme_ctc_trains_a_head_kept_outside_the_model_and_resumes_exactly(world, tmp_path, capsys):
    pytest.importorskip("hibari")
    common = ["train", "--data_path", str(world["cache"]), *TINY, "--batch_size", "4", "--learning_rate", "3e-3",
              "--warmup_iters", "5", "--lr_decay_iters", "40", "--val_fraction", "0.3", "--log_interval", "5",
              "--dtype", "float32", "--eval_interval", "20", "--phoneme_ctc_weight", "1", "--phoneme_ctc_layer", "0"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main([*common, "--out_dir", str(full), "--max_iters", "40"]) == 0
    assert "phoneme CTC on layer 0 (weight 1.0)" in capsys.readouterr().err
    log = read_log(full / "train_log.jsonl")
    ctc = [r["phoneme_ctc"] for r in log if "loss" in r]
    assert 0 < ctc[-1] < 0.5 * ctc[0]
    held_out = [r["val/phoneme_ctc"] for r in log if "val/loss" in r]
    assert len(held_out) == 3 and held_out[-1] < held_out[0]
    ckpt = torch.load(full / "ckpt.pt", weights_only=True)
    assert ckpt["phoneme_ctc"]["layer"] == 0 and "weight" in ckpt["phoneme_ctc"]["head"]
    assert not any("phoneme" in k or "ctc" in k for k in ckpt["model"])  # the decoder's format is unchanged
    # stop at 20, resume to 40: the same model and head as the uninterrupted run
    assert main([*common, "--out_dir", str(part), "--max_iters", "20"]) == 0
    assert main([*common, "--out_dir", str(part), "--max_iters", "40", "--init_from", "resume"]) == 0
    assert "head resumed" in capsys.readouterr().err
    resumed = torch.load(part / "ckpt.pt", weights_only=True)
    for a, b in ((ckpt["model"], resumed["model"]), (ckpt["phoneme_ctc"]["head"], resumed["phoneme_ctc"]["head"])):
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # a different layer cannot continue that head; bad flags are one-line errors
    assert main([*common, "--out_dir", str(part), "--max_iters", "41", "--init_from", "resume",
                 "--phoneme_ctc_layer", "1"]) == 2
    assert "reads layer 0, not 1" in capsys.readouterr().err
    for bad, message in ((["--phoneme_ctc_weight", "-1"], "--phoneme_ctc_weight must be >= 0"),
                         (["--compile"], "does not work with --compile"),
                         (["--phoneme_ctc_layer", "2"], "the decoder has layers 0..1")):
        assert main([*common, "--out_dir", str(tmp_path / "bad"), "--max_iters", "1", *bad]) == 2
        assert message in capsys.readouterr().err


def test_a_bundle_keeps_its_phoneme_ctc_head_and_a_warm_start_without_one_fits_it_alone(world, tmp_path, capsys):
    pytest.importorskip("hibari")
    from llmvox.train.checkpoints import CTC_HEAD_FILE

    common = ["train", "--data_path", str(world["cache"]), *TINY, "--batch_size", "4", "--learning_rate", "3e-3",
              "--warmup_iters", "5", "--val_fraction", "0.3", "--log_interval", "5", "--dtype", "float32",
              "--eval_interval", "20", "--phoneme_ctc_weight", "1", "--phoneme_ctc_layer", "0", *codec_args(world)]
    bundle = tmp_path / "bundle"
    assert main([*common, "--out_dir", str(tmp_path / "run"), "--max_iters", "40", "--export_bundle", str(bundle)]) == 0
    trained = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert json.loads((bundle / "config.json").read_text())["training"]["phoneme_ctc_layer"] == 0
    from safetensors.torch import load_file

    kept = load_file(bundle / CTC_HEAD_FILE)
    for key, value in trained["phoneme_ctc"]["head"].items():
        assert torch.equal(kept[key], value)
    capsys.readouterr()
    # a warm start from the bundle continues that head (and does not fit a new one)
    warm = tmp_path / "warm"
    assert main([*common, "--out_dir", str(warm), "--max_iters", "0", "--init_from", str(bundle),
                 "--phoneme_ctc_head_warmup", "30"]) == 0
    err = capsys.readouterr().err
    assert "head from the warm start" in err and "fitted alone" not in err
    assert torch.equal(torch.load(warm / "ckpt.pt", weights_only=True)["phoneme_ctc"]["head"]["weight"],
                       trained["phoneme_ctc"]["head"]["weight"])
    # without the head file, --phoneme_ctc_head_warmup fits a new head on the frozen decoder first
    (bundle / CTC_HEAD_FILE).unlink()
    fresh = tmp_path / "fresh"
    assert main([*common, "--out_dir", str(fresh), "--max_iters", "0", "--init_from", str(bundle),
                 "--phoneme_ctc_head_warmup", "30"]) == 0
    line = next(s for s in capsys.readouterr().err.splitlines() if "fitted alone" in s)
    before, after = (float(x) for x in line.split(": ")[-1].split(" nats")[0].split(" -> "))
    assert "for 30 steps" in line and after < 0.7 * before
    fitted = torch.load(fresh / "ckpt.pt", weights_only=True)
    for key, value in trained["model"].items():  # the decoder did not move; the head did
        torch.testing.assert_close(fitted["model"][key], value, atol=0, rtol=0)
    assert not torch.equal(fitted["phoneme_ctc"]["head"]["weight"], trained["phoneme_ctc"]["head"]["weight"])
    assert main([*common, "--out_dir", str(tmp_path / "bad"), "--max_iters", "1", "--phoneme_ctc_weight", "0",
                 "--phoneme_ctc_head_warmup", "5"]) == 2
    assert "--phoneme_ctc_head_warmup needs the phoneme CTC target" in capsys.readouterr().err


def test_a_phoneme_voice_trains_on_its_front_ends_ids_and_its_bundle_says_so(world, tmp_path, capsys):
    pytest.importorskip("hibari")
    from llmvox.api import LLMVoX
    from llmvox.text.frontend import PhonemeFrontend
    from llmvox.train.cache import CodeCache
    from llmvox.train.text_ids import TEXT_IDS_FILE, FrontendCache

    cache = CodeCache(world["cache"])
    view = FrontendCache(cache, PhonemeFrontend(), store=tmp_path / TEXT_IDS_FILE)
    for i in range(len(cache)):  # the cache keeps bytes; the run reads each transcript as inference streams it
        assert list(view.text_ids(i)) == PhonemeFrontend().encode_words(cache.text(i).split())
        assert list(view.text_ids(i)) != list(cache.text_ids(i)) and np.array_equal(view.codes(i), cache.codes(i))
    common = ["train", "--data_path", str(world["cache"]), *TINY, "--batch_size", "4", "--learning_rate", "3e-3",
              "--warmup_iters", "5", "--val_fraction", "0", "--log_interval", "5", "--dtype", "float32",
              "--eval_interval", "10", "--text_frontend", "phonemes", *codec_args(world)]
    out, bundle = tmp_path / "run", tmp_path / "bundle"
    assert main([*common, "--out_dir", str(out), "--max_iters", "10", "--export_bundle", str(bundle)]) == 0
    assert "text front-end phonemes" in capsys.readouterr().err
    meta = torch.load(out / "ckpt.pt", weights_only=True)["llmvox"]["text_frontend"]
    assert meta == PhonemeFrontend().config()
    assert json.loads((bundle / "config.json").read_text())["text_frontend"] == meta
    voice = LLMVoX.from_bundle(bundle)
    assert voice.frontend.kind == "phonemes"
    ids = PhonemeFrontend().encode_words(["alpha", "bravo."])
    assert voice.generate("alpha bravo.").text_ids[:len(ids)] == ids
    # a run keeps the front-end it started with
    assert main([*common[:-4], "--text_frontend", "byt5", *codec_args(world), "--out_dir", str(out),
                 "--max_iters", "12", "--init_from", "resume"]) == 2
    assert "trained with the phonemes text front-end, not --text_frontend byt5" in capsys.readouterr().err
    assert main([*common, "--out_dir", str(tmp_path / "bad"), "--max_iters", "1", "--phoneme_ctc_after_text",
                 "True"]) == 2
    assert "--phoneme_ctc_after_text needs the phoneme CTC target" in capsys.readouterr().err
