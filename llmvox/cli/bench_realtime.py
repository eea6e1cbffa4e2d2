"""`llmvox bench realtime`: end of speech -> first audio over `WS /v1/realtime`, beside `/voicechat`."""

from __future__ import annotations

import argparse
import sys

from llmvox.cli.bench import BENCH_HELP
from llmvox.cli.common import DECODER_DTYPES, add_flag, command_group, write_bench_results


def register(subparsers: argparse._SubParsersAction) -> None:
    p = command_group(subparsers, "bench", BENCH_HELP).add_parser(
        "realtime", help="spoken turns over /v1/realtime (server VAD): end of speech -> first audio, beside /voicechat",
        description="Starts `llmvox serve --chat_type voice` (embedded voice, SmolLM2, Whisper base unless --bundle) "
                    "and streams questions spoken by the hibari teacher in real time over /v1/realtime with the "
                    "official openai client (20 ms pcm16 frames at 24 kHz, then silence), 1 and 4 concurrent "
                    "sessions; the same questions go to /voicechat. Reports p50/p95 of end of speech -> first "
                    "audio with its parts (VAD hang-over, ASR tail, LLM first token, TTS first audio) and the turn "
                    "WER of the streamed transcripts vs one-shot transcriptions.",
    )
    add_flag(p, "json", metavar="OUT.json", required=True, help="write the results here")
    add_flag(p, "concurrency", default="1,4", help="comma-separated session counts (default 1,4)")
    add_flag(p, "turns", type=int, default=20, help="questions per level, shared by its sessions (1-20, default 20)")
    add_flag(p, "silence_ms", type=int, default=500,
             help="the client's turn_detection.silence_duration_ms (default 500, OpenAI's)")
    add_flag(p, "bundle", metavar="DIR", help="the server's voice (default: the embedded one)")
    add_flag(p, "num_workers", type=int, default=None, help="the server's decoder workers (default: the server's)")
    add_flag(p, "dtype", choices=list(DECODER_DTYPES), default="auto",
             help="the server's decoder precision (default auto, as the server's)")
    add_flag(p, "llm_max_tokens", type=int, default=48, help="answer length cap in tokens (default 48)")
    add_flag(p, "no_voicechat", action="store_true", help="skip the /voicechat comparison")
    add_flag(p, "no_warmup", action="store_true", help="measure from the first turn (the caches start cold)")
    add_flag(p, "markdown", metavar="OUT.md", help="also write the README table here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llmvox.bench.realtime import QUESTIONS, markdown_table, run_realtime_bench
    from llmvox.cli.bench_stream import _levels
    from llmvox.errors import LLMVoXError

    levels = _levels(args.concurrency, (1, 4))
    if not 1 <= args.turns <= len(QUESTIONS):
        raise LLMVoXError(f"--turns must be 1-{len(QUESTIONS)}")
    if not 100 <= args.silence_ms <= 5000 or args.llm_max_tokens < 1:
        raise LLMVoXError("--silence_ms must be 100-5000 and --llm_max_tokens >= 1")
    result = run_realtime_bench(concurrency=levels, questions=QUESTIONS[: args.turns], silence_ms=args.silence_ms,
                                bundle=args.bundle, num_workers=args.num_workers, llm_max_tokens=args.llm_max_tokens,
                                voicechat=not args.no_voicechat, warmup=not args.no_warmup,
                                extra_args=["--dtype", args.dtype],
                                log=lambda s: print(s, file=sys.stderr))
    table = markdown_table(result)
    return write_bench_results(args, result, table)
