"""Phoneme CTC: a training-only target that teaches the decoder how the text it reads is pronounced.

A small decoder trained on a few hours of speech learns where it is in a sentence long before it
learns English spelling-to-sound from bytes: it says the right number of syllables with the wrong
vowels. This loss gives it the pronunciation outright. A linear head reads the hidden states of one
decoder layer at the audio steps and must spell out the sentence's phonemes with CTC (Graves et al.,
2006); the phonemes come from the teacher's own g2p (the misaki g2p inside `hibari-tts`), so they are
what the teacher actually said. Every audio state must then know which phone it is producing, which
is both a pronunciation target and an alignment to what has been said so far (text always arrives
before its speech, so the target is causal).

The head lives in training checkpoints (key `phoneme_ctc`) and, for warm starts, beside an exported
bundle's decoder; the decoder and its inference are unchanged. A warm start from weights without a
head first fits a new one alone (`fit_head`): a random head's loss (~17 nats per phoneme against the
decoder's ~1.1) would otherwise reshape the layers it reads before it has learned anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmvox.errors import LLMVoXError
from llmvox.model.gpt import GPT
from llmvox.train.batching import IGNORE_INDEX, Batch
from llmvox.train.text_ids import stored_id_table

BLANK = 0  # the g2p's own padding id (never a phoneme) is CTC's blank
HEAD_FIT_LR = 1e-3  # the rate of a head fitted alone: a linear probe, whatever the decoder's rate
PHONEME_TABLE_FILE = "phonemes.npz"  # the g2p's output for a run's corpus, next to its checkpoint


class G2P:
    """Text -> phoneme ids with the teacher's g2p; ids are 1..vocab_size-1 (0 is the CTC blank)."""

    def __init__(self) -> None:
        try:
            from hibari import Hibari
        except ImportError:
            raise LLMVoXError("the phoneme CTC target needs the teacher's g2p: pip install 'llmvox[train]' "
                              "(hibari-tts)") from None
        self._tts = Hibari()
        self.vocab_size = max(self._tts.vocab.values()) + 1

    def __call__(self, text: str) -> np.ndarray:
        ids = self._tts.ids(" ".join(self._tts.phonemize(text))) if text.strip() else []
        return np.array([i for i in ids if i != BLANK], dtype=np.int64)


class PhonemeCTC:
    """Records one layer's hidden states in a forward pass and scores them against the phonemes.

    `phonemes[i]` are the target ids of cache utterance i; `complete[i]` is False when its sequence is
    cropped (the speech of the cropped tail would be missing, so the utterance is not scored).
    """

    def __init__(self, gpt: GPT, layer: int, phonemes: list[np.ndarray], complete: np.ndarray, *,
                 vocab_size: int, weight: float = 1.0, seed: int = 0, first_steps: np.ndarray | None = None) -> None:
        if not 0 <= layer < gpt.config.n_layer:
            raise LLMVoXError(f"--phoneme_ctc_layer {layer}: the decoder has layers 0..{gpt.config.n_layer - 1}")
        self.gpt = gpt
        self.layer = layer
        self.phonemes = phonemes
        self.complete = np.asarray(complete, dtype=bool)
        # per utterance, the first step the head reads (None: all). A decoder that reads phonemes could
        # meet the target by copying its input at the text steps; starting after them, it cannot.
        self.first_steps = None if first_steps is None else np.asarray(first_steps, dtype=np.int64)
        self.weight = weight
        # seeded apart from the process RNG: every DDP rank must start the head the same (it is not
        # inside the DDP module, so nothing broadcasts it)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = nn.Linear(gpt.config.n_embd, vocab_size)
        self.last: float | None = None  # mean loss of the latest optimizer step (for logs)
        self.name = "phoneme_ctc"
        self._hidden: Tensor | None = None

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Within this block, forward passes of the GPT keep the chosen layer's output."""
        def keep(module, args, output):
            self._hidden = output

        hook = self.gpt.transformer.h[self.layer].register_forward_hook(keep)
        try:
            yield
        finally:
            hook.remove()

    def batch_loss(self, batch: Batch) -> Tensor:
        """Mean CTC loss (nats per phoneme) of the batch's recorded forward pass."""
        if batch.rows is None:
            raise RuntimeError("the phoneme CTC loss needs the batch's cache rows")
        return self.loss(batch.rows, (batch.targets != IGNORE_INDEX).sum(1))

    def loss(self, rows: np.ndarray, num_steps: Tensor) -> Tensor:
        """Mean CTC loss of the recorded forward pass; rows are its cache indices, num_steps its real steps."""
        hidden, self._hidden = self._hidden, None
        if hidden is None:
            raise RuntimeError("PhonemeCTC.loss needs a forward pass inside recording()")
        keep = [k for k, r in enumerate(rows) if self.complete[r] and len(self.phonemes[r])]
        if not keep:
            return hidden.sum() * 0.0
        index = torch.tensor(keep, device=hidden.device)
        steps = num_steps[index].cpu()
        states = hidden.index_select(0, index)
        if self.first_steps is not None:  # each row's states from its first read step, left-aligned
            first = torch.from_numpy(np.minimum(self.first_steps[rows[keep]], steps.numpy()))
            states = nn.utils.rnn.pad_sequence([states[j, int(first[j]):int(steps[j])] for j in range(len(keep))],
                                               batch_first=True)
            steps = steps - first
        logp = F.log_softmax(self.head(states.float()), dim=-1).transpose(0, 1)
        targets = [torch.from_numpy(self.phonemes[rows[k]]) for k in keep]
        return F.ctc_loss(logp, torch.cat(targets).to(hidden.device), steps,
                          torch.tensor([len(t) for t in targets]), blank=BLANK, zero_infinity=True)


def fit_head(ctc: PhonemeCTC, optimizer: torch.optim.Optimizer, model: nn.Module,
             steps: Iterable[list[Batch]], ctx: contextlib.AbstractContextManager,
             grad_clip: float = 1.0) -> list[float]:
    """Train only the head, on the states of a frozen decoder, one optimizer step per item of `steps`
    (its micro-batches); returns each step's mean CTC loss. The head's AdamW moments form here too."""
    from llmvox.train.distributed import average_gradients

    params = list(ctc.head.parameters())
    for group in optimizer.param_groups:
        group["lr"] = HEAD_FIT_LR
    was_training = model.training
    model.eval()
    losses = []
    try:
        for batches in steps:
            total = 0.0
            for batch in batches:
                with torch.no_grad(), ctx, ctc.recording():
                    model(batch.text_ids, batch.prev_codes)
                with ctx:
                    loss = ctc.batch_loss(batch)
                (loss / len(batches)).backward()
                total += float(loss.detach())
            average_gradients(params)
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(total / len(batches))
    finally:
        model.train(was_training)
    return losses


def phoneme_table(texts: Sequence[str], store: Path | None = None) -> tuple[list[np.ndarray], int]:
    """Phoneme ids of every text and the vocabulary size.

    The g2p costs ~1 ms a sentence (a minute for a 50 h corpus), paid at every trainer start, so with
    `store` the table is kept in that .npz, keyed by the texts and the g2p's version, and reused.
    """
    def build() -> tuple[list[np.ndarray], dict[str, int]]:
        g2p = G2P()
        return [g2p(t) for t in texts], {"vocab_size": g2p.vocab_size}

    table, extras = stored_id_table(texts, "phoneme CTC targets", store, build)
    return table, extras["vocab_size"]
