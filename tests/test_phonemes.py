"""Phoneme CTC: the teacher's g2p as targets, the head's loss on a tiny decoder, and what it scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmvox.errors import LLMVoXError
from llmvox.model.gpt import GPT, GPTConfig
from llmvox.text.tokenizer import encode_chunk, encode_words
from llmvox.train.phonemes import BLANK, PhonemeCTC, phoneme_table, text_of

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
    assert float(ctc.loss(np.array([1, 2]), steps)) == 0.0  # nothing to score
    with ctc.recording():
        gpt.transformer.h[1](x)
    only_first = float(ctc.loss(np.array([0, 2]), steps))
    with ctc.recording():
        gpt.transformer.h[1](x[:1])
    assert only_first == pytest.approx(float(ctc.loss(np.array([0]), steps[:1])), rel=1e-5)
    with pytest.raises(RuntimeError, match="recording"):
        ctc.loss(np.array([0]), steps[:1])
    with pytest.raises(LLMVoXError, match="layers 0..1"):
        PhonemeCTC(gpt, 2, phonemes, np.ones(3, bool), vocab_size=20)
