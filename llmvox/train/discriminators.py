"""GAN discriminators for codec fine-tuning: multi-period (waveform) and multi-resolution (spectrogram).

Reconstruction losses alone give an intelligible but slightly buzzy, over-smoothed vocoder; the
discriminators supply the missing fine structure. They are only built when adversarial training is
asked for, and are narrower than the GPU originals (see `CPU_PERIOD_CHANNELS`): even so a GAN step
costs several codec steps on a CPU. Each returns, per
sub-discriminator, a score map and its hidden activations (for feature matching).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

SLOPE = 0.1


class PeriodDiscriminator(nn.Module):
    """Folds the waveform into `period` columns and runs 2-D convs along time: sees periodicity."""

    def __init__(self, period: int, channels: Sequence[int] = (32, 128, 512, 1024), kernel: int = 5,
                 stride: int = 3) -> None:
        super().__init__()
        self.period = period
        layers: list[nn.Module] = []
        width = 1
        for ch in channels:
            layers.append(weight_norm(nn.Conv2d(width, ch, (kernel, 1), (stride, 1), padding=(kernel // 2, 0))))
            width = ch
        layers.append(weight_norm(nn.Conv2d(width, width, (kernel, 1), 1, padding=(kernel // 2, 0))))
        self.convs = nn.ModuleList(layers)
        self.out = weight_norm(nn.Conv2d(width, 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        b, n = audio.shape
        pad = (-n) % self.period
        x = F.pad(audio[:, None], (0, pad), mode="reflect") if pad else audio[:, None]
        x = x.view(b, 1, -1, self.period)
        maps = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), SLOPE)
            maps.append(x)
        x = self.out(x)
        maps.append(x)
        return x.flatten(1), maps


class ResolutionDiscriminator(nn.Module):
    """2-D convs over one linear-magnitude STFT: sees spectral texture at that resolution."""

    def __init__(self, n_fft: int, hop_length: int, channels: int = 32) -> None:
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        specs = [((7, 5), (2, 2), (3, 2)), ((5, 3), (2, 1), (2, 1)), ((5, 3), (2, 2), (2, 1)),
                 ((3, 3), (2, 1), (1, 1)), ((3, 3), (2, 2), (1, 1))]
        layers = []
        width = 1
        for kernel, stride, padding in specs:
            layers.append(weight_norm(nn.Conv2d(width, channels, kernel, stride, padding)))
            width = channels
        self.convs = nn.ModuleList(layers)
        self.out = weight_norm(nn.Conv2d(channels, 1, 3, padding=1))

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        spec = torch.stft(audio.float(), self.n_fft, self.hop_length, window=self.window, center=True,
                          return_complex=True).abs()
        x = spec[:, None]
        maps = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), SLOPE)
            maps.append(x)
        x = self.out(x)
        maps.append(x)
        return x.flatten(1), maps


# Widths for a CPU. HiFi-GAN's period discriminators (32..1024 channels) cost ~12 s per forward +
# backward of 8 x 1 s on one core here; these cost ~0.4 s (period) and ~0.3 s (resolution).
CPU_PERIOD_CHANNELS = (16, 32, 64, 128)
CPU_RESOLUTION_CHANNELS = 16


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11),
                 channels: Sequence[int] = CPU_PERIOD_CHANNELS) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p, channels) for p in periods)

    def forward(self, audio: Tensor) -> tuple[list[Tensor], list[list[Tensor]]]:
        outs = [d(audio) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class MultiResolutionDiscriminator(nn.Module):
    def __init__(self, resolutions: Sequence[tuple[int, int]] = ((512, 128), (1024, 256), (2048, 512)),
                 channels: int = CPU_RESOLUTION_CHANNELS) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(ResolutionDiscriminator(n, h, channels) for n, h in resolutions)

    def forward(self, audio: Tensor) -> tuple[list[Tensor], list[list[Tensor]]]:
        outs = [d(audio) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class CodecDiscriminators(nn.Module):
    """Both discriminator families; scores and feature maps concatenated in one list each."""

    def __init__(self) -> None:
        super().__init__()
        self.mpd = MultiPeriodDiscriminator()
        self.mrd = MultiResolutionDiscriminator()

    def forward(self, audio: Tensor) -> tuple[list[Tensor], list[list[Tensor]]]:
        s1, m1 = self.mpd(audio)
        s2, m2 = self.mrd(audio)
        return s1 + s2, m1 + m2
