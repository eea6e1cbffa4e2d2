"""Guided attention: the penalty map, the recomputed head attention, and its effect on a tiny decoder."""

from __future__ import annotations

import pytest
import torch

from llmvox.errors import LLMVoXError
from llmvox.model.gpt import GPT, GPTConfig
from llmvox.text.tokenizer import PAD_ID
from llmvox.train.alignment import GuidedAttention, guide_weights, head_attention, parse_heads
from llmvox.train.batching import IGNORE_INDEX

CONFIG = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=64, vocab_size=16)


def test_parse_heads_checks_the_decoder_sizes():
    assert parse_heads("1.3, 0.0,1.3", 2, 4) == [(0, 0), (1, 3)]
    assert parse_heads("", 2, 4) == []
    with pytest.raises(LLMVoXError, match="2 layers of 4 heads"):
        parse_heads("2.0", 2, 4)
    with pytest.raises(LLMVoXError, match="LAYER.HEAD"):
        parse_heads("1", 2, 4)


def test_penalty_is_zero_on_the_diagonal_and_near_one_far_from_it():
    text = torch.full((1, 20), PAD_ID)
    text[0, :4] = 50  # N = 4 text steps, T = 20 audio steps
    w = guide_weights(text, torch.tensor([20]), g=0.2)
    # audio step t speaks text step ~ t * 4 / 20: step 12 -> text step 2 (centres 12.5/20 = 2.5/4)
    assert w[0, 12, 2] == pytest.approx(0.0, abs=1e-6)
    assert w[0, 12, 0] > 0.5 and w[0, 19, 0] > 0.9
    assert w[0, 2, 0] < 0.1
    # audio steps beyond the utterance carry no penalty
    w = guide_weights(text, torch.tensor([15]), g=0.2)
    assert w[0, 15:].abs().sum() == 0 and w[0, :15].sum() > 0


def test_recomputed_head_attention_is_the_layer_attention():
    """All heads' probabilities times their values, projected, give the layer's own output."""
    torch.manual_seed(0)
    gpt = GPT(CONFIG).eval()
    x = torch.randn(2, 10, CONFIG.n_embd)
    attn = gpt.transformer.h[1].attn
    probs = head_attention(gpt, 1, x, [0, 1, 2, 3])
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 10), atol=1e-6)
    assert probs[0, :, 3, 4:].abs().max() == 0  # causal
    v = attn.c_attn(x).split(CONFIG.n_embd, dim=2)[2].view(2, 10, 4, 8).transpose(1, 2)
    y = (probs @ v).transpose(1, 2).reshape(2, 10, CONFIG.n_embd)
    assert torch.allclose(attn.c_proj(y), attn(x), atol=1e-5)
    # a subset of heads is the same rows
    assert torch.allclose(head_attention(gpt, 1, x, [2]), probs[:, 2:3], atol=1e-6)


def test_guided_loss_pulls_a_head_onto_the_diagonal_and_leaves_others_free():
    torch.manual_seed(0)
    gpt = GPT(CONFIG)
    b, t, n = 4, 40, 8
    x = torch.randn(b, t, CONFIG.n_embd)
    text = torch.full((b, t), PAD_ID)
    text[:, :n] = 60
    targets = torch.zeros(b, t, dtype=torch.long)
    targets[:, 36:] = IGNORE_INDEX
    guide = GuidedAttention(gpt, [(1, 2)], sigma=0.2)
    opt = torch.optim.Adam(gpt.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        with guide.recording():
            gpt(x)
        loss = guide.loss(text, targets, IGNORE_INDEX)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[0] > 0.5 and losses[-1] < 0.5 * losses[0]
    # in layer 1 the guide's gradient reaches head 2's query and key rows only (not other heads, not values)
    grads = gpt.transformer.h[1].attn.c_attn.weight
    guide2 = GuidedAttention(gpt, [(1, 2)])
    gpt.zero_grad()
    with guide2.recording():
        gpt(x)
    guide2.loss(text, targets, IGNORE_INDEX).backward()
    rows = grads.grad.abs().sum(1)
    head_rows = slice(2 * 8, 3 * 8)
    assert rows[head_rows].sum() > 0 and rows[CONFIG.n_embd + 16:CONFIG.n_embd + 24].sum() > 0
    rows[head_rows] = 0
    rows[CONFIG.n_embd + 16:CONFIG.n_embd + 24] = 0
    assert rows.sum() == 0
