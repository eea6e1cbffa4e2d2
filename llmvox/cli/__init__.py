"""The `llmvox` command: one parser, one module per subcommand.

Every module in this package that defines `register(subparsers)` adds its subcommands; each
subcommand sets `func` (called with the parsed args, returns an exit code). Heavy imports stay
inside the command functions so `llmvox --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from llmvox.errors import LLMVoXError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmvox", description="Streaming LLM-agnostic text-to-speech.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "common":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LLMVoXError as exc:
        print(f"llmvox: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmvox: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
