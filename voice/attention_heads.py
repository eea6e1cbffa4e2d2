"""Which decoder heads read the text in order? For each layer.head, on 32 held-out utterances: the
guided-attention penalty (mean attention mass off the text diagonal, sigma 0.2; lower = closer to
reading position t * N / T) and the share of attention on text steps (j < N). The heads to guide
(`--guided_attn_heads`) are the ones already closest to reading.

    .venv/bin/python voice/attention_heads.py CKPT_OR_BUNDLE [CACHE_DIR]
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from llmvox.model.gpt import GPT, GPTConfig
from llmvox.model.speech_decoder import SpeechDecoder
from llmvox.text.tokenizer import PAD_ID
from llmvox.train.alignment import GuidedAttention, guide_weights
from llmvox.train.batching import IGNORE_INDEX, make_batch
from llmvox.train.cache import CodeCache
from llmvox.train.checkpoints import read_training_checkpoint
from llmvox.train.training_data import is_validation_id


def main(ckpt_path: str, cache_dir: str = "/work/cache/voice/cache", n: int = 32) -> None:
    torch.set_num_threads(1)
    ckpt = read_training_checkpoint(ckpt_path)
    cache = CodeCache(cache_dir)
    config = GPTConfig.from_dict(dict(ckpt["model_args"]))
    gpt = GPT(config)
    gpt.load_state_dict(ckpt["model"])
    decoder = SpeechDecoder(gpt, ckpt["text_embedding"].float(), torch.from_numpy(cache.codebook()).float()).eval()
    held_out = [i for i, utt in enumerate(cache.ids) if is_validation_id(utt, 0.02)]
    chosen = np.random.default_rng(0).choice(held_out, min(n, len(held_out)), replace=False)
    everything = [(layer, head) for layer in range(config.n_layer) for head in range(config.n_head)]
    guide = GuidedAttention(gpt, everything)
    penalty = np.zeros((config.n_layer, config.n_head))
    on_text = np.zeros_like(penalty)
    steps = 0
    with torch.no_grad():
        for start in range(0, len(chosen), 8):
            group = chosen[start : start + 8]
            batch = make_batch([cache.codes(int(i)) for i in group], [cache.text_ids(int(i)) for i in group],
                               max_len=config.block_size, eoa_id=cache.eoa_id)
            with guide.recording():
                decoder(batch.text_ids, batch.prev_codes)
            num_steps = (batch.targets != IGNORE_INDEX).sum(1)
            weights = guide_weights(batch.text_ids, num_steps, 0.2)
            is_text = (batch.text_ids != PAD_ID).float()[:, None, None, :]
            real = (batch.targets != IGNORE_INDEX).float()[:, None, :]
            for layer in range(config.n_layer):
                probs = guide.attention(layer)
                penalty[layer] += (probs * weights[:, None]).sum((0, 2, 3)).numpy()
                on_text[layer] += ((probs * is_text).sum(-1) * real).sum((0, 2)).numpy()
            steps += int(num_steps.sum())
    print(f"step {ckpt.get('iter_num')}: off-diagonal mass (lower = reads in order) | share on text steps")
    for layer in range(config.n_layer):
        cells = "  ".join(f"{layer}.{h} {penalty[layer, h] / steps:.2f}|{on_text[layer, h] / steps:.2f}"
                          for h in range(config.n_head))
        print("  " + cells)
    best = np.dstack(np.unravel_index(np.argsort(penalty, axis=None), penalty.shape))[0][:4]
    print("closest to reading:", ",".join(f"{a}.{b}" for a, b in best))


if __name__ == "__main__":
    main(*sys.argv[1:3])
