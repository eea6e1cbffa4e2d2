"""`llmvox bench stream`: time to first audio, real-time factor and throughput through the real server.

With `--llm` (or `--chat_type`) it measures chat instead: the server runs with its LLM (and Whisper for
voice chat) and each turn's time to first audio includes ASR and the LLM's first token.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmvox.cli.common import (
    DECODER_DTYPES,
    ORIGINAL_MODEL_FLAGS,
    add_flag,
    add_voice_args,
    command_group,
    write_bench_results,
)

BENCH_HELP = "measure speed on this machine (results to a JSON file)"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = command_group(subparsers, "bench", BENCH_HELP).add_parser(
        "stream", help="streams through the real server: first audio, real-time factor, throughput",
        description="Starts `llmvox serve --chat_type tts` (or uses --url) and sends 1, 4 and 16 concurrent "
                    "/v1/audio/speech requests. With --llm (or --chat_type text|voice) it starts the server with "
                    "its chat LLM (and Whisper for voice chat) and sends --turns chat turns per client for 1 and "
                    "4 concurrent clients. Without a voice (--bundle or the original model paths) it builds a "
                    "random-weight voice at the released sizes; random weights never stop by themselves, so each "
                    "sentence is exactly --codes_per_sentence codes long.",
    )
    add_flag(p, "json", metavar="OUT.json", required=True, help="write the results here")
    add_flag(p, "concurrency", default=None,
             help="comma-separated stream (or chat client) counts (default 1,4,16; chat: 1,4)")
    add_flag(p, "sentences", type=int, default=3, help="sentences per request (default 3; TTS only)")
    add_flag(p, "codes_per_sentence", type=int, default=150, help="codes (75 per second) per sentence (default 150)")
    add_voice_args(p, device=False)
    add_flag(p, "url", help="measure a running server instead (its own settings apply)")
    add_flag(p, "api_key", help="the server's API key, if it has one")
    add_flag(p, "num_workers", type=int, default=None, help="the server's decoder workers (default: the server's)")
    add_flag(p, "threads", type=int, default=None, help="torch threads per worker thread in the server")
    add_flag(p, "chunk_join", choices=["context", "original"], default="context")
    add_flag(p, "chunk_policy", default="adaptive", metavar="POLICY[,POLICY]",
             help="the server's chunk policy, or several comma-separated for an A/B in one run (one server "
                  "each, measured in turn at every level), e.g. adaptive,fixed (default adaptive; TTS only)")
    add_flag(p, "dtype", choices=list(DECODER_DTYPES), default="auto",
             help="the server's decoder precision (default auto, as the server's)")
    add_flag(p, "markdown", metavar="OUT.md", help="also write the README table here")

    g = p.add_argument_group("chat (time to first audio behind an LLM, and ASR for voice chat)")
    add_flag(g, "llm", nargs="?", const="default", default=None, metavar="GGUF|URL|DIR|default",
             help="measure chat with this LLM (--llm_checkpoint of the server); 'default' or no value: the "
                  "embedded SmolLM2")
    add_flag(g, "chat_type", choices=["text", "voice"], default=None,
             help="text: questions to /textchat; voice: questions spoken by the hibari teacher to /voicechat "
                  "(Whisper base). Implies --llm default when --llm is not given (default: text)")
    add_flag(g, "turns", type=int, default=3, help="chat turns per client, one after another (default 3)")
    add_flag(g, "llm_max_tokens", type=int, default=96, help="answer length cap in tokens (default 96)")
    add_flag(g, "llm_temperature", type=float, default=0.0, help="0 = greedy, so runs repeat (default 0)")
    p.set_defaults(func=run)


def _levels(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    from llmvox.errors import LLMVoXError

    if text is None:
        return default
    try:
        levels = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise LLMVoXError(f"--concurrency must be comma-separated integers (got {text!r})") from None
    if not levels or min(levels) < 1:
        raise LLMVoXError("--concurrency needs positive stream counts")
    return levels


def _policies(text: str, url: str | None) -> tuple[str, ...]:
    from llmvox.engine.config import CHUNK_POLICIES
    from llmvox.errors import LLMVoXError

    policies = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    bad = [x for x in policies if x not in CHUNK_POLICIES]
    if not policies or bad:
        raise LLMVoXError(f"--chunk_policy takes {' or '.join(CHUNK_POLICIES)}, comma-separated (got {text!r})")
    if url and len(policies) > 1:
        raise LLMVoXError("--url measures the running server's own chunk policy: give one --chunk_policy or none")
    return policies


def _original_voice_args(args: argparse.Namespace) -> list[str]:
    """The original model paths given on the command line, passed on to the server as they are."""
    out: list[str] = []
    for name, _ in ORIGINAL_MODEL_FLAGS:
        value = getattr(args, name, None)
        if value:
            out += [f"--{name}", str(value)]
    return out


def run(args: argparse.Namespace) -> int:
    from llmvox.bench.chat import chat_markdown_table, run_chat_bench
    from llmvox.bench.stream import markdown_table, run_stream_bench
    from llmvox.errors import LLMVoXError

    chat = args.llm is not None or args.chat_type is not None
    levels = _levels(args.concurrency, (1, 4) if chat else (1, 4, 16))
    if args.sentences < 1 or args.codes_per_sentence < 10:
        raise LLMVoXError("--sentences must be >= 1 and --codes_per_sentence >= 10")
    voice_args = _original_voice_args(args)
    if args.bundle and voice_args:
        raise LLMVoXError(f"give either --bundle or the original model paths, not both (also got {voice_args[0]})")
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    if chat:
        if args.turns < 1 or args.llm_max_tokens < 1:
            raise LLMVoXError("--turns and --llm_max_tokens must be >= 1")
        llm = args.llm
        if llm not in (None, "default") and "://" not in llm and not Path(llm).exists() and llm.endswith(".gguf"):
            raise LLMVoXError(f"GGUF model file not found: {llm}")
        result = run_chat_bench(chat_type=args.chat_type or "text", llm=llm, concurrency=levels, turns=args.turns,
                                codes_per_sentence=args.codes_per_sentence, url=args.url, bundle=args.bundle,
                                voice_args=voice_args, num_workers=args.num_workers, threads=args.threads,
                                llm_max_tokens=args.llm_max_tokens, llm_temperature=args.llm_temperature,
                                api_key=args.api_key, extra_args=["--dtype", args.dtype, "--chunk_join", args.chunk_join],
                                log=log)
        table = chat_markdown_table(result)
    else:
        result = run_stream_bench(concurrency=levels, sentences=args.sentences,
                                  codes_per_sentence=args.codes_per_sentence, url=args.url, bundle=args.bundle,
                                  voice_args=voice_args, num_workers=args.num_workers, threads=args.threads,
                                  chunk_join=args.chunk_join, api_key=args.api_key,
                                  chunk_policies=_policies(args.chunk_policy, args.url),
                                  extra_args=["--dtype", args.dtype], log=log)
        table = markdown_table(result)
    return write_bench_results(args, result, table)
