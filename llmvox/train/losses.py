"""Codec training losses: spectral reconstruction (mel and linear STFT) and the GAN terms.

Reconstruction is compared in log-magnitude spectra at several resolutions at once: short windows
judge timing (plosives, onsets), long windows judge pitch and formants, and one resolution alone
leaves artefacts at the scales it cannot see. Everything here is plain torch (no torchaudio), and
the spectra are computed in float32 even when the model runs under bf16 autocast, because log
magnitudes of quiet bins are where low precision hurts first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_FLOOR = 1e-7  # the original trainer's clamp before the log (about -140 dB)
# Our training floor. Teacher TTS audio contains digital silence (exact zeros): with a 1e-7 floor,
# the 8% of mel bins that are silent carried 51% of the mel L1 of a young codec (measured), so
# training chased inaudible levels. 1e-4 is ~70 dB below typical speech bins and changes nothing
# for recordings with a real noise floor.
TRAIN_LOG_FLOOR = 1e-4


def hz_to_mel(hz: Tensor) -> Tensor:
    """HTK mel scale."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> Tensor:
    """(n_fft // 2 + 1, n_mels) triangular filters on the HTK mel scale, unnormalised.

    The same construction as the usual `MelSpectrogram` defaults (HTK scale, no area
    normalisation), so the "mel distance" we report is comparable with the original trainer's.
    """
    f_max = float(sample_rate) / 2 if f_max is None else f_max
    bins = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(hz_to_mel(torch.tensor(f_min, dtype=torch.float64)).item(),
                                     hz_to_mel(torch.tensor(f_max, dtype=torch.float64)).item(),
                                     n_mels + 2, dtype=torch.float64))
    widths = edges[1:] - edges[:-1]
    offsets = edges[None, :] - bins[:, None]  # (bins, n_mels + 2)
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)


class Spectrogram(nn.Module):
    """|STFT| (Hann window, centred with reflect padding) of (B, N) audio -> (B, bins, frames)."""

    def __init__(self, n_fft: int, hop_length: int, win_length: int | None = None) -> None:
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.win_length = win_length or n_fft
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)

    def forward(self, audio: Tensor) -> Tensor:
        spec = torch.stft(audio.float(), self.n_fft, self.hop_length, self.win_length, self.window,
                          center=True, pad_mode="reflect", return_complex=True)
        return spec.abs()


class MelSpectrogram(nn.Module):
    """Magnitude (power 1) mel spectrogram, (B, N) -> (B, n_mels, frames)."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int) -> None:
        super().__init__()
        self.spec = Spectrogram(n_fft, hop_length)
        self.register_buffer("filters", mel_filterbank(sample_rate, n_fft, n_mels), persistent=False)

    def forward(self, audio: Tensor) -> Tensor:
        return torch.einsum("bft,fm->bmt", self.spec(audio), self.filters)


def safe_log(x: Tensor, floor: float = LOG_FLOOR) -> Tensor:
    return torch.log(torch.clamp(x, min=floor))


# The resolution of the original trainer's mel loss; also our reported "mel distance".
REFERENCE_MEL = (1024, 256, 100)
DEFAULT_MEL_RESOLUTIONS: tuple[tuple[int, int, int], ...] = ((512, 128, 64), (1024, 256, 100), (2048, 512, 128))
DEFAULT_STFT_RESOLUTIONS: tuple[tuple[int, int], ...] = ((512, 128), (1024, 256), (2048, 512))


class MultiResolutionMelLoss(nn.Module):
    """Mean over resolutions of L1 between log mel spectrograms."""

    def __init__(self, sample_rate: int,
                 resolutions: Sequence[tuple[int, int, int]] = DEFAULT_MEL_RESOLUTIONS,
                 floor: float = TRAIN_LOG_FLOOR) -> None:
        super().__init__()
        self.mels = nn.ModuleList(MelSpectrogram(sample_rate, n, h, m) for n, h, m in resolutions)
        self.floor = floor

    def forward(self, audio_hat: Tensor, audio: Tensor) -> Tensor:
        total = audio_hat.new_zeros((), dtype=torch.float32)
        for mel in self.mels:
            total = total + F.l1_loss(safe_log(mel(audio_hat), self.floor), safe_log(mel(audio), self.floor))
        return total / len(self.mels)


class MultiResolutionSTFTLoss(nn.Module):
    """Mean over resolutions of spectral convergence + L1 of log magnitudes (linear frequency)."""

    def __init__(self, resolutions: Sequence[tuple[int, int]] = DEFAULT_STFT_RESOLUTIONS,
                 floor: float = TRAIN_LOG_FLOOR) -> None:
        super().__init__()
        self.specs = nn.ModuleList(Spectrogram(n, h) for n, h in resolutions)
        self.floor = floor

    def forward(self, audio_hat: Tensor, audio: Tensor) -> Tensor:
        total = audio_hat.new_zeros((), dtype=torch.float32)
        for spec in self.specs:
            s_hat, s = spec(audio_hat), spec(audio)
            convergence = torch.linalg.norm(s - s_hat) / torch.linalg.norm(s).clamp(min=LOG_FLOOR)
            total = total + convergence + F.l1_loss(safe_log(s_hat, self.floor), safe_log(s, self.floor))
        return total / len(self.specs)


class PhaseDerivativeLoss(nn.Module):
    """Mismatch of the phase's time and frequency derivatives, weighted towards strong bins.

    Magnitude losses teach an ISTFT head its spectral envelope quickly but phase coherence only
    through weak overlap-add interference, so a young codec sounds like shaped noise without
    harmonics. The derivatives of phase (instantaneous frequency along time, group delay along
    frequency) are what make partials coherent, and unlike the phase itself they do not depend on
    where the waveform happens to start. Each derivative is compared as a unit complex number
    (S[t] * conj(S[t-1]) normalised), which wraps angles correctly and has bounded gradients;
    bins count in proportion to the reference's magnitude, so silence and noise floors do not.
    """

    def __init__(self, n_fft: int = 1280, hop_length: int = 320, rel_eps: float = 1e-3) -> None:
        super().__init__()
        self.n_fft, self.hop_length, self.rel_eps = n_fft, hop_length, rel_eps
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def _stft(self, audio: Tensor) -> Tensor:
        return torch.stft(audio.float(), self.n_fft, self.hop_length, window=self.window, center=True,
                          pad_mode="reflect", return_complex=True)

    def _term(self, s_hat: Tensor, s: Tensor, dim: int) -> Tensor:
        n = s.shape[dim]
        a, b = s.narrow(dim, 1, n - 1), s.narrow(dim, 0, n - 1)
        a_hat, b_hat = s_hat.narrow(dim, 1, n - 1), s_hat.narrow(dim, 0, n - 1)
        cross, cross_hat = a * b.conj(), a_hat * b_hat.conj()
        eps = self.rel_eps * cross.abs().mean().clamp(min=1e-12)
        unit = cross / (cross.abs() + eps)
        unit_hat = cross_hat / (cross_hat.abs() + eps)
        weight = cross.abs().sqrt()
        return ((unit_hat - unit).abs() * weight).sum() / weight.sum().clamp(min=1e-12)

    def forward(self, audio_hat: Tensor, audio: Tensor) -> Tensor:
        s_hat, s = self._stft(audio_hat), self._stft(audio)
        return 0.5 * (self._term(s_hat, s, dim=2) + self._term(s_hat, s, dim=1))


class MelDistance(nn.Module):
    """The evaluation metric: L1 of log mel at the original trainer's resolution (1024/256/100).

    With the default floor (1e-7, the original's) it is comparable with the original trainer's
    mel loss; `floor=TRAIN_LOG_FLOOR` measures audible content only.
    """

    def __init__(self, sample_rate: int, floor: float = LOG_FLOOR) -> None:
        super().__init__()
        n_fft, hop, n_mels = REFERENCE_MEL
        self.mel = MelSpectrogram(sample_rate, n_fft, hop, n_mels)
        self.floor = floor

    @torch.no_grad()
    def forward(self, audio_hat: Tensor, audio: Tensor) -> Tensor:
        return F.l1_loss(safe_log(self.mel(audio_hat), self.floor), safe_log(self.mel(audio), self.floor))


# --------------------------------------------------------------------------------------------
# Adversarial terms (hinge GAN, as in HiFi-GAN/Vocos-style training)
# --------------------------------------------------------------------------------------------


def discriminator_hinge_loss(real_scores: Sequence[Tensor], fake_scores: Sequence[Tensor]) -> Tensor:
    """Mean over sub-discriminators of hinge losses pushing real above +1 and fake below -1."""
    total = real_scores[0].new_zeros((), dtype=torch.float32)
    for real, fake in zip(real_scores, fake_scores, strict=True):
        total = total + F.relu(1 - real.float()).mean() + F.relu(1 + fake.float()).mean()
    return total / len(real_scores)


def generator_hinge_loss(fake_scores: Sequence[Tensor]) -> Tensor:
    """Mean over sub-discriminators of the generator's hinge loss (fake pushed above +1)."""
    total = fake_scores[0].new_zeros((), dtype=torch.float32)
    for fake in fake_scores:
        total = total + F.relu(1 - fake.float()).mean()
    return total / len(fake_scores)


def feature_matching_loss(real_maps: Sequence[Sequence[Tensor]], fake_maps: Sequence[Sequence[Tensor]]) -> Tensor:
    """L1 between discriminator activations on real and generated audio, averaged per discriminator."""
    total = fake_maps[0][0].new_zeros((), dtype=torch.float32)
    for real_layers, fake_layers in zip(real_maps, fake_maps, strict=True):
        for real, fake in zip(real_layers, fake_layers, strict=True):
            total = total + (real.detach().float() - fake.float()).abs().mean()
    return total / len(real_maps)


def codebook_perplexity(counts: Tensor) -> float:
    """exp(entropy) of a usage histogram: the number of equally used codes it is worth."""
    counts = counts.double().clamp(min=0)
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts / total
    nz = p[p > 0]
    return float(math.exp(-(nz * nz.log()).sum().item()))
