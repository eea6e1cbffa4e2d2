"""`llmvox serve`: the streaming speech server, with the flags of the original `streaming_server.py`.

`--chat_type tts` serves the TTS endpoints alone (no LLM, no ASR). The other chat types also serve them
and mount the chat routes (`llmvox.server.chat_routes`), configured by the chat flags (`llmvox.chat_flags`).
"""

from __future__ import annotations

import argparse
import os
import signal

from llmvox.cli.common import DECODER_DTYPES, add_flag, add_voice_args


def add_serve_args(p: argparse.ArgumentParser) -> None:
    add_flag(p, "chat_type", default="voice",
             help="tts (speech endpoints only, loads no LLM or ASR), text, voice, visual_speech or multimodal "
                  "(default: voice, as the original)")
    add_voice_args(p, several=True)

    g = p.add_argument_group("streaming (the original's schedule)")
    add_flag(g, "initial_dump_size_1", type=int, default=10, help="first chunk of worker 1, in codes (default 10)")
    add_flag(g, "initial_dump_size_2", type=int, default=160, help="first chunk of worker 2 (default 160)")
    add_flag(g, "max_dump_size", type=int, default=1280, help="largest chunk, in codes (default 1280)")
    add_flag(g, "chunk_policy", choices=["adaptive", "fixed"], default=None,
             help="adaptive: chunks cut by a playout deadline from the measured decoder and codec speed, so "
                  "playback does not run dry; fixed: the original's schedule (the dump sizes above). Default: "
                  "adaptive, fixed with --chunk_join original (the original server, exactly)")
    add_flag(g, "playout_margin_ms", type=float, default=40.0,
             help="adaptive: audio (ms) a chunk should still find queued at the listener (default 40)")
    add_flag(g, "max_audio_length", type=int, default=None,
             help="max codes per sentence (default: the voice's, 8000 for the original)")
    add_flag(g, "tts_device_1", default=None, help="device of worker 1: cpu, cuda:N, or a GPU number as in the original")
    add_flag(g, "tts_device_2", default=None, help="device of worker 2 (default: --device)")
    add_flag(g, "num_workers", type=int, default=None,
             help="workers (model replicas) that sentences alternate between (default 2, the original's two "
                  "queues; 1 on a CPU of fewer than 4 cores, where one batched worker is faster)")
    add_flag(g, "max_batch", type=int, default=32, help="streams stepped together per worker (default 32)")
    add_flag(g, "threads", type=int, default=None, help="torch threads per worker thread (default: cores/(2*workers))")
    add_flag(g, "chunk_join", choices=["context", "original"], default="context",
             help="context: chunks decoded with earlier codes and cross-faded (no clicks); original: each chunk "
                  "decoded alone, as the original server")
    add_flag(g, "context_frames", type=int, default=64, help="codes of left context per chunk decode (context join)")
    add_flag(g, "lookahead_frames", type=int, default=4, help="codes held back per chunk for the next decode")
    add_flag(g, "dtype", choices=list(DECODER_DTYPES), default="auto",
             help="decoder precision; auto (default): the precision the voice's weights are stored in where the "
                  "device computes it natively (bf16 bundles such as the embedded voice, on CPUs with AVX-512 "
                  "BF16/AMX), else float32, which reproduces the original codes exactly")
    add_flag(g, "no_normalize", action="store_true", help="speak the text as written (no number/markdown expansion)")
    add_flag(g, "pad_token_id", type=int, default=384, help="PAD id fed after the text (default 384)")
    add_flag(g, "eoa_token_id", type=int, default=None, help="end-of-audio code (default: the voice's, 453)")

    g = p.add_argument_group("API")
    add_flag(g, "api_host", default="127.0.0.1",
             help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 serves the network, as the "
                  "original's default did)")
    add_flag(g, "api_port", type=int, default=5003, help="port (default 5003)")
    add_flag(g, "api_key", default=None,
             help="require 'Authorization: Bearer KEY' (default: $LLMVOX_API_KEY, else no key)")
    add_flag(g, "cors_origins", default="",
             help="comma-separated web origins (https://app.example.com) whose pages may call this server; its own "
                  "page always may (default: none; '*' allows every page)")
    add_flag(g, "max_text_chars", type=int, default=4096,
             help="longest text per request, before and after numbers are spelled out (default 4096)")
    add_flag(g, "max_body_mb", type=float, default=32.0, help="largest request body in MB (default 32)")
    add_flag(g, "read_timeout", type=float, default=30.0, help="seconds a client may take to send a body (default 30)")
    add_flag(g, "send_timeout", type=float, default=30.0,
             help="seconds a client may leave audio unread before it is cut off (default 30)")
    add_flag(g, "idle_timeout", type=float, default=120.0,
             help="seconds a WebSocket may stay silent with nothing being spoken (default 120)")
    add_flag(g, "max_streams", type=int, default=16, help="streams served at once (default 16)")
    add_flag(g, "max_queue", type=int, default=32, help="requests that may wait for a stream (default 32)")
    add_flag(g, "queue_timeout", type=float, default=10.0, help="seconds a request may wait (default 10)")
    add_flag(g, "shutdown_timeout", type=float, default=10.0, help="seconds streams get to finish on shutdown")
    add_flag(g, "log_level", default="info", choices=["debug", "info", "warning", "error"])

    from llmvox.chat_flags import add_chat_args

    add_chat_args(p)  # the LLM, ASR and chat-input flags, defined once there


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the streaming speech server",
                              description="Serve /tts, /v1/audio/speech, WS /v1/stream, /health and /metrics "
                                          "(and the chat routes of the chosen --chat_type), with one voice or "
                                          "several (--bundle NAME=DIR ..., --voices DIR).")
    add_serve_args(p)
    p.set_defaults(func=run)


def device_flag(value: str | None, default: str) -> str:
    """The original took GPU numbers; we also take cpu / cuda / cuda:N."""
    if value is None or value == "":
        return default
    return f"cuda:{value}" if value.isdigit() else value


def settings_from_args(args: argparse.Namespace):
    from llmvox.device import default_workers
    from llmvox.engine.config import StreamConfig
    from llmvox.server.settings import ServerSettings

    device = getattr(args, "device", "cpu") or "cpu"
    devices = [device_flag(args.tts_device_1, device), device_flag(args.tts_device_2, device)]
    stream = StreamConfig(
        initial_dump_size_1=args.initial_dump_size_1, initial_dump_size_2=args.initial_dump_size_2,
        max_dump_size=args.max_dump_size, max_audio_length=args.max_audio_length, chunk_join=args.chunk_join,
        chunk_policy=args.chunk_policy or ("fixed" if args.chunk_join == "original" else "adaptive"),
        playout_margin_ms=args.playout_margin_ms,
        context_frames=args.context_frames, lookahead_frames=args.lookahead_frames,
        normalize=not args.no_normalize,
    )
    origins = [o.strip() for o in (args.cors_origins or "").split(",") if o.strip()]
    return ServerSettings(
        host=args.api_host, port=args.api_port, chat_type=args.chat_type,
        api_key=args.api_key or os.environ.get("LLMVOX_API_KEY") or None, cors_origins=origins,
        max_text_chars=args.max_text_chars, max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        read_timeout=args.read_timeout, send_timeout=args.send_timeout, idle_timeout=args.idle_timeout,
        max_streams=args.max_streams, max_queue=args.max_queue,
        queue_timeout=args.queue_timeout, devices=devices, max_batch=args.max_batch,
        num_workers=default_workers(devices[0]) if args.num_workers is None else args.num_workers,
        threads=args.threads, stream=stream, shutdown_timeout=args.shutdown_timeout, pad_id=args.pad_token_id,
        chat_options=dict(vars(args)),
    ).validate()


def run(args: argparse.Namespace) -> int:
    import logging

    import torch
    import uvicorn

    from llmvox.cli.serve_voices import load_voices
    from llmvox.device import set_decoder_dtype
    from llmvox.server.app import create_app
    from llmvox.server.context import install_log_format

    install_log_format(getattr(logging, args.log_level.upper()))
    settings = settings_from_args(args)
    _limit_malloc_arenas()
    threads = settings.threads or max(1, (os.cpu_count() or 1) // (2 * settings.num_workers))
    settings.threads = threads
    torch.set_num_threads(threads)
    voices, default = load_voices(args, device=settings.devices[0])
    for tts in voices.values():
        if args.eoa_token_id is not None:
            tts.eoa_id = args.eoa_token_id
        dtype = set_decoder_dtype(tts, args.dtype)  # before the workers copy the weights
        logging.getLogger("llmvox.server").info("voice %s: decoder in %s, %d worker(s) x %d thread(s)", tts.name,
                                                str(dtype).removeprefix("torch."), settings.num_workers, threads)
    app = create_app(settings, voices=voices, default_voice=default)
    logging.getLogger("llmvox.server").info("listening on http://%s:%d (%s)", settings.host, settings.port,
                                            _reach(settings.host))
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=settings.shutdown_timeout, ws="auto", lifespan="on")
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal with the handler it
    # found: make that handler end the process quietly, so a clean stop exits 0.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        uvicorn.Server(config).run()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own heap arena (up to 8 per core), and a server whose
    threadpool, engine and LLM threads take turns leaves freed memory scattered over all of them: RSS
    crept up under the soak. Two arenas (as MALLOC_ARENA_MAX=2) held it back; an explicit
    MALLOC_ARENA_MAX in the environment still wins."""
    import contextlib
    import ctypes

    if "MALLOC_ARENA_MAX" in os.environ:
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX


def _reach(host: str) -> str:
    if host in ("127.0.0.1", "localhost", "::1"):
        return "this machine only; --api_host 0.0.0.0 serves the network"
    return "reachable from the network: set --api_key" if host in ("0.0.0.0", "::") else f"on {host}"


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
