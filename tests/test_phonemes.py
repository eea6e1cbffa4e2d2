"""Phoneme CTC: the teacher's g2p as targets, the head's loss on a tiny decoder, and what it scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmvox.errors import LLMVoXError
from llmvox.model.gpt import GPT, GPTConfig
from llmvox.text.tokenizer import encode_chunk, encode_words
from llmvox.text.tokenizer import plain_text as text_of
from llmvox.train import phonemes as phonemes_module
from llmvox.train.phonemes import BLANK, PhonemeCTC, phoneme_table

pytest.importorskip("hibari")

CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=128, vocab_size=16)


def test_text_of_reads_back_the_decoder_text():
    assert text_of(encode_words("Hello there, world.".split())) == "Hello there, world."
    ids = encode_chunk("Ça va?", ends_sentence=True) + encode_chunk("Oui.")
    assert text_of(ids) == "Ça va? Oui."


def test_g2p_targets_follow_the_pronunciation_not_the_spelling():
    (cat, bat, cough, off), vocab = phoneme_table(["cat", "bat", "cough", "off"])
    assert vocab > 100
    assert all(len(p) and BLANK not in p and p.max() < vocab for p in (cat, bat, cough, off))
    assert len(cat) == len(bat) and (cat != bat).sum() == 1  # one consonant apart
    assert cough[-2:].tolist() == off[-2:].tolist()  # "-ough" and "-off" end on the same sounds
    (empty,), _ = phoneme_table([""])
    assert len(empty) == 0


def test_phoneme_table_is_stored_and_reused_only_for_the_same_texts(tmp_path, monkeypatch):
    store = tmp_path / "phonemes.npz"
    texts = ["cat", "", "The quick brown fox."]
    table, vocab = phoneme_table(texts, store=store)
    assert store.exists()

    def no_g2p():
        raise AssertionError("the stored table should have been used")

    with monkeypatch.context() as m:
        m.setattr(phonemes_module, "G2P", no_g2p)
        again, again_vocab = phoneme_table(texts, store=store)
    assert again_vocab == vocab and [a.tolist() for a in again] == [t.tolist() for t in table]
    # other texts are computed afresh (and replace the store); a corrupt store is recomputed too
    other, _ = phoneme_table(["bat"], store=store)
    assert other[0].tolist() == phoneme_table(["bat"])[0][0].tolist() != table[0].tolist()
    store.write_bytes(b"not an npz")
    assert [a.tolist() for a in phoneme_table(texts, store=store)[0]] == [t.tolist() for t in table]


def _batch(steps: list[int], total: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(len(steps), total, CONFIG.n_embd)
    return x, torch.tensor(steps)


def test_ctc_head_learns_to_spell_the_phonemes_and_trains_the_decoder_below():
    torch.manual_seed(0)
    gpt = GPT(CONFIG)
    phonemes = [np.array([5, 6, 7, 5]), np.array([8, 9]), np.array([10, 11, 12])]
    ctc = PhonemeCTC(gpt, 0, phonemes, np.array([True, True, True]), vocab_size=20)
    x, steps = _batch([12, 8, 10], 12)
    params = [*gpt.parameters(), *ctc.head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    rows = np.array([0, 1, 2])
    losses = []
    for _ in range(60):
        with ctc.recording():
            gpt.transformer.h[0](x)
        loss = ctc.loss(rows, steps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.1 * losses[0]
    # the gradient reaches the recorded layer's weights
    assert gpt.transformer.h[0].attn.c_attn.weight.grad.abs().sum() > 0
    # greedy CTC decoding of the recorded states spells each utterance's phonemes
    with torch.no_grad(), ctc.recording():
        gpt.transformer.h[0](x)
        best = ctc.head(ctc._hidden).argmax(-1)
    for k, n in enumerate(steps.tolist()):
        path = best[k, :n].tolist()
        spelled = [p for i, p in enumerate(path) if p != BLANK and (i == 0 or p != path[i - 1])]
        assert spelled == phonemes[k].tolist()


def test_cropped_and_empty_utterances_are_not_scored():
    torch.manual_seed(0)
    gpt = GPT(CONFIG)
    phonemes = [np.array([5, 6]), np.array([], dtype=np.int64), np.array([7])]
    ctc = PhonemeCTC(gpt, 1, phonemes, np.array([True, True, False]), vocab_size=20)
    x, steps = _batch([6, 6], 6)
    with ctc.recording():
        gpt.transformer.h[1](x)
    assert float(ctc.loss(np.array([1, 2]), steps).detach()) == 0.0  # nothing to score
    with ctc.recording():
        gpt.transformer.h[1](x)
    only_first = float(ctc.loss(np.array([0, 2]), steps).detach())
    with ctc.recording():
        gpt.transformer.h[1](x[:1])
    assert only_first == pytest.approx(float(ctc.loss(np.array([0]), steps[:1]).detach()), rel=1e-5)
    with pytest.raises(RuntimeError, match="recording"):
        ctc.loss(np.array([0]), steps[:1])
    with pytest.raises(LLMVoXError, match="layers 0..1"):
        PhonemeCTC(gpt, 2, phonemes, np.ones(3, bool), vocab_size=20)


def test_the_head_can_read_only_the_steps_after_the_text():
    """With `first_steps` (each utterance's text length), the loss is the CTC of the states from that step
    on: the text steps, where a phoneme-reading decoder sees the targets, are not read."""
    torch.manual_seed(0)
    gpt = GPT(CONFIG)
    phonemes = [np.array([5, 6, 7]), np.array([8, 9])]
    after = PhonemeCTC(gpt, 0, phonemes, np.array([True, True]), vocab_size=20, first_steps=np.array([4, 2]))
    x, steps = _batch([12, 8], 12)
    with after.recording():
        gpt.transformer.h[0](x)
    hidden = after._hidden
    loss = float(after.loss(np.array([0, 1]), steps).detach())
    alone = PhonemeCTC(gpt, 0, phonemes, np.array([True, True]), vocab_size=20)
    alone.head.load_state_dict(after.head.state_dict())
    expected = []
    for row, (first, n) in enumerate([(4, 12), (2, 8)]):
        alone._hidden = hidden[row:row + 1, first:n]  # the same states, read from the first step on
        expected.append(float(alone.loss(np.array([row]), torch.tensor([n - first])).detach()))
    # ctc_loss's "mean" divides each sequence by its target length, then averages the batch
    assert loss == pytest.approx(sum(expected) / 2, rel=1e-4)
