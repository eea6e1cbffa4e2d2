"""`llmvox train` (and `python train.py`): the decoder trainer with the original flag names.

Flags take `--flag=value` or `--flag value`; booleans accept True/False/1/0/yes/no (a bare `--compile`
means True), unlike the original's `type=bool`, for which `--compile=False` was True.
Under `torchrun --standalone --nproc_per_node=N train.py ...` it trains with DDP.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing

from llmvox.cli.common import add_flag

_HELP: dict[str, str] = {
    "data_path": "dataset JSON (tokenised on the fly into --cache_dir) or a tokenised cache folder",
    "cache_dir": "where a dataset JSON is tokenised (default OUT_DIR/cache)",
    "speech_data_folder": "original convention: audio is SPEECH_DATA_FOLDER/<speech_file or id.wav>",
    "on_error": "bad dataset entries: skip (listed in the cache's problems.json) or fail",
    "val_fraction": "held-out share of utterances, chosen by id hash (default 0.02)",
    "wav_config_path": "WavTokenizer YAML config (codec: to tokenise, check the cache, export)",
    "wav_model_path": "WavTokenizer checkpoint (.ckpt)",
    "bundle": "take the codec from this llmvox bundle instead of the two paths above",
    "n_layer": "transformer layers (default 4)",
    "n_head": "attention heads (default 8)",
    "n_embd": "decoder width = text table width + codebook width (default 768 = 256 + 512)",
    "block_size": "maximum sequence length / position table size (default 8192)",
    "bias": "biases in Linear and LayerNorm (default False)",
    "dropout": "dropout probability (default 0)",
    "init_text_table": "random (learned from scratch) or t5:PATH (charsiu ByT5 folder) (default random)",
    "encoder_model_path": "original flag: the T5 folder for the text table (= --init_text_table t5:PATH)",
    "tokenizer_path": "original flag; checked, not needed (ids are UTF-8 bytes + 3)",
    "freeze_text_table": "keep the text table fixed (default: frozen when from T5, trained when random)",
    "out_dir": "checkpoints and logs go here (default out)",
    "checkpoint_filename": "checkpoint file name inside OUT_DIR (default ckpt.pt)",
    "init_from": "scratch, resume (OUT_DIR/CHECKPOINT_FILENAME) or a checkpoint path to start from",
    "overwrite": "allow --init_from=scratch to replace an existing checkpoint",
    "device": "auto, cpu, cuda or cuda:N (default auto)",
    "dtype": "auto, float32, bfloat16 or float16 autocast (auto: bf16 where the device supports it)",
    "backend": "DDP backend: auto (gloo on CPU, nccl on CUDA), gloo or nccl",
    "compile": "torch.compile the decoder",
    "seed": "seed for initialisation, data order and dropout (default 1337)",
    "num_threads": "torch CPU threads (default: torch's choice; cores / processes under torchrun)",
    "batch_size": "utterances per micro-batch (default 8)",
    "gradient_accumulation_steps": "micro-batches per optimizer step, in total over all processes (default 1)",
    "learning_rate": "peak learning rate (default 3e-4)",
    "max_iters": "optimizer steps to train to (default 5000)",
    "weight_decay": "AdamW weight decay of 2-D GPT weights (default 0.1)",
    "beta1": "AdamW beta1 (default 0.9)",
    "beta2": "AdamW beta2 (default 0.95)",
    "grad_clip": "clip the gradient norm to this (0 = off; default 1.0)",
    "decay_lr": "warmup + cosine schedule (default True)",
    "warmup_iters": "linear warmup steps (default 100)",
    "lr_decay_iters": "step where the cosine reaches min_lr (default max_iters)",
    "min_lr": "final learning rate (default 3e-6)",
    "max_seq_len": "crop sequences to their first N steps (default block_size)",
    "max_codes": "train only on utterances of at most N codes (short sentences first; resume without it)",
    "guided_attn_heads": "guided attention: LAYER.HEAD list (e.g. 2.0,3.1) of heads taught to read the "
                         "text in order (training only; the checkpoint format is unchanged)",
    "guided_attn_weight": "weight of the guided-attention loss (default 1.0)",
    "guided_attn_sigma": "width of the guided diagonal, as a fraction of the sentence (default 0.2)",
    "phoneme_ctc_weight": "> 0: a training-only CTC head must spell the teacher's phonemes (hibari g2p) from "
                          "the decoder's states: a pronunciation target (default 0 = off)",
    "phoneme_ctc_layer": "the layer whose output the phoneme CTC head reads (default: the middle one)",
    "phoneme_ctc_after_text": "the CTC head reads only the steps after the text, so a decoder that reads "
                              "phonemes cannot meet it by copying its input (default False)",
    "text_frontend": "how the decoder reads text: byt5 (bytes, as the original; default) or phonemes (misaki "
                     "phonemes from the hibari g2p, word by word); stored in the checkpoint and bundle",
    "bucket_window": "length bucketing: sort within windows of this many batches (default 64)",
    "eval_interval": "held-out eval + checkpoint every N steps (default 500)",
    "eval_iters": "held-out batches per eval (0 = all; default 20)",
    "log_interval": "log the train loss every N steps (default 10)",
    "eval_only": "evaluate the held-out loss and exit",
    "always_save_checkpoint": "also keep a copy of every checkpoint as ckpt_ITER.pt",
    "wandb_log": "log to Weights & Biases",
    "wandb_project": "W&B project (default llmvox)",
    "wandb_run_name": "W&B run name",
    "wandb_mode": "offline (default; `wandb sync` later), online or disabled",
    "tensorboard_log": "write TensorBoard events to OUT_DIR/tensorboard",
    "progress": "show a progress bar (default True)",
    "export_bundle": "after training, write an llmvox bundle (decoder + text table + codec) here",
    "export_dtype": "bundle storage precision: float32, bfloat16 or float16 (default float32)",
    "dataset": "original flag; ignored",
    "is_train": "original flag; ignored",
}
_CHOICES = {"on_error": ["skip", "fail"], "dtype": ["auto", "float32", "bfloat16", "float16"],
            "backend": ["auto", "gloo", "nccl"], "export_dtype": ["float32", "bfloat16", "float16"],
            "wandb_mode": ["offline", "online", "disabled"], "text_frontend": ["byt5", "phonemes"]}


def str2bool(value: str | bool) -> bool:
    """True/False, 1/0, yes/no, on/off (any case)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "t", "yes", "y", "on"):
        return True
    if text in ("0", "false", "f", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {value!r}")


def _base_type(annotation: typing.Any) -> type:
    """int for `int | None`, etc."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def add_train_args(p: argparse.ArgumentParser) -> None:
    from llmvox.train.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind = _base_type(hints[f.name])
        kwargs: dict[str, typing.Any] = {"default": f.default, "help": _HELP.get(f.name)}
        if kind is bool:
            kwargs.update(type=str2bool, nargs="?", const=True, metavar="BOOL")
        else:
            kwargs["type"] = kind
            if f.name in _CHOICES:
                kwargs["choices"] = _CHOICES[f.name]
        add_flag(p, f.name, **kwargs)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train an LLMVoX decoder on a dataset (original flags; torchrun for DDP)",
        description="Train the LLMVoX speech decoder. DATA_PATH is a dataset JSON (tokenised once into a "
        "cache) or a cache from `llmvox data tokenize`. Writes OUT_DIR/ckpt.pt in the original checkpoint "
        "format; --export_bundle DIR also writes a bundle for `llmvox synthesize --bundle DIR`.")
    add_train_args(p)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from llmvox.train.config import TrainConfig

    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def run(args: argparse.Namespace) -> int:
    import os

    from tqdm import tqdm

    from llmvox.train.trainer import train

    cfg = config_from_args(args)
    master = int(os.environ.get("RANK", "0")) == 0
    result = train(cfg, log_fn=lambda s: tqdm.write(s, file=sys.stderr))
    if master:
        last = f", last train loss {result.losses[-1][1]:.4f}" if result.losses else ""
        val = f", held-out loss {result.val_loss:.4f}" if result.val_loss is not None else ""
        print(f"iter {result.iter_num}{last}{val}; checkpoint {result.checkpoint}"
              + (f"; bundle {result.bundle}" if result.bundle else ""), file=sys.stderr)
    return 130 if result.interrupted else 0
