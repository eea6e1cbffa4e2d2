"""The voices `llmvox serve` loads: `--bundle [NAME=]DIR` (repeatable), `--voices DIR`, or one voice as
every other command loads it (the original paths, or the embedded default).

A bundle in `--voices DIR` that cannot be loaded stops the server with one line naming the folder:
a server that started without a voice its clients ask for would answer them 400s instead. Folders
that are not bundles (no config.json) and hidden ones are skipped, each with a warning.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from llmvox.cli.common import HUB_FLAGS, ORIGINAL_MODEL_FLAGS, load_voice
from llmvox.errors import LLMVoXError

if TYPE_CHECKING:
    from llmvox.api import LLMVoX

log = logging.getLogger("llmvox.server")


def load_voices(args: argparse.Namespace, device: str | None = None) -> tuple[dict[str, LLMVoX], str]:
    """The voices by name, and the default one's name."""
    from llmvox.server.voices import voice_name

    specs = [_bundle_spec(value) for value in (args.bundle or [])]
    if getattr(args, "voices", None):
        specs += _folder_specs(Path(args.voices))
    if not specs:
        voice = load_voice(_one(args, None), device)
        voices = {voice_name(voice): voice}
    else:
        given = [name for name, _ in ORIGINAL_MODEL_FLAGS if getattr(args, name, None)]
        if given:
            raise LLMVoXError(f"give either --bundle/--voices or the original model paths, not both (also got "
                              f"--{given[0]})")
        _check_hub_flags(args, specs)
        voices = {}
        for name, path, where in specs:
            try:
                voice = load_voice(_one(args, path), device)
            except LLMVoXError as exc:
                raise LLMVoXError(f"{where}: {exc.message}") from None
            name = name or voice_name(voice)
            if name in voices:
                raise LLMVoXError(f"{where}: a second voice named {name!r} (name it: --bundle NAME=DIR)")
            voices[name] = voice
    default = getattr(args, "default_voice", None) or next(iter(voices))
    if default not in voices:
        raise LLMVoXError(f"--default_voice {default!r} is not one of the voices ({', '.join(voices)})")
    return voices, default


def _bundle_spec(value: str) -> tuple[str | None, str, str]:
    """(name or None, path or hub id, where it was given) of one --bundle."""
    from llmvox.server.voices import check_voice_name

    name, sep, path = value.partition("=")
    if not sep or Path(value).exists() or "/" in name:  # a path (or hub id) that holds an '='
        return None, value, f"--bundle {value}"
    return check_voice_name(name, f"--bundle {value}"), path, f"--bundle {value}"


def _folder_specs(folder: Path) -> list[tuple[str | None, str, str]]:
    """Every bundle folder in `folder`, named by its folder, in name order."""
    from llmvox.server.voices import check_voice_name

    if not folder.is_dir():
        raise LLMVoXError(f"--voices {folder}: not a folder")
    specs = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name.startswith("."):
            continue
        if not (sub / "config.json").is_file():
            log.warning("--voices %s: skipping %s (not a bundle: no config.json)", folder, sub.name)
            continue
        where = f"--voices {folder}: {sub.name}"
        specs.append((check_voice_name(sub.name, where), str(sub), where))
    if not specs:
        raise LLMVoXError(f"--voices {folder}: no bundle folders in it (each voice is a folder with config.json)")
    return specs


def _check_hub_flags(args: argparse.Namespace, specs: list[tuple[str | None, str, str]]) -> None:
    """The hub flags (--revision, --hub_*) go with the voices given by hub id; they need one."""
    given = [name for name, _, _, _ in HUB_FLAGS if getattr(args, name, None) is not None]
    if given and all(Path(path).exists() for _, path, _ in specs):
        raise LLMVoXError(f"--{given[0]} needs a hub id (OWNER/NAME) among the voices")


def _one(args: argparse.Namespace, path: str | None) -> argparse.Namespace:
    """The flags of one voice: `path` as its --bundle; a local folder takes no hub flags."""
    one = argparse.Namespace(**vars(args))
    one.bundle = path
    if path is not None and Path(path).exists():
        for name, _, _, _ in HUB_FLAGS:
            setattr(one, name, None)
    return one
