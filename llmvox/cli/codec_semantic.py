"""`llmvox codec semantic`: Whisper encoder features of a corpus, for codec semantic distillation."""

from __future__ import annotations

import argparse

from llmvox.cli.common import add_flag


def register(subparsers: argparse._SubParsersAction) -> None:
    from llmvox.cli.codec import codec_subparsers

    p = codec_subparsers(subparsers).add_parser(
        "semantic", help="compute Whisper encoder features of a corpus (targets of --semantic_weight)",
        description="Run the Whisper encoder over every clip of a dataset JSON and store its features "
                    "(float16 memmap + index) in DIR; resumable. `llmvox codec train --semantic_dir DIR "
                    "--semantic_weight W` then teaches the codec's codes to predict them.",
    )
    add_flag(p, "data_path", metavar="JSON", required=True, help="dataset JSON")
    add_flag(p, "out_dir", metavar="DIR", required=True, help="feature store folder")
    add_flag(p, "asr_model", metavar="base|DIR", default="base",
             help="CTranslate2 Whisper folder (default: the embedded Whisper base)")
    add_flag(p, "threads", type=int, default=1, help="CPU threads (default 1)")
    p.add_argument("--no_progress", "--no-progress", dest="no_progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llmvox.train.codec_data import load_clips
    from llmvox.train.semantic import SemanticStore, build_semantic_store

    folder = build_semantic_store(load_clips(args.data_path), args.out_dir, model=args.asr_model,
                                  threads=args.threads, progress=not args.no_progress)
    store = SemanticStore(folder)
    print(f"{len(store.index)} clips, {store.dim}-dim features in {folder}")
    return 0
