"""`llmvox bench frontend`: milliseconds per word for each text front-end (bytes, phonemes), streamed."""

from __future__ import annotations

import argparse
import sys

from llmvox.cli.bench import BENCH_HELP
from llmvox.cli.common import add_flag, command_group, write_bench_results


def register(subparsers: argparse._SubParsersAction) -> None:
    p = command_group(subparsers, "bench", BENCH_HELP).add_parser(
        "frontend", help="text front-end cost per streamed word (byt5, phonemes)",
        description="Push every sentence of a text file word by word through each text front-end's reader, "
                    "as the engine does, and time each word.")
    add_flag(p, "json", metavar="OUT.json", required=True, help="write the results here")
    add_flag(p, "sentences", default="llmvox/voices/heldout_sentences.txt",
             help="one sentence per line (default: the held-out sentences)")
    add_flag(p, "repeats", type=int, default=3, help="passes per sentence; the fastest is kept (default 3)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llmvox.bench.frontend import run_frontend_bench
    from llmvox.bench.intelligibility import _spoken, read_sentences

    sentences = [_spoken(s) for s in read_sentences(args.sentences)]  # what the stream reads: normalised
    result = run_frontend_bench(sentences, repeats=max(1, args.repeats))
    for kind, r in result["frontends"].items():
        print(f"{kind:9s} {r['ms_per_word_median']:.3f} ms/word median, {r['ms_per_word_p95']:.3f} p95, "
              f"{r['ms_per_sentence_end_median']:.3f} ms per sentence end, "
              f"at most {r['words_held_back_max']} word(s) held back", file=sys.stderr)
    return write_bench_results(args, result)
