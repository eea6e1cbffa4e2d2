"""`llmvox convert`: the three original sources -> one llmvox bundle folder (safetensors + config.json)."""

from __future__ import annotations

import argparse
import sys

from llmvox.cli.common import add_flag


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("convert", help="turn the original checkpoints into an llmvox bundle",
                              description="Read an LLMVoX checkpoint, a charsiu T5 folder and a WavTokenizer "
                              "YAML + checkpoint; write one bundle folder that loads without pickle.")
    for name, help_text in (
        ("llmvox_checkpoint_path", "LLMVoX decoder checkpoint (.pt)"),
        ("encoder_model_path", "charsiu ByT5 g2p T5 folder"),
        ("wav_config_path", "WavTokenizer YAML config"),
        ("wav_model_path", "WavTokenizer checkpoint (.ckpt)"),
    ):
        add_flag(p, name, required=True, metavar="PATH", help=help_text)
    add_flag(p, "tokenizer_path", metavar="PATH", help="ByT5 tokenizer folder (checked, not needed)")
    add_flag(p, "out", required=True, metavar="DIR", help="bundle folder to write")
    add_flag(p, "dtype", choices=["float32", "bfloat16", "float16"], default="float32",
             help="storage precision of the weights (default float32)")
    add_flag(p, "name", default=None, help="voice name stored in the bundle")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from llmvox.api import LLMVoX

    tts = LLMVoX.from_original(args.llmvox_checkpoint_path, args.encoder_model_path, args.wav_config_path,
                               args.wav_model_path, args.tokenizer_path)
    if args.name:
        tts.name = args.name
    folder = tts.save_pretrained(args.out, dtype=getattr(torch, args.dtype))
    print(f"wrote bundle {folder}", file=sys.stderr)
    return 0
