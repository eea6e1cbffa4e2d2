"""Flags and loading shared by every command that needs a voice."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmvox.api import LLMVoX

ORIGINAL_MODEL_FLAGS = (
    ("llmvox_checkpoint_path", "LLMVoX decoder checkpoint (.pt), e.g. ckpt_english_tiny.pt"),
    ("encoder_model_path", "charsiu ByT5 g2p T5 folder (text embedding)"),
    ("tokenizer_path", "ByT5 tokenizer folder or hub id (optional: ids are UTF-8 bytes + 3)"),
    ("wav_config_path", "WavTokenizer YAML config"),
    ("wav_model_path", "WavTokenizer checkpoint (.ckpt)"),
)


def add_flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """--snake_case with a --kebab-case alias, as the original flags are snake_case."""
    flags = [f"--{name}"]
    if "_" in name:
        flags.append(f"--{name.replace('_', '-')}")
    parser.add_argument(*flags, dest=name, **kwargs)


def add_voice_args(parser: argparse.ArgumentParser, *, device: bool = True) -> None:
    group = parser.add_argument_group("voice (a bundle, the five original paths, or the embedded default)")
    add_flag(group, "bundle", metavar="DIR", help="llmvox bundle folder or hub id")
    for name, help_text in ORIGINAL_MODEL_FLAGS:
        add_flag(group, name, metavar="PATH", help=help_text)
    if device:
        add_flag(parser, "device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")


def load_voice(args: argparse.Namespace, device: str | None = None) -> LLMVoX:
    """The voice the flags name: --bundle, else the original paths, else the embedded default."""
    from llmvox.api import LLMVoX
    from llmvox.errors import LLMVoXError

    device = device or getattr(args, "device", "cpu")
    originals = {name: getattr(args, name, None) for name, _ in ORIGINAL_MODEL_FLAGS}
    given = [n for n, v in originals.items() if v]
    if getattr(args, "bundle", None):
        if given:
            raise LLMVoXError(f"give either --bundle or the original model paths, not both (also got --{given[0]})")
        return LLMVoX.from_pretrained(args.bundle, device=device)
    if given:
        needed = [n for n in originals if n != "tokenizer_path" and not originals[n]]
        if needed:
            raise LLMVoXError("missing " + ", ".join(f"--{n}" for n in needed) + " (or use --bundle DIR)")
        return LLMVoX.from_original(
            originals["llmvox_checkpoint_path"], originals["encoder_model_path"], originals["wav_config_path"],
            originals["wav_model_path"], originals["tokenizer_path"], device=device,
        )
    return LLMVoX.from_pretrained(None, device=device)


def command_group(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> argparse._SubParsersAction:
    """The sub-subparsers of a command group (`llmvox bench ...`), created on first use.

    Several modules add subcommands to one group; whichever registers first creates it.
    """
    parser = subparsers.choices.get(name)
    if parser is None:
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        group = parser.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
        parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
        parser._llmvox_group = group  # type: ignore[attr-defined]
    return parser._llmvox_group  # type: ignore[attr-defined]
