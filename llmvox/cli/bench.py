"""`llmvox bench decoder`: decoder speed beside the machine's memory-bandwidth ceiling.

Other benchmarks (`bench stream`, `bench train`) live in their own modules and join the group with
`command_group(subparsers, "bench", ...)`.
"""

from __future__ import annotations

import argparse
import sys

from llmvox.cli.common import add_flag, command_group, write_bench_results

BENCH_HELP = "measure speed on this machine (results to a JSON file)"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = command_group(subparsers, "bench", BENCH_HELP).add_parser(
        "decoder", help="decoder tokens/s vs. the memory-bandwidth ceiling",
        description="Single-stream and batched decoder tokens/s at the released size (4 x 768, 4096 codes), "
        "fp32 and bf16, beside the bound a plain matrix-vector product sets on the same weights.",
    )
    add_flag(p, "json", metavar="OUT.json", required=True, help="write the results here")
    add_flag(p, "steps", type=int, default=200, help="decoder steps per measurement (default 200)")
    add_flag(p, "checkpoint", metavar="PATH", help="an LLMVoX checkpoint (default: random released-size weights)")
    add_flag(p, "bundle", metavar="DIR", help="time a bundle's decoder instead (e.g. llmvox/voices/default: the "
             "embedded voice); with --with_codec its own codec decodes the original loop's chunks")
    add_flag(p, "threads", type=int, default=None, help="torch threads (default: torch's choice)")
    add_flag(p, "with_codec", action="store_true",
             help="include codec chunk decodes in the original-loop figure (full-size codec, or the bundle's)")
    p.set_defaults(func=run_decoder)


def run_decoder(args: argparse.Namespace) -> int:
    import torch

    from llmvox.bench.decoder import run_decoder_bench
    from llmvox.errors import LLMVoXError

    if args.steps < 10:
        raise LLMVoXError("--steps must be at least 10")
    if args.bundle and args.checkpoint:
        raise LLMVoXError("give --checkpoint or --bundle, not both")
    if args.threads:
        torch.set_num_threads(args.threads)
    codec = None
    if args.with_codec and args.bundle:
        from llmvox.bundle import load_bundle_codec

        codec = load_bundle_codec(args.bundle).eval()
    elif args.with_codec:
        from llmvox.codec.config import CodecConfig
        from llmvox.codec.wavtokenizer import WavTokenizer

        codec = WavTokenizer(CodecConfig()).eval()
    result = run_decoder_bench(steps=args.steps, checkpoint=args.checkpoint, bundle=args.bundle, codec=codec,
                               log=lambda s: print(s, file=sys.stderr))
    return write_bench_results(args, result)
