"""Which decoder heads give the best word timestamps? On held-out sentences, every candidate aligner
(each layer.head alone, and each layer's heads averaged; several `lead`s) turns the attention of a full
forward pass into word times exactly as streaming does (llmvox.model.aligner: attention centroid over
the text ids, running maximum, crossing of each word's lead-th id) and is scored against Whisper's word
timestamps of the same audio, after its best constant shift (frames). The winner's entry goes into the
bundle's config.json as "aligner".

    .venv/bin/python voice/word_timestamp_heads.py [BUNDLE] [N_SENTENCES]

The embedded voice's entry came from the first 30 held-out sentences (p50 69 ms there).
"""

from __future__ import annotations

import difflib
import json
import sys

import numpy as np
import torch

from llmvox.api import LLMVoX
from llmvox.asr.whisper import WhisperASR
from llmvox.bench.intelligibility import read_sentences
from llmvox.bench.word_timestamps import HELDOUT, _norm, boundary_errors, summary
from llmvox.engine.generate import generate_segment
from llmvox.model.aligner import Aligner, word_spans
from llmvox.model.speech_decoder import NO_CODE
from llmvox.text.normalize import normalize
from llmvox.text.tokenizer import PAD_ID
from llmvox.train.alignment import GuidedAttention

LEADS = (1.0, 1.5, 2.0, 2.5)


def measure(voice: LLMVoX, asr: WhisperASR, sentence: str) -> tuple:
    """(words, spans, frames, Whisper's words, attention per layer (heads, T, T)) of one sentence."""
    cfg = voice.decoder.config
    words = normalize(sentence).split()
    steps = list(generate_segment(voice.decoder, words, max_audio_length=voice.max_audio_length,
                                  eoa_id=voice.eoa_id, frontend=voice.frontend))
    ids = voice.frontend.encode_words(words)
    codes = [c for _, c, _, eoa in steps if not eoa]
    text = torch.tensor([[ids[t] if t < len(ids) else PAD_ID for t in range(len(steps))]])
    prev = torch.tensor([[NO_CODE] + [c for _, c, _, _ in steps[:-1]]])
    guide = GuidedAttention(voice.decoder.gpt, [(layer, h) for layer in range(cfg.n_layer) for h in range(cfg.n_head)])
    with torch.no_grad(), guide.recording():
        voice.decoder(text, prev)
    attn = {layer: guide.attention(layer)[0].detach().numpy() for layer in range(cfg.n_layer)}
    heard = asr.transcribe_words(voice.decode(codes), voice.sample_rate)
    return words, word_spans(ids), len(codes), heard, attn, len(ids)


def word_times(aligner: Aligner, case: tuple, hop_s: float) -> list[tuple[str, float, float]]:
    words, spans, total, _heard, attn, n_ids = case
    a = attn[aligner.layer][list(aligner.heads)].mean(0)
    reads = []
    for t in range(total):
        p = a[t, : min(n_ids, t + 1)]
        reads.append(float((p * np.arange(p.size)).sum() / max(p.sum(), 1e-9)))
    got = aligner.steps(spans, reads, total, True)
    return [(w, s * hop_s, e * hop_s) for w, (s, e) in zip(words, got, strict=False)]


def signed(ours, heard) -> list[float]:
    a, b = [_norm(w[0]) for w in ours], [_norm(w[0]) for w in heard]
    out = []
    for block in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            (_, s1, e1), (_, s2, e2) = ours[block.a + k], heard[block.b + k]
            out += [s1 - s2, e1 - e2]
    return out


def main(bundle: str | None = None, n: str = "30") -> None:
    torch.set_num_threads(2)
    voice = LLMVoX.from_pretrained(bundle or None)
    asr = WhisperASR(threads=2)
    cfg = voice.decoder.config
    hop_s = voice.hop_length / voice.sample_rate
    cases = [measure(voice, asr, s) for s in read_sentences(HELDOUT)[: int(n)]]
    candidates = [(layer, (h,)) for layer in range(cfg.n_layer) for h in range(cfg.n_head)]
    candidates += [(layer, tuple(range(cfg.n_head))) for layer in range(cfg.n_layer)]
    results = []
    for layer, heads in candidates:
        for lead in LEADS:
            diffs = [d for c in cases for d in signed(word_times(Aligner(layer, heads, lead), c, hop_s), c[3])]
            aligner = Aligner(layer, heads, lead, float(-round(np.median(diffs) / hop_s)) if diffs else 0.0)
            errs = [e for c in cases for e in boundary_errors(word_times(aligner, c, hop_s), c[3])]
            results.append((summary(errs)["p50_ms"], summary(errs), aligner))
    results.sort(key=lambda r: r[0])
    for _, s, aligner in results[:10]:
        print(f"{aligner.layer}.{list(aligner.heads)} lead {aligner.lead} shift {aligner.shift_frames:+.0f}: "
              f"p50 {s['p50_ms']} ms  p90 {s['p90_ms']}  max {s['max_ms']}")
    print('"aligner":', json.dumps(results[0][2].to_config()))


if __name__ == "__main__":
    main(*sys.argv[1:3])
