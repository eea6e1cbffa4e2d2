"""Word timestamps from one decoder head that reads the text in order.

The decoder gets text id j at step j but speaks it later (speech is ~5x longer than its bytes); some
heads look back at the text id being spoken (llmvox/train/alignment.py). At step t such a head's
attention centroid over the text positions (j < N, j <= t; averaged over the aligner's heads) is its
read position, and its running maximum only moves forward. A word whose ids occupy [a, b) (its bytes
or phonemes, then `</s>`) starts at the (interpolated) step where the read position reaches a + `lead`
(at most its `</s>`), shifted by `shift_frames` (the heads' measured lag against Whisper), and ends
where the next word starts; the last word ends where the head reaches its `</s>` (or at the segment's
end); a segment's first word starts with it. Step t is audio frame t of the segment (hop_length samples).

A bundle names its head(s) in config.json: "aligner": {"layer": L, "heads": [H, ...], "lead": 1,
"shift_frames": S} ("head": H for one; several heads of the layer are averaged)
(voice/word_timestamp_heads.py measures every head against Whisper and prints the best).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from llmvox.errors import LLMVoXError
from llmvox.text.tokenizer import EOS_ID

Span = tuple[int, int]


@dataclass(frozen=True)
class Aligner:
    """The head a voice's word timestamps come from, and how its read position maps to words."""

    layer: int
    heads: tuple[int, ...]  # their attention is averaged
    lead: float = 2.0  # ids into a word its read position must reach (0: the word's first id)
    shift_frames: float = 0.0  # added to every time (the heads' constant lag behind the audio)

    @classmethod
    def from_config(cls, config: dict[str, Any] | None, n_layer: int, n_head: int) -> Aligner | None:
        """The bundle's "aligner" entry, checked against the decoder's size (None: no entry)."""
        if not config:
            return None
        try:
            heads = config["heads"] if "heads" in config else [config["head"]]
            aligner = cls(int(config["layer"]), tuple(int(h) for h in heads), float(config.get("lead", 2.0)),
                          float(config.get("shift_frames", 0.0)))
        except (KeyError, TypeError, ValueError):
            raise LLMVoXError(f"config.json 'aligner' must be {{'layer': L, 'head': H}} or "
                              f"{{'layer': L, 'heads': [H, ...]}}, got {config!r}") from None
        if not (0 <= aligner.layer < n_layer and aligner.heads and all(0 <= h < n_head for h in aligner.heads)
                and aligner.lead >= 0):
            raise LLMVoXError(f"config.json aligner {aligner.layer}.{list(aligner.heads)}: the decoder has "
                              f"{n_layer} layers of {n_head} heads")
        return aligner

    def to_config(self) -> dict[str, Any]:
        return {**asdict(self), "heads": list(self.heads)}

    def steps(self, spans: list[Span], reads: list[float], total: int, finished: bool
              ) -> list[tuple[float, float | None]]:
        """Shifted (start, end) frames of the words known so far (see `word_steps`), clipped to the
        segment; the first word starts with the segment (as Whisper hears it: at its first frame)."""
        limit = float(max(total, 0))

        def place(x: float) -> float:
            return min(max(x + self.shift_frames, 0.0), limit)

        out = [(place(s), None if e is None else place(e)) for s, e in word_steps(spans, reads, total, finished,
                                                                                  lead=self.lead)]
        if out:
            out[0] = (0.0, out[0][1])
        return out


def word_spans(ids: list[int]) -> list[Span]:
    """[a, b) of each word in a segment's text ids: every word ends with `</s>` (the sentence end id
    after the last one belongs to no word)."""
    spans, start = [], 0
    for i, token in enumerate(ids):
        if token == EOS_ID:
            spans.append((start, i + 1))
            start = i + 1
    return spans


def word_steps(spans: list[Span], reads: list[float], total: int, finished: bool, *, lead: float = 2.0
               ) -> list[tuple[float, float | None]]:
    """(start, end) steps (fractional) of the first words whose start is known from `reads` (the read
    position of each step so far); end None while unknown. Once `finished` (all `total` steps taken)
    every word has both: words the head never reached share the frames left after the last one it did."""
    best, run = -1.0, []
    for r in reads:
        best = max(best, r)
        run.append(best)
    starts: list[float] = []
    t = 0
    for a, b in spans:
        target = min(a + lead, b - 1)  # never past the word's own </s>
        while t < len(run) and run[t] < target:
            t += 1
        if t >= len(run):
            break
        starts.append(_crossing(run, t, target))
    out: list[tuple[float, float | None]] = [(s, starts[k + 1] if k + 1 < len(starts) else None)
                                             for k, s in enumerate(starts)]
    if spans and len(starts) == len(spans):  # the last word ends where the head reaches its </s>
        eos = spans[-1][1] - 1
        end = next((_crossing(run, i, eos) for i in range(t, len(run)) if run[i] >= eos), None)
        end = end if end is not None and end > starts[-1] else (float(total) if finished else None)
        out[-1] = (starts[-1], end)
    elif finished and spans:
        first = starts[-1] if starts else 0.0
        width = max(total - first, 0.0) / (len(spans) - len(starts) + (1 if starts else 0))
        out = out[:-1] + ([(first, first + width)] if starts else [])
        while len(out) < len(spans):
            begin = out[-1][1] if out else 0.0
            out.append((begin, min(float(total), begin + width)))
    return out


def _crossing(run: list[float], t: int, target: float) -> float:
    """The fractional step where the running read position reaches `target` (it does at step t)."""
    if t == 0 or run[t] <= run[t - 1]:
        return float(t)
    return t - 1 + (target - run[t - 1]) / (run[t] - run[t - 1])
