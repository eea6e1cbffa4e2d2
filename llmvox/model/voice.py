"""`Voice`: everything the engine needs of a voice, and nothing of the facade around it.

The decoder (with its text table), the codec that turns its codes into audio, the text front-end it
was trained with, its end-of-audio id, sample rate and per-sentence code limit. `llmvox.api.LLMVoX`
is a `Voice` with loaders and convenience methods; the engine and the server take any `Voice`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from llmvox.codec.config import SAMPLE_RATE
from llmvox.device import resolve_device
from llmvox.model.aligner import Aligner
from llmvox.model.speech_decoder import EOA_ID, SpeechDecoder
from llmvox.text.frontend import ByteFrontend, TextFrontend

if TYPE_CHECKING:
    from llmvox.codec.wavtokenizer import WavTokenizer


class Voice:
    """A speech decoder and its codec on one device, with the facts that go with them."""

    def __init__(self, decoder: SpeechDecoder, codec: WavTokenizer | nn.Module, *, max_audio_length: int = 8000,
                 eoa_id: int = EOA_ID, device: str | torch.device | None = None, name: str = "llmvox",
                 frontend: TextFrontend | None = None, source: str | Path | None = None,
                 aligner: Aligner | None = None, stored_dtype: torch.dtype = torch.float32):
        self.device = resolve_device(device)
        self.decoder = decoder.to(self.device).eval()
        self.codec = codec.to(self.device).eval()
        self.max_audio_length = max_audio_length  # codes per sentence at most
        self.eoa_id = eoa_id
        self.sample_rate = int(getattr(codec, "sample_rate", SAMPLE_RATE))
        self.hop_length = int(getattr(codec, "hop_length", 320))  # audio samples per code
        self.name = name
        self.frontend = frontend or ByteFrontend()  # how the decoder reads text (the bundle says)
        self.source = Path(source) if source is not None else None  # the bundle folder it was loaded from
        self.aligner = aligner  # the head word timestamps come from (None: this voice has none)
        self.stored_dtype = stored_dtype  # the decoder weights' precision on disk (`--dtype auto` computes in it)
