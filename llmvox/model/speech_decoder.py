"""Text ids + previous codes -> next-code logits: the GPT plus the two tables that build its inputs.

Each step's input is L2-normalise(concat(text_embedding[text id], code_features[previous code])), with
zeros in place of the code feature at a segment's first step. The text table is the (extended) ByT5 g2p
embedding; the code features are the codec's codebook rows, so decoder and codec must come as a pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmvox.model.gpt import GPT, HeadProbe, KVCache

NO_CODE = -1  # "no previous code": the first step of a segment
EOA_ID = 453  # LLMVoX's end of audio: codebook entry 453, read as "stop" once the text has been fed


class SpeechDecoder(nn.Module):
    """The trainable LLMVoX model: `text_embedding` (V_text x d_text) and `gpt`; code features are fixed."""

    def __init__(self, gpt: GPT, text_table: Tensor, code_features: Tensor):
        super().__init__()
        d_text, d_code = text_table.shape[1], code_features.shape[1]
        if d_text + d_code != gpt.config.n_embd:
            raise ValueError(
                f"text embedding width {d_text} + codebook width {d_code} != decoder width {gpt.config.n_embd}"
            )
        if code_features.shape[0] < gpt.config.vocab_size:
            raise ValueError(
                f"codec has {code_features.shape[0]} codes but the decoder predicts {gpt.config.vocab_size}"
            )
        self.gpt = gpt
        self.text_embedding = nn.Embedding.from_pretrained(text_table.float().clone(), freeze=False)
        self.register_buffer("code_features", code_features.float().clone(), persistent=False)

    @property
    def config(self):
        return self.gpt.config

    def inputs(self, text_ids: Tensor, prev_codes: Tensor) -> Tensor:
        """Step inputs (..., n_embd) for text ids and previous codes of the same shape (NO_CODE = zeros)."""
        text = self.text_embedding(text_ids)
        has_code = prev_codes >= 0
        feats = self.code_features[prev_codes.clamp(min=0)] * has_code.unsqueeze(-1).to(text.dtype)
        return F.normalize(torch.cat([text, feats], dim=-1), p=2, dim=-1, eps=1e-8)

    def forward(self, text_ids: Tensor, prev_codes: Tensor) -> Tensor:
        """Training/prefill: logits (B, T, vocab) for whole sequences."""
        return self.gpt(self.inputs(text_ids, prev_codes))

    def new_cache(self, batch: int = 1, length: int = 256) -> KVCache:
        return self.gpt.new_cache(batch, length)

    @torch.inference_mode()
    def step(self, text_ids: Tensor, prev_codes: Tensor, positions: Tensor, cache: KVCache,
             max_position: int | None = None, probe: HeadProbe | None = None) -> Tensor:
        """One step for B streams (all (B,) int64): float32 logits (B, vocab); `probe` as `GPT.step`."""
        return self.gpt.step(self.inputs(text_ids, prev_codes), positions, cache, max_position, probe)
