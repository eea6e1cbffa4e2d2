"""Flags and loading shared by every command that needs a voice."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from llmvox.hub import RELEASED_CHECKPOINT, RELEASED_CODEC, RELEASED_G2P

DECODER_DTYPES = ("auto", "float32", "bfloat16")  # --dtype of the server and its benchmarks (llmvox.device)

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


HUB_FLAGS = (  # (flag, from_pretrained keyword, metavar, help)
    ("revision", "revision", "REV", "with a hub id: the commit, tag or branch to load (default main)"),
    ("hub_checkpoint", "checkpoint", "FILE", f"with a hub id of original files: the decoder checkpoint "
     f"(default {RELEASED_CHECKPOINT}; OWNER/NAME[@REV]:FILE for another repo)"),
    ("hub_codec", "codec", "FILE", f"with a hub id of original files: the WavTokenizer checkpoint "
     f"(default {RELEASED_CODEC}; OWNER/NAME[@REV]:FILE for another repo)"),
    ("hub_g2p", "g2p", "REPO", f"with a hub id of original files: the g2p T5 repo (default {RELEASED_G2P})"),
    ("hub_codec_config", "codec_config", "PATH", "with a hub id of original files: the WavTokenizer YAML "
     "(default: the released config, carried by llmvox)"),
)


def add_voice_args(parser: argparse.ArgumentParser, *, device: bool = True, several: bool = False) -> None:
    """The voice flags; `several` (the server): --bundle may repeat as NAME=DIR, and --voices DIR loads
    every bundle folder in DIR (llmvox.cli.serve_voices)."""
    group = parser.add_argument_group("voice (a bundle, the five original paths, or the embedded default)")
    bundle_help = ("llmvox bundle folder or hub id (MBZUAI/LLMVoX: the released files, converted once into "
                   "~/.cache/llmvox)")
    if several:
        add_flag(group, "bundle", metavar="[NAME=]DIR", action="append", help=bundle_help + "; repeat as "
                 "NAME=DIR for several voices (requests pick one by its `voice`; without NAME: the bundle's name)")
        add_flag(group, "voices", metavar="DIR", help="serve every bundle folder in DIR, each named by its folder")
        add_flag(group, "default_voice", metavar="NAME", help="the voice of requests that name none (default: "
                 "the first --bundle, else the first folder of --voices)")
    else:
        add_flag(group, "bundle", metavar="DIR", help=bundle_help)
    for name, help_text in ORIGINAL_MODEL_FLAGS:
        add_flag(group, name, metavar="PATH", help=help_text)
    for name, _, metavar, help_text in HUB_FLAGS:
        add_flag(group, name, metavar=metavar, help=help_text)
    if device:
        add_flag(parser, "device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
        # with the device: the commands that load the voice here (the benches start a server instead)
        add_flag(parser, "lexicon", metavar="FILE", default=None,
                 help="pronunciations: word<TAB>phonemes (phoneme voice) or respelling (byte voice) per line, "
                      "or a JSON object (docs/server.md)")


def load_voice(args: argparse.Namespace, device: str | None = None) -> LLMVoX:
    """The voice the flags name, reading with --lexicon when given (the file is checked before the
    voice loads, its pronunciations against the voice after)."""
    from llmvox.text.lexicon import Lexicon, read_lexicon

    path = getattr(args, "lexicon", None)
    entries = read_lexicon(path) if path else None
    voice = _voice_from_flags(args, device)
    if entries is not None:
        voice.frontend = Lexicon(entries, voice.frontend, f"lexicon {path}").bind(voice.frontend)
    return voice


def _voice_from_flags(args: argparse.Namespace, device: str | None = None) -> LLMVoX:
    """The voice the flags name: --bundle, else the original paths, else the embedded default."""
    from llmvox.api import LLMVoX
    from llmvox.errors import LLMVoXError

    device = device or getattr(args, "device", "cpu")
    originals = {name: getattr(args, name, None) for name, _ in ORIGINAL_MODEL_FLAGS}
    given = [n for n, v in originals.items() if v]
    hub = {key: getattr(args, name, None) for name, key, _, _ in HUB_FLAGS}
    if getattr(args, "bundle", None):
        if given:
            raise LLMVoXError(f"give either --bundle or the original model paths, not both (also got --{given[0]})")
        return LLMVoX.from_pretrained(args.bundle, device=device, **hub)
    hub_given = [name for name, key, _, _ in HUB_FLAGS if hub[key] is not None]
    if hub_given:
        raise LLMVoXError(f"--{hub_given[0]} needs --bundle OWNER/NAME (a hub id)")
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


def write_bench_results(args: argparse.Namespace, result: dict, table: str | None = None) -> int:
    """A benchmark's JSON to `--json` (folders made), its table to stdout and to `--markdown` if given."""
    import json
    import sys
    from pathlib import Path

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if table is not None:
        print(table)
        if getattr(args, "markdown", None):
            Path(args.markdown).write_text(table + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return 0

