"""`llmvox bench soak`: RSS growth and errors of a real server under mixed load for N seconds."""

from __future__ import annotations

import argparse
import math
import sys

from llmvox.cli.bench_stream import BENCH_HELP, _original_voice_args
from llmvox.cli.common import add_flag, add_voice_args, command_group, write_bench_results


def register(subparsers: argparse._SubParsersAction) -> None:
    p = command_group(subparsers, "bench", BENCH_HELP).add_parser(
        "soak", help="a real server under mixed load for N seconds: RSS growth and error count",
        description="Starts `llmvox serve` on a free loopback port (by default --chat_type voice: the embedded "
                    "voice, SmolLM2 and Whisper base) and keeps --concurrency clients sending a seeded mix of "
                    "speech (wav, pcm, SSE), /tts, WebSocket sessions, clients that leave after the first chunk, "
                    "chat turns and bad requests; samples the server's RSS once a second. Errors are counted in "
                    "the JSON (the exit code stays 0).",
    )
    add_flag(p, "json", metavar="OUT.json", required=True, help="write the results here")
    add_flag(p, "seconds", type=float, default=600.0, help="how long to load the server (default 600)")
    add_flag(p, "warmup", type=float, default=30.0,
             help="seconds before the RSS baseline is taken (default 30; at most a third of --seconds)")
    add_flag(p, "concurrency", type=int, default=4, help="clients at once (default 4)")
    add_flag(p, "chat_type", choices=["tts", "text", "voice"], default="voice",
             help="the server's chat type: tts (speech only), text (+ SmolLM2), voice (+ Whisper base; default)")
    add_flag(p, "seed", type=int, default=0, help="seeds every client's picks from the mix (default 0)")
    add_voice_args(p, device=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llmvox.bench.soak import run_soak, summary_line
    from llmvox.errors import LLMVoXError

    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise LLMVoXError(f"--seconds must be a positive number (got {args.seconds:g})")
    if not (math.isfinite(args.warmup) and args.warmup >= 0):
        raise LLMVoXError(f"--warmup must be zero or more seconds (got {args.warmup:g})")
    if args.concurrency < 1:
        raise LLMVoXError(f"--concurrency must be at least 1 (got {args.concurrency})")
    voice_args = _original_voice_args(args)
    if args.bundle and voice_args:
        raise LLMVoXError(f"give either --bundle or the original model paths, not both (also got {voice_args[0]})")
    voice_args = ["--bundle", args.bundle] if args.bundle else voice_args
    result = run_soak(seconds=args.seconds, concurrency=args.concurrency, warmup=args.warmup,
                      chat_type=args.chat_type, seed=args.seed, voice_args=voice_args,
                      log=lambda s: print(s, file=sys.stderr))
    return write_bench_results(args, result, summary_line(result))
