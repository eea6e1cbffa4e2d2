"""Offline generation with the original LLMVoX semantics: text chunks in, speech codes out.

Per segment (one sentence): positions start at 0 with an empty cache; every text id of every chunk is
one decoder step (the code predicted at that step is emitted); after the text, PAD is fed until the
decoder emits end-of-audio (EOA) or the segment reaches `max_audio_length` codes. EOA itself is not
part of the audio. Greedy argmax throughout.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from llmvox.model.speech_decoder import EOA_ID, NO_CODE, SpeechDecoder
from llmvox.text.frontend import ByteFrontend, TextFrontend
from llmvox.text.tokenizer import PAD_ID

SENTENCE_END_CHARS = ".!?"


@dataclass
class Generation:
    """What one call produced: codes per step (EOA dropped), optional logits, and the fed text ids."""

    codes: list[int] = field(default_factory=list)
    text_ids: list[int] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)
    segments: int = 0


def split_segments(chunks: Sequence[str]) -> list[list[str]]:
    """Group whitespace chunks into sentences: a chunk ending in . ! or ? (quotes aside) closes one."""
    segments: list[list[str]] = []
    current: list[str] = []
    for chunk in chunks:
        if not chunk:
            continue
        current.append(chunk)
        if chunk.rstrip("\"')]»”’").endswith(tuple(SENTENCE_END_CHARS)):
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    return segments


def segment_text_ids(chunks: Sequence[str], frontend: TextFrontend | None = None) -> list[int]:
    """Text ids of one segment as the voice's front-end reads it (default: the original byte ids)."""
    return (frontend or ByteFrontend()).encode_words(chunks)


def generate_segment(
    decoder: SpeechDecoder,
    chunks: Sequence[str],
    *,
    max_audio_length: int = 8000,
    eoa_id: int = EOA_ID,
    step_budget: int | None = None,
    keep_logits: bool = False,
    frontend: TextFrontend | None = None,
) -> Iterator[tuple[int, int, np.ndarray | None, bool]]:
    """Yield (text id fed, code predicted, logits or None, is_eoa) for each step of one segment.

    EOA ends the segment once all text has been fed (before that, 453 is an ordinary codebook entry);
    the EOA step is yielded with is_eoa=True so callers can drop it. Also stops at `max_audio_length`
    steps or when `step_budget` steps were taken.
    """
    ids = segment_text_ids(chunks, frontend)
    limit = min(max(max_audio_length, len(ids)), decoder.config.block_size)
    if step_budget is not None:
        limit = min(limit, step_budget)
    device = decoder.gpt.lm_head.weight.device
    cache = decoder.new_cache(1, min(limit, 1024))
    prev = NO_CODE
    for n in range(limit):
        text_id = ids[n] if n < len(ids) else PAD_ID
        logits = decoder.step(
            torch.tensor([text_id], device=device),
            torch.tensor([prev], device=device),
            torch.tensor([n], device=device),
            cache,
            n,
        )
        prev = int(logits[0].argmax())
        is_eoa = prev == eoa_id and n >= len(ids) - 1
        yield text_id, prev, (logits[0].cpu().numpy() if keep_logits else None), is_eoa
        if is_eoa:
            return


def generate(
    decoder: SpeechDecoder,
    chunks: Sequence[str],
    *,
    max_tokens: int | None = None,
    max_audio_length: int = 8000,
    eoa_id: int = EOA_ID,
    keep_logits: bool = False,
    frontend: TextFrontend | None = None,
) -> Generation:
    """Codes for whitespace chunks, one segment per sentence; `max_tokens` caps the total steps."""
    out = Generation()
    for segment in split_segments(chunks):
        budget = None if max_tokens is None else max_tokens - len(out.text_ids)
        if budget is not None and budget <= 0:
            break
        out.segments += 1
        for text_id, code, logits, is_eoa in generate_segment(
            decoder, segment, max_audio_length=max_audio_length, eoa_id=eoa_id,
            step_budget=budget, keep_logits=keep_logits, frontend=frontend,
        ):
            out.text_ids.append(text_id)
            if logits is not None:
                out.logits.append(logits)
            if not is_eoa:
                out.codes.append(code)
    return out
