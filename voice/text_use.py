"""How much does a decoder checkpoint use its text? Held-out cross-entropy (nats per code) of 64
held-out utterances with their own text, with another utterance's text, and with no text at all
(PAD only), and by position. A decoder that has learned to read would lose a lot without the right text.

    .venv/bin/python voice/text_use.py /work/cache/voice/decoder/ckpt.pt [/work/cache/voice/cache]
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

from llmvox.model.gpt import GPT, GPTConfig
from llmvox.model.speech_decoder import SpeechDecoder
from llmvox.text.tokenizer import PAD_ID
from llmvox.train.batching import IGNORE_INDEX, make_batch
from llmvox.train.cache import CodeCache
from llmvox.train.checkpoints import read_training_checkpoint
from llmvox.train.training_data import is_validation_id

BANDS = ((0, 50), (50, 100), (100, 200), (200, 300), (300, 1024))


def main(ckpt_path: str, cache_dir: str = "/work/cache/voice/cache", n: int = 64, val_fraction: float = 0.02) -> None:
    torch.set_num_threads(1)
    ckpt = read_training_checkpoint(ckpt_path)
    cache = CodeCache(cache_dir)
    gpt = GPT(GPTConfig.from_dict(dict(ckpt["model_args"])))
    gpt.load_state_dict(ckpt["model"])
    decoder = SpeechDecoder(gpt, ckpt["text_embedding"].float(), torch.from_numpy(cache.codebook()).float()).eval()
    held_out = [i for i, utt in enumerate(cache.ids) if is_validation_id(utt, val_fraction)]
    chosen = np.random.default_rng(0).choice(held_out, min(n, len(held_out)), replace=False)
    chosen = chosen[np.argsort(cache.code_lengths[chosen])]
    totals = {"own text": [0.0, 0], "another's text": [0.0, 0], "no text": [0.0, 0]}
    by_position = np.zeros((2, 1024))
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        for start in range(0, len(chosen), 8):
            group = chosen[start : start + 8]
            codes = [cache.codes(int(i)) for i in group]
            texts = [cache.text_ids(int(i)) for i in group]
            variants = {"own text": texts, "another's text": texts[1:] + texts[:1],
                        "no text": [np.array([PAD_ID])] * len(texts)}
            for name, given in variants.items():
                batch = make_batch(codes, given, max_len=1024, eoa_id=cache.eoa_id)
                logits = decoder(batch.text_ids, batch.prev_codes).float()
                loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE_INDEX,
                                       reduction="none").view(batch.targets.shape)
                real = batch.targets != IGNORE_INDEX
                totals[name][0] += float(loss[real].sum())
                totals[name][1] += int(real.sum())
                if name == "own text":
                    by_position[0, : loss.shape[1]] += (loss * real).sum(0).numpy()
                    by_position[1, : loss.shape[1]] += real.sum(0).numpy()
    print(f"step {ckpt.get('iter_num')}: held-out nats per code, {len(chosen)} utterances")
    for name, (total, count) in totals.items():
        print(f"  {name:15s} {total / count:.3f}")
    for lo, hi in BANDS:
        count = by_position[1, lo:hi].sum()
        if count:
            print(f"  positions {lo}-{hi}: {by_position[0, lo:hi].sum() / count:.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
