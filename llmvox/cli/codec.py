"""`llmvox codec encode|decode`: audio <-> WavTokenizer codes with the original files (or a bundle).

Other modules add more `codec` subcommands (e.g. `train`) through `codec_subparsers`:

    def register(subparsers):
        from llmvox.cli.codec import codec_subparsers
        p = codec_subparsers(subparsers).add_parser("train", help="...")
        p.set_defaults(func=run_train)

The `codec` parser is created once, whichever module asks first.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from llmvox.cli.common import command_group
from llmvox.errors import LLMVoXError

if TYPE_CHECKING:
    from llmvox.codec.wavtokenizer import WavTokenizer

def codec_subparsers(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The sub-subparsers of `llmvox codec`, creating the `codec` command on first use."""
    return command_group(subparsers, "codec", "WavTokenizer codec: encode audio to codes, decode codes to audio")


def add_codec_source_args(p: argparse.ArgumentParser) -> None:
    """The flags that say where the codec comes from (original files, or a bundle)."""
    p.add_argument("--wav_config_path", "--wav-config-path", dest="wav_config_path",
                   help="original WavTokenizer YAML config")
    p.add_argument("--wav_model_path", "--wav-model-path", dest="wav_model_path",
                   help="original WavTokenizer Lightning checkpoint (.ckpt)")
    p.add_argument("--bundle", help="llmvox model folder (instead of the two paths above)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")


def load_codec_from_args(args: argparse.Namespace) -> WavTokenizer:
    """Build the codec named by `add_codec_source_args` flags."""
    bundle = getattr(args, "bundle", None)
    if bundle:
        if args.wav_config_path or args.wav_model_path:
            raise LLMVoXError("give either --bundle or --wav_config_path/--wav_model_path, not both")
        from llmvox.bundle import load_bundle_codec

        return load_bundle_codec(bundle, args.device)
    if not args.wav_config_path or not args.wav_model_path:
        raise LLMVoXError("--wav_config_path and --wav_model_path are required (or --bundle DIR)")
    from llmvox.codec.checkpoint import load_wavtokenizer

    return load_wavtokenizer(args.wav_config_path, args.wav_model_path, device=args.device)


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = codec_subparsers(subparsers)

    enc = sub.add_parser("encode", help="audio file -> codes (.npy, int64, shape (T,))")
    enc.add_argument("input", help="audio file (any rate and channel count; resampled to 24 kHz mono)")
    add_codec_source_args(enc)
    enc.add_argument("--out", required=True, help="output .npy of int64 codes")
    enc.set_defaults(func=run_encode)

    dec = sub.add_parser("decode", help="codes (.npy) -> audio (.wav or .npy float32)")
    dec.add_argument("input", help=".npy of integer codes, shape (T,) or (1, T)")
    add_codec_source_args(dec)
    dec.add_argument("--out", required=True, help="output .wav (float) or .npy (float32 samples, shape (N,))")
    dec.set_defaults(func=run_decode)


def run_encode(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from llmvox.audio import is_silent, load_audio

    out = _output_path(args.out, (".npy",))
    codec = load_codec_from_args(args)
    samples = load_audio(args.input, target_rate=codec.sample_rate)
    if is_silent(samples):
        raise LLMVoXError(f"{args.input} is silent: there is nothing to encode")
    with torch.inference_mode():
        codes = codec.encode(torch.from_numpy(samples)[None])
    np.save(out, codes[0].cpu().numpy().astype(np.int64))
    print(f"wrote {codes.shape[1]} codes to {out}")
    return 0


def run_decode(args: argparse.Namespace) -> int:
    import torch

    from llmvox.audio import save_audio

    out = _output_path(args.out, (".wav", ".flac", ".npy"))
    codes = _read_codes(Path(args.input))
    codec = load_codec_from_args(args)
    if codes.size and (codes.min() < 0 or codes.max() >= codec.codebook_size):
        raise LLMVoXError(
            f"{args.input}: codes must lie in [0, {codec.codebook_size}), found {codes.min()}..{codes.max()}"
        )
    with torch.inference_mode():
        audio = codec.decode_codes(torch.from_numpy(codes)[None])
    save_audio(out, audio[0].cpu().numpy(), codec.sample_rate)
    print(f"wrote {audio.shape[1] / codec.sample_rate:.2f} s of audio to {out}")
    return 0


def _read_codes(path: Path):
    import numpy as np

    if not path.is_file():
        raise LLMVoXError(f"codes file not found: {path}")
    try:
        codes = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise LLMVoXError(f"{path} is not a .npy array of codes ({str(exc).splitlines()[0][:200]})") from None
    if codes.ndim == 2 and codes.shape[0] == 1:
        codes = codes[0]
    if codes.ndim != 1 or codes.size == 0:
        raise LLMVoXError(f"{path}: expected a non-empty code array of shape (T,) or (1, T), got {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise LLMVoXError(f"{path}: codes must be integers, got dtype {codes.dtype}")
    return codes.astype(np.int64)


def _output_path(value: str, suffixes: tuple[str, ...] | None) -> Path:
    path = Path(value)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise LLMVoXError(f"--out must end with {' or '.join(suffixes)}, got {value}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
