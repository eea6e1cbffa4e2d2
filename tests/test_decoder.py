"""The speech decoder, text ids and embedding table against the original code's outputs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from llmvox.engine.generate import generate, split_segments
from llmvox.errors import LLMVoXError
from llmvox.model.checkpoint import load_llmvox_checkpoint, save_llmvox_checkpoint
from llmvox.model.embedding import extend_with_special_rows, load_t5_text_embedding
from llmvox.model.gpt import GPT, GPTConfig
from llmvox.model.speech_decoder import NO_CODE, SpeechDecoder
from llmvox.text.tokenizer import PAD_ID, decode_ids, encode_chunk, encode_words

CHUNKS = ["Hello", "world,", "this", "is", "a", "test."]


@pytest.fixture(scope="module")
def reference(parity_dir):
    return dict(np.load(parity_dir / "reference.npz"))


@pytest.fixture(scope="module")
def parity_decoder(parity_dir) -> SpeechDecoder:
    torch.set_num_threads(1)
    gpt = load_llmvox_checkpoint(parity_dir / "llmvox.pt")
    table = load_t5_text_embedding(parity_dir / "byt5_g2p")
    state = torch.load(parity_dir / "wavtokenizer.ckpt", weights_only=True)["state_dict"]
    codebook = state["feature_extractor.encodec.quantizer.vq.layers.0._codebook.embed"]
    return SpeechDecoder(gpt, table, codebook).eval()


def test_chunk_ids_match_the_original():
    assert encode_chunk("Hello") == [75, 104, 111, 111, 114, 1]
    assert encode_chunk("world,") == [122, 114, 117, 111, 103, 47, 1]
    assert encode_chunk("test.", ends_sentence=True) == [119, 104, 118, 119, 49, 1, 385]
    assert encode_chunk("é") == [0xC3 + 3, 0xA9 + 3, 1]
    assert decode_ids(encode_words(["Hi", "there."])) == "Hi there. |"


def test_text_ids_fed_match_the_original(reference):
    ids = [i for n, c in enumerate(CHUNKS) for i in encode_chunk(c, ends_sentence=n == len(CHUNKS) - 1)]
    ids += [PAD_ID] * (120 - len(ids))
    assert ids == reference["gpt_text_ids"].tolist()


def test_embedding_rows_are_means_and_both_layouts_agree(parity_dir):
    table = load_t5_text_embedding(parity_dir / "byt5_g2p")
    legacy = load_t5_text_embedding(parity_dir / "byt5_g2p_bin")
    assert table.shape == (386, 256)
    assert torch.equal(table, legacy)
    torch.testing.assert_close(table[384], table[:384].mean(0))
    torch.testing.assert_close(table[385], table[:385].mean(0))
    assert extend_with_special_rows(torch.zeros(386, 4)).shape == (386, 4)


def test_embedding_from_encoder_key_only(parity_dir, tmp_path):
    from safetensors.torch import save_file

    table = load_t5_text_embedding(parity_dir / "byt5_g2p")
    save_file({"encoder.embed_tokens.weight": table[:384].contiguous()}, str(tmp_path / "model.safetensors"))
    assert torch.equal(load_t5_text_embedding(tmp_path), table)


def test_greedy_codes_and_logits_match_the_original(parity_decoder, reference):
    gen = generate(parity_decoder, CHUNKS, max_tokens=120, keep_logits=True)
    assert gen.text_ids == reference["gpt_text_ids"].tolist()
    assert gen.codes == reference["gpt_codes"].tolist()
    logits = np.stack(gen.logits)
    assert logits.shape == (120, 4096)
    assert np.abs(logits - reference["gpt_logits"]).max() < 1e-4


def test_exact_gelu_would_be_caught(parity_decoder, reference, monkeypatch):
    """The logits tolerance is tight enough to tell the tanh GELU from the exact one."""
    import llmvox.model.gpt as gpt_module

    monkeypatch.setattr(gpt_module, "gelu_tanh", lambda x: torch.nn.functional.gelu(x))
    gen = generate(parity_decoder, CHUNKS, max_tokens=20, keep_logits=True)
    assert np.abs(np.stack(gen.logits) - reference["gpt_logits"][:20]).max() > 1e-4


def test_batched_streams_at_different_positions_match_single(parity_decoder, reference):
    """Three streams started at different times share one batched step and each gets the reference."""
    ids = reference["gpt_text_ids"].tolist()
    starts = [0, 7, 19]
    cache = parity_decoder.new_cache(3, 8)  # small on purpose: growth is exercised
    prev = [NO_CODE] * 3
    out: list[list[int]] = [[], [], []]
    for t in range(120 + max(starts)):
        pos = [min(max(t - s, 0), 119) for s in starts]
        logits = parity_decoder.step(torch.tensor([ids[p] for p in pos]), torch.tensor(prev), torch.tensor(pos), cache)
        for b, s in enumerate(starts):
            if 0 <= t - s < 120:
                prev[b] = int(logits[b].argmax())
                out[b].append(prev[b])
    for codes in out:
        assert codes == reference["gpt_codes"].tolist()


def test_compiled_prefix_and_roundtrip(parity_dir, tmp_path, parity_decoder, reference):
    ckpt = torch.load(parity_dir / "llmvox.pt", weights_only=True)
    ckpt["model"] = {"_orig_mod." + k: v for k, v in ckpt["model"].items()}
    torch.save(ckpt, tmp_path / "compiled.pt")
    gpt = load_llmvox_checkpoint(tmp_path / "compiled.pt")
    save_llmvox_checkpoint(tmp_path / "again.pt", gpt, iter_num=5)
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert again["iter_num"] == 5 and again["model_args"]["n_layer"] == 1
    reloaded = load_llmvox_checkpoint(tmp_path / "again.pt")
    for k, v in parity_decoder.gpt.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v)


def test_released_size_decoder_loads(tmp_path):
    config = GPTConfig(n_layer=4, n_head=8, n_embd=768, block_size=8192, bias=False, vocab_size=4096)
    gpt = GPT(config)
    assert 29e6 < gpt.num_params() < 33e6  # "~30M parameters"
    save_llmvox_checkpoint(tmp_path / "ckpt_english_tiny.pt", gpt)
    loaded = load_llmvox_checkpoint(tmp_path / "ckpt_english_tiny.pt")
    assert loaded.config.n_layer == 4 and loaded.config.block_size == 8192
    decoder = SpeechDecoder(loaded, torch.randn(386, 256), torch.randn(4096, 512))
    cache = decoder.new_cache(2, 4)
    logits = decoder.step(torch.tensor([75, 384]), torch.tensor([NO_CODE, 17]), torch.tensor([0, 9]), cache)
    assert logits.shape == (2, 4096) and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["model"].pop("lm_head.weight"), "missing keys: lm_head.weight"),
        (lambda c: c["model"].__setitem__("extra.weight", torch.zeros(1)), "unexpected keys: extra.weight"),
        (lambda c: c["model_args"].__setitem__("n_embd", 512), "wrong shapes"),
        (lambda c: c.pop("model_args"), "not an LLMVoX checkpoint"),
    ],
)
def test_bad_checkpoints_name_the_problem(parity_dir, tmp_path, mutate, message):
    ckpt = torch.load(parity_dir / "llmvox.pt", weights_only=True)
    mutate(ckpt)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(LLMVoXError, match=message):
        load_llmvox_checkpoint(tmp_path / "bad.pt")


def test_not_a_checkpoint_and_missing_paths(tmp_path, parity_dir):
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(LLMVoXError, match="not a readable PyTorch checkpoint"):
        load_llmvox_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(LLMVoXError, match="not found"):
        load_llmvox_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(LLMVoXError, match="not found"):
        load_t5_text_embedding(tmp_path / "nope")
    empty = tmp_path / "empty_t5"
    empty.mkdir()
    with pytest.raises(LLMVoXError, match="neither model.safetensors"):
        load_t5_text_embedding(empty)
    broken = tmp_path / "broken_t5"
    shutil.copytree(parity_dir / "byt5_g2p", broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(LLMVoXError, match="not a readable safetensors"):
        load_t5_text_embedding(broken)


def test_segments_follow_sentence_ends():
    assert split_segments("Hi there. How are you? Fine!".split()) == [["Hi", "there."], ["How", "are", "you?"], ["Fine!"]]
    assert split_segments(["no", "end"]) == [["no", "end"]]


def test_generation_stops_at_eoa(parity_decoder, monkeypatch):
    """With EOA the decoder's favourite code, each sentence ends right after its text."""
    real_step = parity_decoder.gpt.step

    def eoa_loving_step(*args, **kwargs):
        logits = real_step(*args, **kwargs)
        logits[:, 453] += 1000.0
        return logits

    monkeypatch.setattr(parity_decoder.gpt, "step", eoa_loving_step)
    gen = generate(parity_decoder, "Hi. Yo.".split())
    n_text = len(encode_chunk("Hi.", ends_sentence=True)) + len(encode_chunk("Yo.", ends_sentence=True))
    # while text is fed, 453 is an ordinary code; at the last text step it ends the sentence (and is dropped)
    assert gen.segments == 2
    assert len(gen.text_ids) == n_text
    assert len(gen.codes) == n_text - 2
    assert set(gen.codes) == {453}


def test_generation_respects_block_size(parity_decoder):
    gen = generate(parity_decoder, ["Hello."], max_tokens=None)
    assert len(gen.text_ids) == parity_decoder.config.block_size  # no EOA from random weights: capped


def test_decoder_bench_reports_rates_ceilings_and_profile():
    """`llmvox bench decoder`'s figures on a tiny model: every rate beside its ceiling, a step profile."""
    from llmvox.bench.decoder import run_decoder_bench

    tiny = GPTConfig(n_layer=2, n_head=2, n_embd=320, block_size=256, vocab_size=4096)
    result = run_decoder_bench(steps=10, batches=(1, 4, 16), config=tiny, log=lambda _: None)
    for name in ("fp32", "bf16"):
        figures = result[name]
        assert figures["batch1_tokens_per_s"] > 0 and figures["ceiling_tokens_per_s"] > 0
        for b in (4, 16):
            assert figures[f"batch{b}_ceiling_tokens_per_s"] > 0
            assert figures[f"batch{b}_fraction_of_ceiling"] == pytest.approx(
                figures[f"batch{b}_tokens_per_s"] / figures[f"batch{b}_ceiling_tokens_per_s"])
        for b in ("batch1", "batch16"):
            profile = figures["profile_ms_per_step"][b]
            assert profile["wall"] > 0 and profile["weights"] > 0 and profile["attention"] > 0
            assert sum(v for k, v in profile.items() if k != "wall") == pytest.approx(profile["wall"], rel=0.5)
    assert result["batch16_precision"] in ("fp32", "bf16")
    assert result["batch16_fraction_of_ceiling"] == result[result["batch16_precision"]]["batch16_fraction_of_ceiling"]
    assert result["speedup_vs_original_loop"] > 0


def test_decoder_bench_times_a_bundles_own_voice(tmp_path, capsys):
    """`llmvox bench decoder --bundle DIR` times that voice's decoder (its sizes, text table and codebook),
    with its own codec in the original loop; --bundle and --checkpoint together are refused."""
    import json

    from llmvox.bundle import save_bundle
    from llmvox.cli import main
    from llmvox.codec.config import CodecConfig
    from llmvox.codec.wavtokenizer import WavTokenizer

    torch.manual_seed(0)
    codec = WavTokenizer(CodecConfig(encoder_filters=4, encoder_dimension=32, encoder_lstm_layers=1,
                                     codebook_size=512, backbone_dim=32, backbone_intermediate_dim=64,
                                     backbone_layers=1)).eval()
    gpt = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=64, block_size=256, vocab_size=512)).eval()
    bundle = save_bundle(tmp_path / "voice", gpt, torch.randn(386, 32), codec)
    out = tmp_path / "bench.json"
    assert main(["bench", "decoder", "--bundle", str(bundle), "--with_codec", "--steps", "10", "--threads", "1",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["weights"] == f"bundle {bundle}"
    assert result["model"]["n_embd"] == 64 and result["model"]["vocab_size"] == 512
    assert result["single_stream_tokens_per_s"] > 0 and result["original_loop_tokens_per_s"] > 0
    assert main(["bench", "decoder", "--bundle", str(bundle), "--checkpoint", "x.pt", "--json", str(out)]) == 2
    assert "give --checkpoint or --bundle, not both" in capsys.readouterr().err
