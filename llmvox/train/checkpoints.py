"""Trainer checkpoints: which one a run starts from, what it saves, how it is read back, the bundle export.

The format is the original `torch.save` dict (`model`, `model_args`, `iter_num`, `optimizer`,
`config`) plus the keys that make a run resumable bit for bit: `text_embedding` (the learned text
table), `llmvox` (what the decoder was trained on), `train_state` (data position, every rank's RNG,
the grad scaler, counters) and, with the phoneme CTC loss, `phoneme_ctc`. A bundle folder reads as a
checkpoint without optimizer state (a warm start from a committed milestone); a bundle exported from a
run with the CTC loss keeps its head (`phoneme_ctc.safetensors`, training only: inference never reads
it) so that a warm start continues the head instead of shocking the decoder with a random one.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from llmvox.errors import LLMVoXError
from llmvox.model.gpt import GPT, GPTConfig
from llmvox.model.speech_decoder import SpeechDecoder
from llmvox.text.frontend import TextFrontend
from llmvox.text.tokenizer import PAD_ID, SENTENCE_END_ID
from llmvox.train.config import TrainConfig
from llmvox.train.distributed import DistEnv

if TYPE_CHECKING:
    from llmvox.train.phonemes import PhonemeCTC

CHECKPOINT_VERSION = 1
CTC_HEAD_FILE = "phoneme_ctc.safetensors"  # in a bundle: the phoneme CTC head, for warm starts


# --- reading -----------------------------------------------------------------------------------


def read_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A trainer checkpoint, or a bundle folder as one (weights and text table only: a warm start from a
    committed milestone when the full checkpoint with its optimizer state is gone)."""
    from llmvox.bundle import is_bundle
    from llmvox.model.checkpoint import read_torch_file

    if is_bundle(path):
        return _bundle_as_checkpoint(Path(path))
    ckpt = read_torch_file(path, "training checkpoint")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise LLMVoXError(f"{path} is not an LLMVoX checkpoint (expected a dict with 'model' and 'model_args')")
    return ckpt


def _bundle_as_checkpoint(folder: Path) -> dict[str, Any]:
    from llmvox.bundle import TEXT_TABLE_KEY, read_bundle_config, read_bundle_tensors

    config = read_bundle_config(folder)
    model = {k: v.float() for k, v in read_bundle_tensors(folder / "decoder.safetensors").items()}
    table = model.pop(TEXT_TABLE_KEY, None)
    if table is None or "decoder" not in config:
        raise LLMVoXError(f"{folder} is not a decoder bundle (no 'decoder' config or text table)")
    training = config.get("training", {})
    ckpt = {"model": model, "model_args": dict(config["decoder"]), "text_embedding": table,
            "iter_num": int(training.get("iter_num", 0)),
            "llmvox": {"codec_fingerprint": training.get("codec_fingerprint"),
                       "text_frontend": config.get("text_frontend") or {"kind": "byt5"}}}
    head = folder / CTC_HEAD_FILE
    if head.is_file() and "phoneme_ctc_layer" in training:
        ckpt["phoneme_ctc"] = {"layer": int(training["phoneme_ctc_layer"]),
                               "head": {k: v.float() for k, v in read_bundle_tensors(head).items()}}
    return ckpt


def starting_checkpoint(cfg: TrainConfig, ckpt_path: Path) -> tuple[dict[str, Any] | None, bool]:
    """(checkpoint, resumed): the run's own checkpoint (--init_from=resume), a warm start, or none."""
    if cfg.init_from == "resume":
        if not ckpt_path.is_file():
            raise LLMVoXError(f"--init_from=resume but {ckpt_path} does not exist")
        return read_training_checkpoint(ckpt_path), True
    if cfg.init_from != "scratch":
        return read_training_checkpoint(cfg.init_from), False
    if ckpt_path.exists() and not cfg.overwrite and not cfg.eval_only:
        raise LLMVoXError(f"{ckpt_path} exists: continue it with --init_from=resume, or pass "
                          "--overwrite to start again from scratch")
    return None, False


def check_same_codec(ckpt: dict[str, Any], data_codec: str) -> None:
    trained_on = ckpt.get("llmvox", {}).get("codec_fingerprint")
    if trained_on and trained_on != data_codec:
        raise LLMVoXError(f"the checkpoint was trained on codec {trained_on}, the data is from codec "
                          f"{data_codec}: a decoder cannot change codec")


# --- the resumable state -------------------------------------------------------------------------


@dataclass
class TrainState:
    """Where the loop is; saved (with RNG and scaler) as the checkpoint's `train_state`."""

    iter_num: int  # completed optimizer steps
    cursor: int  # micro-batches of the data order consumed, over all processes
    best_val_loss: float | None = None
    tokens_seen: int = 0
    elapsed_before: float = 0.0  # training seconds before this process
    wandb_run_id: str | None = None
    clock_start: float = field(default_factory=time.perf_counter)

    @classmethod
    def resumed_from(cls, ckpt: dict[str, Any] | None, accumulation_steps: int) -> TrainState:
        """The saved state of a resumed run's checkpoint; a new run's (`ckpt` None) starts at zero."""
        saved = ckpt.get("train_state", {}) if ckpt is not None else {}
        iter_num = int(ckpt["iter_num"]) if ckpt is not None else 0
        return cls(iter_num=iter_num, cursor=int(saved.get("sampler_cursor", iter_num * accumulation_steps)),
                   best_val_loss=saved.get("best_val_loss"), tokens_seen=int(saved.get("tokens_seen", 0)),
                   elapsed_before=float(saved.get("elapsed_seconds", 0.0)), wandb_run_id=saved.get("wandb_run_id"))

    def start_clock(self) -> None:
        self.clock_start = time.perf_counter()

    def as_saved(self, seed: int, rngs: list[dict[str, Any]], scaler: torch.amp.GradScaler) -> dict[str, Any]:
        return {
            "sampler_cursor": self.cursor,
            "seed": seed,
            "rng": rngs,
            "scaler": scaler.state_dict(),
            "best_val_loss": self.best_val_loss,
            "tokens_seen": self.tokens_seen,
            "elapsed_seconds": self.elapsed_before + time.perf_counter() - self.clock_start,
            "wandb_run_id": self.wandb_run_id,
        }


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def load_optimizer_state(ckpt: dict[str, Any], optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                         ckpt_path: Path) -> None:
    """A resumed run continues its optimizer and grad scaler."""
    if ckpt.get("optimizer"):
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as exc:
            raise LLMVoXError(f"{ckpt_path}: its optimizer state does not fit this run ({exc}); was "
                              "--freeze_text_table changed? To start a new run from these weights, use "
                              f"--init_from={ckpt_path} in a new --out_dir") from None
    state = ckpt.get("train_state", {})
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])


# --- writing -------------------------------------------------------------------------------------


class CheckpointWriter:
    """Saves the run to `path`: every rank must call `save` (their RNG states are gathered), rank 0 writes."""

    def __init__(self, path: Path, cfg: TrainConfig, env: DistEnv, decoder: SpeechDecoder,
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, cache, frontend: TextFrontend,
                 text_table_frozen: bool, ctc: PhonemeCTC | None = None,
                 ctc_optimizer: torch.optim.Optimizer | None = None) -> None:
        self.path, self.cfg, self.env = path, cfg, env
        self.decoder, self.optimizer, self.scaler = decoder, optimizer, scaler
        self.cache, self.frontend, self.frozen = cache, frontend, text_table_frozen
        self.ctc, self.ctc_optimizer = ctc, ctc_optimizer

    def save(self, state: TrainState) -> None:
        rngs = self.env.all_gather_object(rng_state(self.env.device))
        if self.env.master:
            self._write(state, rngs)
        self.env.barrier()

    def _write(self, state: TrainState, rngs: list[dict[str, Any]]) -> None:
        from llmvox.model.checkpoint import save_llmvox_checkpoint

        cfg, cache, gpt = self.cfg, self.cache, self.decoder.gpt
        extra = {
            "text_embedding": self.decoder.text_embedding.weight.detach().float().cpu(),
            "llmvox": {
                "checkpoint_version": CHECKPOINT_VERSION,
                "codec_fingerprint": cache.fingerprint,
                "data_fingerprint": cache.data_fingerprint(),
                "eoa_id": cache.eoa_id, "pad_id": PAD_ID, "sentence_end_id": SENTENCE_END_ID,
                "text_table_frozen": self.frozen,
                "text_frontend": self.frontend.config(),
                "world_size": self.env.world_size,
            },
            "train_state": state.as_saved(cfg.seed, rngs, self.scaler),
        }
        if self.ctc is not None:
            extra["phoneme_ctc"] = {"layer": self.ctc.layer, "head": self.ctc.head.state_dict(),
                                    "optimizer": self.ctc_optimizer.state_dict()}
        config = cfg.to_dict() | {"world_size": self.env.world_size, "vocab_size": gpt.config.vocab_size}
        save_llmvox_checkpoint(self.path, gpt, iter_num=state.iter_num, optimizer=self.optimizer.state_dict(),
                               config=config, extra=extra)
        if cfg.always_save_checkpoint:
            shutil.copyfile(self.path, Path(cfg.out_dir) / f"ckpt_{state.iter_num}.pt")


# --- export --------------------------------------------------------------------------------------


def export_bundle_from_checkpoint(ckpt_path: str | os.PathLike, codec, out_dir: str | os.PathLike, *,
                                  dtype: torch.dtype = torch.float32, name: str | None = None) -> Path:
    """A checkpoint written by the trainer + its codec -> an llmvox bundle folder."""
    from llmvox.bundle import save_bundle
    from llmvox.model.checkpoint import load_state_strict, strip_compiled_prefix
    from llmvox.train.cache import codec_fingerprint

    ckpt = read_training_checkpoint(ckpt_path)
    table = ckpt.get("text_embedding")
    if not isinstance(table, torch.Tensor):
        raise LLMVoXError(f"{ckpt_path} has no learned text table ('text_embedding'); it was not written by "
                          "llmvox train: give its T5 folder (--encoder_model_path) instead")
    meta = ckpt.get("llmvox", {})
    expected = meta.get("codec_fingerprint")
    if expected and expected != codec_fingerprint(codec):
        raise LLMVoXError(f"{ckpt_path} was trained on codec {expected}, but the codec given for the bundle is "
                          f"{codec_fingerprint(codec)}")
    config = GPTConfig.from_dict(dict(ckpt["model_args"]))
    config.dropout = 0.0
    gpt = GPT(config)
    load_state_strict(gpt, strip_compiled_prefix(ckpt["model"]), str(ckpt_path))
    SpeechDecoder(gpt, table, codec.codebook)  # checks that the sizes fit together
    # a decoder that misses its end-of-audio stops inside the positions it was trained on
    extra = {"name": name or Path(out_dir).name,
             "generation": {"max_audio_length": max(config.block_size - 24, 1)},
             "training": {"iter_num": int(ckpt.get("iter_num", 0)), "codec_fingerprint": expected}}
    if meta.get("text_frontend", {}).get("kind", "byt5") != "byt5":
        extra["text_frontend"] = meta["text_frontend"]
    ctc = ckpt.get("phoneme_ctc")
    if ctc:
        extra["training"]["phoneme_ctc_layer"] = int(ctc["layer"])
    folder = save_bundle(out_dir, gpt, table, codec, dtype=dtype, extra_config=extra)
    head = folder / CTC_HEAD_FILE
    if ctc:  # fp32: 68 K parameters, and a warm start continues exactly this head
        from safetensors.torch import save_file

        save_file({k: v.detach().float().cpu().contiguous() for k, v in ctc["head"].items()}, str(head))
        head.chmod(0o644)
    else:
        head.unlink(missing_ok=True)  # a re-export over an older bundle must not keep a stale head
    return folder
