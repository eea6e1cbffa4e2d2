"""Which utterances go into which micro-batch, and how one micro-batch becomes decoder tensors.

Sampling is a pure function of (seed, epoch, lengths): the whole run is one endless sequence of
micro-batches, numbered from 0, that every process can compute on its own. That gives three things
at once:
- resume: the data-loader position is one integer (the next micro-batch number);
- DDP with the same parameters as one process: optimizer step s uses micro-batches
  s*M .. s*M+M-1 (M = gradient_accumulation_steps in total); with W processes rank r takes its
  M/W consecutive ones, so the global batch is the same whatever W is;
- length bucketing: within a window of `bucket_window` batches the utterances are sorted by length
  before being cut into batches, so a batch pads to a similar length instead of the longest in the
  data set; the batch order is then shuffled so lengths stay mixed over time.

One micro-batch, with the original step semantics (n = number of codes of an utterance):
    step          0          1 .. n-1         n
    text id       text[0]    text[k] / PAD    PAD (text padded with PAD to n + 1 steps)
    prev code     none       codes[k-1]       codes[n-1]
    target        codes[0]   codes[k]         EOA
Padding steps of shorter utterances have target IGNORE (-1000, the original's ignore index).
`max_len` crops every sequence to its first max_len steps (positions always start at 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmvox.model.speech_decoder import NO_CODE
from llmvox.text.tokenizer import PAD_ID

IGNORE_INDEX = -1000  # the original loss's ignore index (its padding value for targets)


def sequence_lengths(code_lengths: np.ndarray, max_len: int) -> np.ndarray:
    """Decoder steps per utterance: codes + EOA, cropped to max_len."""
    return np.minimum(np.asarray(code_lengths, dtype=np.int64) + 1, max_len)


class BucketSampler:
    """An endless, seeded sequence of micro-batches (arrays of utterance indices)."""

    def __init__(self, lengths: np.ndarray, batch_size: int, *, seed: int, bucket_window: int = 64,
                 shuffle: bool = True) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if len(lengths) == 0:
            raise ValueError("no utterances to sample from")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.bucket_window = max(1, bucket_window)
        self.shuffle = shuffle
        self._epoch: int | None = None
        self._plan: list[np.ndarray] = []

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def epoch_plan(self, epoch: int) -> list[np.ndarray]:
        """The micro-batches of one pass over the data, in order."""
        n = len(self.lengths)
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        window = self.batch_size * self.bucket_window
        batches: list[np.ndarray] = []
        for start in range(0, n, window):
            chunk = order[start : start + window]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def micro_batch(self, number: int) -> np.ndarray:
        """Utterance indices of micro-batch `number` (0-based, counted from the start of training)."""
        epoch, pos = divmod(number, self.batches_per_epoch)
        if epoch != self._epoch:
            self._plan = self.epoch_plan(epoch)
            self._epoch = epoch
        return self._plan[pos]


def fixed_batches(lengths: np.ndarray, batch_size: int, *, seed: int, limit: int | None = None) -> list[np.ndarray]:
    """A fixed, length-bucketed set of batches (for evaluation: the same every time it is asked)."""
    sampler = BucketSampler(lengths, batch_size, seed=seed, bucket_window=1 << 30)
    plan = sampler.epoch_plan(0)
    return plan[:limit] if limit else plan


@dataclass
class Batch:
    """Decoder tensors of one micro-batch, all (B, T) int64."""

    text_ids: torch.Tensor
    prev_codes: torch.Tensor
    targets: torch.Tensor
    rows: np.ndarray | None = None  # which utterances (data set indices), for per-utterance training targets

    @property
    def num_targets(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    def to(self, device: torch.device | str) -> Batch:
        nb = torch.device(device).type == "cuda"
        return Batch(self.text_ids.to(device, non_blocking=nb), self.prev_codes.to(device, non_blocking=nb),
                     self.targets.to(device, non_blocking=nb), self.rows)


def make_batch(codes: list[np.ndarray], texts: list[np.ndarray], *, max_len: int, eoa_id: int) -> Batch:
    """Build one micro-batch from per-utterance codes (EOA already removed) and text ids."""
    steps = [min(len(c) + 1, max_len) for c in codes]
    b, t = len(codes), max(steps)
    text_ids = np.full((b, t), PAD_ID, dtype=np.int64)
    # padding rows repeat the EOA feature, as the original pads its feature sequences; their targets
    # are ignored and causal attention keeps them from touching real steps
    prev = np.full((b, t), eoa_id, dtype=np.int64)
    targets = np.full((b, t), IGNORE_INDEX, dtype=np.int64)
    for i, (c, txt, n) in enumerate(zip(codes, texts, steps, strict=True)):
        c = np.asarray(c, dtype=np.int64)
        k = min(len(txt), n)
        text_ids[i, :k] = txt[:k]
        prev[i, 0] = NO_CODE
        prev[i, 1:n] = c[: n - 1]
        full = np.append(c, eoa_id)
        targets[i, :n] = full[:n]
    return Batch(torch.from_numpy(text_ids), torch.from_numpy(prev), torch.from_numpy(targets))
