"""`llmvox codec train`: train a WavTokenizer codec from an original-schema YAML on a dataset JSON.

Settings come from three layers, later ones winning: our defaults, the YAML (the original keys such
as `initial_learning_rate` plus our `llmvox_train` section), then the flags given on the command
line. On `--resume` the saved run's settings replace the first two layers, so a resume only needs
the flags that change (e.g. `--freeze_encoder` to start phase B, or a larger `--max_steps`).
"""

from __future__ import annotations

import argparse
from typing import Any

from llmvox.cli.common import add_flag

# flag -> (type, help). Every flag defaults to None so we can tell "given" from "default".
_SETTING_FLAGS: tuple[tuple[str, Any, str], ...] = (
    ("max_steps", int, "total optimiser steps of the run (default: YAML trainer.max_steps or 20000)"),
    ("batch_size", int, "crops per step (default 8)"),
    ("segment_seconds", float, "length of each random crop in seconds (default 1.0)"),
    ("learning_rate", float, "peak AdamW learning rate (default: YAML initial_learning_rate or 1e-3)"),
    ("warmup_steps", int, "linear warmup steps (default 200)"),
    ("encoder_lr_scale", float, "encoder learning rate relative to the decoder's (default 1.0)"),
    ("grad_clip", float, "gradient norm clip (default 5.0)"),
    ("mel_weight", float, "multi-resolution mel L1 weight (default: YAML mel_loss_coeff or 45)"),
    ("stft_weight", float, "multi-resolution STFT loss weight (default 15)"),
    ("commit_weight", float, "commitment loss weight (default 5)"),
    ("phase_weight", float, "phase-derivative loss weight at the head resolution (default 0: off)"),
    ("vq_warmup_steps", int, "steps without quantisation before the k-means codebook init (default 0)"),
    ("semantic_weight", float, "weight of the semantic distillation loss (default 0: off; needs --semantic_dir)"),
    ("semantic_dir", str, "Whisper feature store from `llmvox codec semantic` (targets of the semantic loss)"),
    ("eval_every", int, "evaluate on held-out clips every N steps (default 500)"),
    ("export_every", int, "also export an inference milestone every N steps (default 0: only on improvement)"),
    ("save_every", int, "write the full training state every N steps (default 200)"),
    ("log_every", int, "append a train.jsonl record every N steps (default 20)"),
    ("eval_clips", int, "corpus clips held out for evaluation (default 8; fixed at the first run)"),
    ("threads", int, "torch CPU threads (default 1)"),
    ("seed", int, "random seed (default 0)"),
)
_BOOL_FLAGS: tuple[tuple[str, str], ...] = (
    ("adversarial", "add the multi-period + multi-resolution discriminators (GAN fine-tuning)"),
    ("freeze_encoder", "freeze encoder and codebook (phase B: codes stop changing; backbone/head train)"),
    ("reinit_codebook", "with --init_weights: start with a fresh k-means codebook (after a VQ warm-up)"),
    ("bf16", "bf16 autocast for encoder/backbone/discriminators (default on)"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    from llmvox.cli.codec import codec_subparsers

    p = codec_subparsers(subparsers).add_parser(
        "train", help="train a WavTokenizer codec (original YAML schema) on a dataset JSON",
        description="Train a WavTokenizer-architecture codec with mel + multi-resolution STFT losses, an EMA "
                    "codebook and optional discriminators; resumable; writes DIR/wavtokenizer.ckpt + "
                    "DIR/config.yaml in the original layout.",
    )
    add_flag(p, "config", metavar="YAML", help="WavTokenizer YAML (original schema); not needed with --resume")
    add_flag(p, "data_path", metavar="JSON", required=True,
             help="dataset JSON (list of {speech_folder, speech_file, answer_text, id})")
    add_flag(p, "out_dir", metavar="DIR", required=True, help="run folder (state, checkpoints, logs, milestones)")
    for name, kind, help_text in _SETTING_FLAGS:
        add_flag(p, name, type=kind, default=None, help=help_text)
    for name, help_text in _BOOL_FLAGS:
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        p.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out_dir")
    add_flag(p, "init_weights", metavar="DIR", default=None,
             help="start from a milestone export (codec.safetensors + config.json) instead of random weights")
    p.add_argument("--no_progress", "--no-progress", dest="no_progress", action="store_true",
                   help="no progress bar")
    p.set_defaults(func=run_train)


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user actually passed on the command line."""
    names = [n for n, _, _ in _SETTING_FLAGS] + [n for n, _ in _BOOL_FLAGS]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from llmvox.codec.config import CodecConfig
    from llmvox.errors import LLMVoXError
    from llmvox.train.codec_config import CodecTrainSettings, settings_from_yaml
    from llmvox.train.codec_trainer import CodecTrainer

    overrides = given_settings(args)
    if args.resume:
        if args.config or args.init_weights:
            raise LLMVoXError("--resume continues the saved run; drop --config / --init_weights")
        trainer = CodecTrainer(CodecConfig(), CodecTrainSettings(), args.data_path, args.out_dir,
                               resume=True, overrides=overrides, progress=not args.no_progress)
    else:
        if not args.config:
            raise LLMVoXError("--config YAML is required (unless --resume)")
        config = CodecConfig.from_yaml(args.config)
        doc = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
        merged = {**settings_from_yaml(doc), **overrides}
        settings = CodecTrainSettings.from_dict(merged)
        trainer = CodecTrainer(config, settings, args.data_path, args.out_dir, progress=not args.no_progress,
                               init_weights=args.init_weights)
    s = trainer.settings
    print(f"codec train: step {trainer.step} -> {s.max_steps}, {len(trainer.data.clips)} training clips, "
          f"{len(trainer.eval_clips)} held out; batch {s.batch_size} x {s.segment_seconds:g} s; "
          f"{'phase B (encoder frozen)' if s.freeze_encoder else 'phase A'}"
          f"{', adversarial' if s.adversarial else ''}; out_dir {args.out_dir}", flush=True)
    trainer.fit()
    print(f"done: {Path(args.out_dir) / 'wavtokenizer.ckpt'} (config {Path(args.out_dir) / 'config.yaml'})")
    return 0
