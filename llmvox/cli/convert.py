"""`llmvox convert`: checkpoints -> one llmvox bundle folder (safetensors + config.json).

Two sources: the original release (LLMVoX checkpoint + charsiu T5 folder + WavTokenizer YAML/ckpt), or a
checkpoint written by `llmvox train`, which carries its learned text table, so no T5 folder is needed; the
latter is how a milestone is taken from a training run that is still going.
"""

from __future__ import annotations

import argparse
import sys

from llmvox.cli.common import add_flag


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("convert", help="turn the original checkpoints (or a training checkpoint) into a bundle",
                              description="Read an LLMVoX checkpoint, a charsiu T5 folder and a WavTokenizer "
                              "YAML + checkpoint; write one bundle folder that loads without pickle. A checkpoint "
                              "from `llmvox train` needs no T5 folder: its text table is inside.")
    add_flag(p, "llmvox_checkpoint_path", required=True, metavar="PATH",
             help="LLMVoX decoder checkpoint (.pt): the original, or one written by llmvox train")
    add_flag(p, "encoder_model_path", metavar="PATH",
             help="charsiu ByT5 g2p T5 folder (the text table; not needed for llmvox train checkpoints)")
    add_flag(p, "wav_config_path", metavar="PATH", help="WavTokenizer YAML config")
    add_flag(p, "wav_model_path", metavar="PATH", help="WavTokenizer checkpoint (.ckpt)")
    add_flag(p, "codec", metavar="DIR", help="instead of the two paths above, for a llmvox train checkpoint: the "
             "codec of a bundle or of a `llmvox codec train` milestone folder")
    add_flag(p, "tokenizer_path", metavar="PATH", help="ByT5 tokenizer folder (checked, not needed)")
    add_flag(p, "out", required=True, metavar="DIR", help="bundle folder to write")
    add_flag(p, "dtype", choices=["float32", "bfloat16", "float16"], default="float32",
             help="storage precision of the weights (default float32)")
    add_flag(p, "name", default=None, help="voice name stored in the bundle")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from llmvox.errors import LLMVoXError

    dtype = getattr(torch, args.dtype)
    wav_paths = args.wav_config_path is not None and args.wav_model_path is not None
    if args.codec is not None and (args.wav_config_path or args.wav_model_path or args.encoder_model_path):
        raise LLMVoXError("--codec DIR is for llmvox train checkpoints; do not combine it with the WavTokenizer "
                          "paths or --encoder_model_path")
    if args.codec is None and not wav_paths:
        raise LLMVoXError("give the codec: --wav_config_path and --wav_model_path, or --codec DIR")
    if args.encoder_model_path is None:
        from llmvox.train.checkpoints import export_bundle_from_checkpoint

        if args.codec is not None:
            from llmvox.bundle import load_bundle_codec

            codec = load_bundle_codec(args.codec)
        else:
            from llmvox.codec.checkpoint import load_wavtokenizer

            codec = load_wavtokenizer(args.wav_config_path, args.wav_model_path)
        folder = export_bundle_from_checkpoint(args.llmvox_checkpoint_path, codec, args.out, dtype=dtype,
                                               name=args.name)
    else:
        from llmvox.api import LLMVoX

        tts = LLMVoX.from_original(args.llmvox_checkpoint_path, args.encoder_model_path, args.wav_config_path,
                                   args.wav_model_path, args.tokenizer_path)
        if args.name:
            tts.name = args.name
        folder = tts.save_pretrained(args.out, dtype=dtype)
    print(f"wrote bundle {folder}", file=sys.stderr)
    return 0
