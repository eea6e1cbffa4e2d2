"""`llmvox synthesize`: text -> speech codes -> audio file, with the original generation semantics."""

from __future__ import annotations

import argparse
import sys
import time

from llmvox.cli.common import DECODER_DTYPES, add_flag, add_voice_args, load_voice


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("synthesize", help="speak a text into a WAV/NPY file",
                              description="Speak TEXT word by word (as an LLM streams it) and write the audio.")
    add_flag(p, "text", required=True, help="the text to speak ('-' reads standard input)")
    add_flag(p, "out", required=True, metavar="OUT.wav|OUT.npy", help="audio file (.npy = float32 samples)")
    add_flag(p, "max_tokens", type=int, default=None, help="stop after this many decoder steps")
    add_flag(p, "max_audio_length", type=int, default=None, help="max codes per sentence (default 8000)")
    add_flag(p, "codes_out", metavar="C.npy", help="also write the codes (int64)")
    add_flag(p, "logits_out", metavar="L.npy", help="also write each step's logits (float32, steps x 4096)")
    add_flag(p, "dtype", choices=list(DECODER_DTYPES), default="auto",
             help="decoder precision: auto = the stored precision where the device computes it natively "
                  "(bf16 bundles), else float32, which reproduces the original exactly (default auto)")
    add_voice_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from llmvox.audio import save_audio
    from llmvox.device import set_decoder_dtype
    from llmvox.errors import LLMVoXError

    text = sys.stdin.read() if args.text == "-" else args.text
    if not text.strip():
        raise LLMVoXError("text is empty: nothing to say")
    if args.max_tokens is not None and args.max_tokens <= 0:
        raise LLMVoXError("--max_tokens must be positive")
    tts = load_voice(args)
    if args.max_audio_length:
        tts.max_audio_length = args.max_audio_length
    set_decoder_dtype(tts, args.dtype)
    start = time.perf_counter()
    with torch.inference_mode():
        gen = tts.generate(text, max_tokens=args.max_tokens, keep_logits=bool(args.logits_out))
        audio = tts.decode(gen.codes)
    elapsed = time.perf_counter() - start
    save_audio(args.out, audio, tts.sample_rate)
    if args.codes_out:
        np.save(args.codes_out, np.asarray(gen.codes, dtype=np.int64))
    if args.logits_out:
        logits = np.stack(gen.logits).astype(np.float32) if gen.logits else np.zeros((0, 0), np.float32)
        np.save(args.logits_out, logits)
    seconds = len(audio) / tts.sample_rate
    print(f"{len(gen.codes)} codes, {gen.segments} sentence(s), {seconds:.2f} s of audio in {elapsed:.2f} s "
          f"(real-time factor {elapsed / max(seconds, 1e-9):.2f}) -> {args.out}", file=sys.stderr)
    return 0
