"""`llmvox data tokenize`: encode a dataset once into the memory-mapped training cache.

Rerun the same command to continue an interrupted run or to add the new entries of a grown dataset;
utterances already in the cache are not encoded again.
"""

from __future__ import annotations

import argparse

from llmvox.cli.common import add_flag


def register(subparsers: argparse._SubParsersAction) -> None:
    from llmvox.cli.data import data_subparsers

    p = data_subparsers(subparsers).add_parser(
        "tokenize", help="encode a dataset with the codec into a training cache (codes + text ids)",
        description="Encode every utterance of a dataset JSON once with the codec into a sharded, "
        "memory-mapped cache that `llmvox train --data_path CACHE_DIR` reads. Incremental and resumable; "
        "a cache holds codes of one codec only.")
    add_flag(p, "data_path", required=True, metavar="DATA.json", help="dataset JSON (original format)")
    add_flag(p, "cache_dir", required=True, metavar="DIR", help="cache folder (created or continued)")
    add_flag(p, "speech_data_folder", metavar="DIR",
             help="original convention: audio is DIR/<speech_file or id.wav>")
    add_flag(p, "wav_config_path", metavar="PATH", help="WavTokenizer YAML config")
    add_flag(p, "wav_model_path", metavar="PATH", help="WavTokenizer checkpoint (.ckpt)")
    add_flag(p, "bundle", metavar="DIR", help="take the codec from this llmvox bundle instead")
    add_flag(p, "device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    add_flag(p, "on_error", choices=["skip", "fail"], default="skip",
             help="bad entries: skip and list them in DIR/problems.json (default), or stop at the first")
    add_flag(p, "shard_size", type=int, default=1000, help="utterances per shard (default 1000)")
    add_flag(p, "threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add_flag(p, "workers", type=int, default=1,
             help="encoding processes of one thread each (default 1); the codec's LSTM keeps one core "
                  "busy however many threads it has, so more cores need more processes")
    add_flag(p, "no_progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_tokenize)


def run_tokenize(args: argparse.Namespace) -> int:
    import json
    import sys

    import torch

    from llmvox.errors import LLMVoXError
    from llmvox.train.cache_writer import tokenize_dataset
    from llmvox.train.distributed import resolve_train_device
    from llmvox.train.training_data import load_codec_source

    if args.threads:
        torch.set_num_threads(args.threads)
    codec, source = load_codec_source(args.wav_config_path, args.wav_model_path, args.bundle)
    if codec is None:
        raise LLMVoXError("give the codec: --wav_config_path and --wav_model_path, or --bundle DIR")
    device = resolve_train_device(args.device)
    if args.workers > 1 and device.type != "cpu":
        raise LLMVoXError("--workers is for CPU encoding; on a GPU one process is the fast way")
    codec.to(device)
    report = tokenize_dataset(args.data_path, args.cache_dir, codec, codec_source=source or "",
                              on_error=args.on_error, speech_data_folder=args.speech_data_folder,
                              shard_size=args.shard_size, progress=not args.no_progress,
                              log_fn=lambda s: print(s, file=sys.stderr), workers=args.workers)
    print(json.dumps(report, indent=1))
    return 0
