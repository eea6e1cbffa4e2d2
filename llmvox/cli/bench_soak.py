"""`llmvox bench soak`: RSS growth and errors of a real server under mixed load for N seconds."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmvox.cli.bench_stream import BENCH_HELP
from llmvox.cli.common import add_flag, command_group


def register(subparsers: argparse._SubParsersAction) -> None:
    p = command_group(subparsers, "bench", BENCH_HELP).add_parser(
        "soak", help="a real server under mixed load for N seconds: RSS growth and error count",
        description="Starts `llmvox serve` (the embedded voice; with --chat_type voice also SmolLM2 and Whisper "
                    "base) and keeps --concurrency clients sending a seeded mix of speech, /tts, WebSocket, "
                    "early-leaving, chat and bad requests; samples the server's RSS once a second.",
    )
    add_flag(p, "json", metavar="OUT.json", required=True, help="write the results here")
    add_flag(p, "seconds", type=float, default=600.0, help="how long to load the server (default 600)")
    add_flag(p, "warmup", type=float, default=30.0,
             help="seconds before the RSS baseline is taken (default 30; at most a third of --seconds)")
    add_flag(p, "concurrency", type=int, default=4, help="clients at once (default 4)")
    add_flag(p, "chat_type", choices=["tts", "text", "voice"], default="voice",
             help="the server's chat type: tts (speech only), text (+ SmolLM2), voice (+ Whisper; default)")
    add_flag(p, "bundle", help="the voice (default: the embedded one)")
    add_flag(p, "dtype", choices=["float32", "bfloat16"], default="bfloat16", help="the server's decoder precision")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llmvox.bench.soak import run_soak
    from llmvox.errors import LLMVoXError

    if not args.seconds > 0 or args.warmup < 0 or args.concurrency < 1:
        raise LLMVoXError("--seconds must be positive, --warmup not negative and --concurrency at least 1")
    server_args = ["--dtype", args.dtype] + (["--bundle", args.bundle] if args.bundle else [])
    result = run_soak(seconds=args.seconds, concurrency=args.concurrency, warmup=args.warmup,
                      chat_type=args.chat_type, server_args=server_args, log=lambda s: print(s, file=sys.stderr))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return 0
