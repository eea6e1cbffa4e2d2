"""`llmvox bench train`: training tokens/s (released and small decoder, fp32 and bf16) vs. matmul FLOP/s."""

from __future__ import annotations

import argparse

from llmvox.cli.common import add_flag, command_group, write_bench_results


def register(subparsers: argparse._SubParsersAction) -> None:
    from llmvox.cli.bench import BENCH_HELP

    p = command_group(subparsers, "bench", BENCH_HELP).add_parser(
        "train", help="training tokens/s vs. the machine's matmul FLOP/s",
        description="Full trainer steps (forward, backward, clipping, AdamW) on random data, batch 8 x 512 "
        "steps by default, for the released decoder (4 x 768, 4096 codes) and a small one (6 x 384, 1024 codes), "
        "in fp32 and bf16 autocast, beside the measured FLOP/s of a matrix product of the same shape.")
    add_flag(p, "json", metavar="OUT.json", required=True, help="write the results here")
    add_flag(p, "sizes", default="released,small", help="comma list of released, small, tiny (default released,small)")
    add_flag(p, "steps", type=int, default=3, help="timed steps per measurement, after one warm-up (default 3)")
    add_flag(p, "batch_size", type=int, default=8, help="utterances per step (default 8)")
    add_flag(p, "seq_len", type=int, default=512, help="decoder steps per utterance (default 512)")
    add_flag(p, "threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.set_defaults(func=run_bench_train)


def run_bench_train(args: argparse.Namespace) -> int:
    import sys

    import torch

    from llmvox.bench.train import SIZES, run_train_bench
    from llmvox.errors import LLMVoXError

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or not sizes:
        raise LLMVoXError(f"--sizes: unknown {unknown or args.sizes!r}; choose from {', '.join(SIZES)}")
    if args.steps < 1 or args.batch_size < 1 or args.seq_len < 2:
        raise LLMVoXError("--steps and --batch_size must be >= 1, --seq_len >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_train_bench(sizes=sizes, batch_size=args.batch_size, seq_len=args.seq_len, steps=args.steps,
                             log=lambda s: print(s, file=sys.stderr))
    return write_bench_results(args, result)
