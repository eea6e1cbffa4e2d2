"""How a run's decoder starts: its sizes, weights, text table and text front-end, new or from a checkpoint.

A checkpoint's sizes win over the flags, and its text table and front-end are kept (a resumed run
cannot change how it reads); a new text table is random rows scaled to the codebook (no ByT5 weights
offline), or a T5 model's embedding (the original).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from llmvox.errors import LLMVoXError
from llmvox.model.gpt import GPT, GPTConfig
from llmvox.model.speech_decoder import SpeechDecoder
from llmvox.text.frontend import TextFrontend, frontend_from_config, new_frontend
from llmvox.text.tokenizer import TEXT_VOCAB_SIZE
from llmvox.train.config import TrainConfig, parse_text_table_source


def build_decoder(cfg: TrainConfig, ckpt: dict[str, Any] | None, weights_source: str, code_features: torch.Tensor,
                  codebook_size: int, device: torch.device,
                  info: Callable[[str], None]) -> tuple[SpeechDecoder, bool]:
    """(decoder in train mode on `device`, whether its text table is frozen); `cfg` takes a checkpoint's sizes."""
    gconf = _decoder_config(cfg, ckpt, codebook_size, info)
    try:
        gpt = GPT(gconf)
    except ValueError as exc:
        raise LLMVoXError(f"bad model sizes: {exc}") from None
    if ckpt is not None:
        from llmvox.model.checkpoint import load_state_strict, strip_compiled_prefix

        load_state_strict(gpt, strip_compiled_prefix(ckpt["model"]), weights_source)
    table, frozen = initial_text_table(cfg, code_features, ckpt)
    try:
        decoder = SpeechDecoder(gpt, table, code_features)
    except ValueError as exc:
        raise LLMVoXError(str(exc)) from None
    decoder.text_embedding.weight.requires_grad_(not frozen)
    decoder.to(device).train()
    return decoder, frozen


def _decoder_config(cfg: TrainConfig, ckpt: dict[str, Any] | None, codebook_size: int,
                    info: Callable[[str], None]) -> GPTConfig:
    if ckpt is not None:
        args = dict(ckpt["model_args"])
        args["dropout"] = cfg.dropout
        gconf = GPTConfig.from_dict(args)
        if (gconf.n_layer, gconf.n_head, gconf.n_embd) != (cfg.n_layer, cfg.n_head, cfg.n_embd):
            info(f"using the checkpoint's sizes: {gconf.n_layer} layers x {gconf.n_embd}, {gconf.n_head} heads")
        cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.bias = (
            gconf.n_layer, gconf.n_head, gconf.n_embd, gconf.block_size, gconf.bias)
    else:
        gconf = GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                          bias=cfg.bias, vocab_size=codebook_size, dropout=cfg.dropout)
    if gconf.vocab_size != codebook_size:
        raise LLMVoXError(f"the decoder predicts {gconf.vocab_size} codes but the codec has {codebook_size}")
    return gconf


def initial_text_table(cfg: TrainConfig, code_features: torch.Tensor,
                       ckpt: dict[str, Any] | None) -> tuple[torch.Tensor, bool]:
    """(table, frozen): the checkpoint's own table, a T5 model's, or random rows."""
    kind, path = parse_text_table_source(cfg)
    code_dim = code_features.shape[1]
    if ckpt is not None and isinstance(ckpt.get("text_embedding"), torch.Tensor):
        table = ckpt["text_embedding"].float()
        frozen = bool(ckpt.get("llmvox", {}).get("text_table_frozen", False))
        if cfg.freeze_text_table is not None:
            frozen = cfg.freeze_text_table
        return table, frozen
    if ckpt is not None and kind == "random":
        raise LLMVoXError("the checkpoint has no text table of its own (an original LLMVoX checkpoint?): give "
                          "the one it was trained with, --encoder_model_path T5_FOLDER")
    text_dim = cfg.n_embd - code_dim
    if kind == "t5":
        from llmvox.model.embedding import load_t5_text_embedding

        table = load_t5_text_embedding(path)
        if table.shape[1] != text_dim:
            raise LLMVoXError(f"T5 text table width {table.shape[1]} + codebook width {code_dim} != "
                              f"--n_embd {cfg.n_embd}")
        frozen = True if cfg.freeze_text_table is None else cfg.freeze_text_table
        return table, frozen
    if text_dim < 1:
        raise LLMVoXError(f"--n_embd {cfg.n_embd} leaves no room for the text embedding: the codebook is "
                          f"{code_dim} wide (n_embd = text width + {code_dim})")
    norm = float(code_features.norm(dim=1).mean())
    table = random_text_table(TEXT_VOCAB_SIZE, text_dim, norm, cfg.seed)
    return table, bool(cfg.freeze_text_table)


def random_text_table(rows: int, dim: int, target_norm: float, seed: int) -> torch.Tensor:
    """Random rows scaled to `target_norm` (the codebook's mean row norm): after the L2 normalisation
    of [text, code], text and code then start with equal weight."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(rows, dim, generator=g)
    return table * (target_norm / table.norm(dim=1, keepdim=True).clamp_min(1e-8))


def choose_text_frontend(cfg: TrainConfig, ckpt: dict[str, Any] | None, resumed: bool,
                         info: Callable[[str], None]) -> TextFrontend:
    """The run's text front-end: a resumed run keeps its checkpoint's (phoneme table included)."""
    saved = (ckpt or {}).get("llmvox", {}).get("text_frontend") or {"kind": "byt5"}
    if ckpt is not None and saved.get("kind") == cfg.text_frontend:
        return frontend_from_config(saved)
    if resumed:
        raise LLMVoXError(f"the checkpoint was trained with the {saved.get('kind')} text front-end, not "
                          f"--text_frontend {cfg.text_frontend}: a run cannot change how it reads")
    if ckpt is not None:
        info(f"warning: warm start from a {saved.get('kind')} decoder with the {cfg.text_frontend} "
             "front-end: its text table rows are read as new symbols")
    return new_frontend(cfg.text_frontend)
