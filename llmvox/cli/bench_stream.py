"""`llmvox bench stream`: time to first audio, real-time factor and throughput through the real server."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmvox.cli.common import add_flag, command_group

BENCH_HELP = "measure speed on this machine (results to a JSON file)"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = command_group(subparsers, "bench", BENCH_HELP).add_parser(
        "stream", help="streams through the real server: first audio, real-time factor, throughput",
        description="Starts `llmvox serve --chat_type tts` (or uses --url) and sends 1, 4 and 16 concurrent "
                    "/v1/audio/speech requests. Without --bundle it builds a random-weight voice at the released "
                    "sizes; random weights never stop by themselves, so each sentence is exactly "
                    "--codes_per_sentence codes long.",
    )
    add_flag(p, "json", metavar="OUT.json", required=True, help="write the results here")
    add_flag(p, "concurrency", default="1,4,16", help="comma-separated stream counts (default 1,4,16)")
    add_flag(p, "sentences", type=int, default=3, help="sentences per request (default 3)")
    add_flag(p, "codes_per_sentence", type=int, default=150, help="codes (75 per second) per sentence (default 150)")
    add_flag(p, "bundle", metavar="DIR", help="a voice bundle (default: random weights, released sizes)")
    add_flag(p, "url", help="measure a running server instead (its own settings apply)")
    add_flag(p, "api_key", help="the server's API key, if it has one")
    add_flag(p, "num_workers", type=int, default=2)
    add_flag(p, "threads", type=int, default=None, help="torch threads per worker thread in the server")
    add_flag(p, "chunk_join", choices=["context", "original"], default="context")
    add_flag(p, "dtype", choices=["float32", "bfloat16"], default="float32", help="the server's decoder precision")
    add_flag(p, "markdown", metavar="OUT.md", help="also write the README table here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llmvox.bench.stream import markdown_table, run_stream_bench
    from llmvox.errors import LLMVoXError

    try:
        levels = tuple(int(x) for x in args.concurrency.split(",") if x.strip())
    except ValueError:
        raise LLMVoXError(f"--concurrency must be comma-separated integers (got {args.concurrency!r})") from None
    if not levels or min(levels) < 1:
        raise LLMVoXError("--concurrency needs positive stream counts")
    if args.sentences < 1 or args.codes_per_sentence < 10:
        raise LLMVoXError("--sentences must be >= 1 and --codes_per_sentence >= 10")
    result = run_stream_bench(concurrency=levels, sentences=args.sentences,
                              codes_per_sentence=args.codes_per_sentence, url=args.url, bundle=args.bundle,
                              num_workers=args.num_workers, threads=args.threads, chunk_join=args.chunk_join,
                              api_key=args.api_key, extra_args=["--dtype", args.dtype],
                              log=lambda s: print(s, file=sys.stderr))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    table = markdown_table(result)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return 0
