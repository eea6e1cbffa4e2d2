"""The codebook's training rules: an exponential moving average instead of gradients.

A large codebook trained from scratch on little data otherwise collapses onto a few codes: EMA
updates (moving averages of assignment counts and of the vectors assigned), initialised by k-means
on real encoder outputs and with dead codes re-seeded from the current batch, keep it in use. The quantiser module itself (`CodebookQuantizer`)
only holds the buffers and does the lookup at inference; everything that changes them is here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from llmvox.codec.wavtokenizer import CodebookQuantizer
from llmvox.train.losses import codebook_perplexity


class EmaCodebook:
    """Training rules for a `CodebookQuantizer`'s buffers (embed, embed_avg, cluster_size, inited).

    The codebook is not a parameter: each row is the running mean of the encoder vectors assigned to
    it (EMA of their sum / EMA of their count, with Laplace smoothing so empty rows stay finite).
    The encoder's outputs drift mostly as a whole early in training (one optimiser step moves their
    common mean by about their whole frame-to-frame spread), which a slow EMA cannot follow: every
    frame then lands on the one row nearest the new mean and the codebook collapses. `recenter`
    therefore shifts all rows (and their sums) with the batch mean before each assignment, so the
    EMA only has to follow the shape of the cloud, not its position.

    Rows whose usage EMA drops below `dead_fraction` of a uniform share are re-seeded with random
    vectors of the current batch, and their statistics reset to one uniform share, so they get a fair
    chance instead of being overwritten back by their stale averages.
    """

    def __init__(self, quantizer: CodebookQuantizer, decay: float = 0.99, dead_fraction: float = 0.05,
                 epsilon: float = 1e-5) -> None:
        self.q = quantizer
        self.decay = decay
        self.dead_fraction = dead_fraction
        self.epsilon = epsilon
        self.center: Tensor | None = None  # the latent mean the rows are currently aligned to
        self.anchor: Tensor | None = None  # the latent mean at initialisation (see `anchor_loss`)

    def _smoothed_counts(self) -> Tensor:
        k = self.size
        total = self.q.cluster_size.sum()
        return (self.q.cluster_size + self.epsilon) / (total + k * self.epsilon) * total

    @torch.no_grad()
    def recenter(self, mean: Tensor) -> None:
        """Move every row by the change of the latent mean since the last call."""
        mean = mean.detach().float()
        if self.center is not None:
            delta = mean - self.center
            self.q.embed.add_(delta[None, :])
            self.q.embed_avg.add_(delta[None, :] * self._smoothed_counts()[:, None])
        self.center = mean.clone()
        if self.anchor is None:  # e.g. weights loaded from an export: anchor where training resumes
            self.anchor = mean.clone()

    @property
    def size(self) -> int:
        return int(self.q.embed.shape[0])

    @property
    def initialised(self) -> bool:
        return bool(self.q.inited.item() > 0)

    def mark_uninitialised(self) -> None:
        self.q.inited.zero_()

    @torch.no_grad()
    def kmeans_init(self, vectors: Tensor, iters: int, frames_per_batch: int,
                    generator: torch.Generator | None = None) -> None:
        """Set the rows to k-means centroids of (N, D) `vectors` (random rows when N < K)."""
        vectors = vectors.float()
        k = self.size
        n = vectors.shape[0]
        if n >= k:
            centroids = vectors[torch.randperm(n, generator=generator)[:k]].clone()
        else:
            centroids = vectors[torch.randint(0, n, (k,), generator=generator)].clone()
            centroids += 1e-3 * vectors.std() * torch.randn(centroids.shape, generator=generator)
        counts = torch.zeros(k)
        for _ in range(max(iters, 0)):
            assign = _nearest(vectors, centroids)
            counts = torch.bincount(assign, minlength=k).float()
            sums = torch.zeros_like(centroids).index_add_(0, assign, vectors)
            filled = counts > 0
            centroids[filled] = sums[filled] / counts[filled, None]
        if iters <= 0:
            counts = torch.bincount(_nearest(vectors, centroids), minlength=k).float()
        share = counts * (frames_per_batch / max(n, 1))
        share = share.clamp(min=frames_per_batch / k)  # unused centroids start with one uniform share
        self.q.embed.copy_(centroids)
        self.q.cluster_size.copy_(share)
        self.q.embed_avg.copy_(centroids * share[:, None])
        self.q.inited.fill_(1)
        self.center = vectors.mean(0)
        self.anchor = self.center.clone()

    def anchor_loss(self, latents: Tensor) -> Tensor:
        """Squared distance of the batch's mean latent from its value at initialisation (per dim).

        `recenter` makes the codebook follow the mean, which also removes the commitment loss's
        restoring force on it; without this term the mean random-walks away (Adam momentum makes
        it a steady drift) and the codebook is always one step behind the encoder.
        """
        if self.anchor is None:
            return latents.new_zeros(())
        return (latents.mean(dim=(0, 2)) - self.anchor).pow(2).mean()

    @torch.no_grad()
    def update(self, vectors: Tensor, codes: Tensor) -> int:
        """One EMA step from (N, D) vectors and their (N,) codes; returns how many rows were re-seeded."""
        vectors = vectors.float()
        k = self.size
        counts = torch.bincount(codes, minlength=k).float()
        sums = torch.zeros(k, vectors.shape[1]).index_add_(0, codes, vectors)
        self.q.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.q.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.q.embed.copy_(self.q.embed_avg / self._smoothed_counts()[:, None])
        share = vectors.shape[0] / k
        dead = self.q.cluster_size < self.dead_fraction * share
        n_dead = int(dead.sum())
        if n_dead:
            picks = vectors[torch.randint(0, vectors.shape[0], (n_dead,))]
            self.q.embed[dead] = picks
            self.q.embed_avg[dead] = picks * share
            self.q.cluster_size[dead] = share
        return n_dead

    def usage_perplexity(self) -> float:
        return codebook_perplexity(self.q.cluster_size)


def _nearest(vectors: Tensor, table: Tensor, chunk: int = 8192) -> Tensor:
    out = []
    table_sq = table.pow(2).sum(1)
    for start in range(0, vectors.shape[0], chunk):
        x = vectors[start:start + chunk]
        out.append((table_sq[None, :] - 2 * x @ table.t()).argmin(dim=1))
    return torch.cat(out)
