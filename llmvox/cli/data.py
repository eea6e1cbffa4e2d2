"""`llmvox data ...`: dataset commands (synth here; other modules add theirs).

Adding a `data` subcommand from another module: in that module's `register(subparsers)` call

    from llmvox.cli.data import data_subparsers
    p = data_subparsers(subparsers).add_parser("tokenize", help="...")
    p.set_defaults(func=run_tokenize)

`data_subparsers` creates the `data` command once per top-level parser and returns the same
sub-subparsers to every caller, whichever module registers first.
"""

from __future__ import annotations

import argparse
import os

from llmvox.cli.common import command_group


def data_subparsers(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The `llmvox data` sub-subparsers, created on first use for this top-level parser."""
    return command_group(subparsers, "data", "build and check training datasets")


def _add(p: argparse.ArgumentParser, name: str, **kw) -> None:
    """A snake_case flag with its kebab-case alias."""
    names = [name] + ([name.replace("_", "-")] if "_" in name else [])
    p.add_argument(*names, **kw)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = data_subparsers(subparsers).add_parser(
        "synth", help="speak sentences / LLM answers with a teacher voice into a dataset",
        description="Build a training dataset: prompts -> LLM answers (and/or sentence lists) -> teacher "
                    "voice -> 24 kHz WAVs + dataset JSON. Deterministic under --seed and resumable: rerun "
                    "the same command to continue.")
    _add(p, "--out_dir", required=True, help="output folder (wavs/, data.json, manifest.jsonl, report.json)")
    _add(p, "--teacher", default="hibari", choices=["hibari", "piper"], help="teacher voice (default hibari)")
    _add(p, "--voice", default=None, help="hibari voice name (default heart) or a piper .onnx voice path")
    _add(p, "--deterministic_teacher", action="store_true",
         help="piper: zero the VITS noise so audio repeats exactly (hibari is always seeded)")
    _add(p, "--sentences", action="append", default=[], metavar="FILE",
         help="speak the sentences of FILE (one a line) without the LLM; may be repeated")
    _add(p, "--num_sentences", type=int, default=0,
         help="also speak N generated phonetically rich sentences (templates x vocabulary, seeded)")
    _add(p, "--num_prompts", type=int, default=None,
         help="LLM prompts to answer and speak (default 100, or 0 when sentences are given)")
    _add(p, "--seed", type=int, default=0, help="seed for prompts, sentences, LLM sampling and teacher noise")
    _add(p, "--llm_checkpoint", default=None, help="GGUF file for the LLM (default: the bundled SmolLM2)")
    _add(p, "--llm_max_tokens", type=int, default=200, help="tokens per answer (default 200)")
    _add(p, "--llm_temperature", type=float, default=0.7)
    _add(p, "--llm_top_p", type=float, default=0.95)
    _add(p, "--llm_top_k", type=int, default=40)
    _add(p, "--llm_repeat_penalty", type=float, default=1.1,
         help="llama.cpp repeat penalty (default 1.1: small models loop without it)")
    _add(p, "--system_prompt", default=None, help="system prompt for the LLM answers")
    _add(p, "--normalize", default="auto", choices=["auto", "on", "off"],
         help="speak and store the spoken form of the text: llmvox.text.normalize when available (auto "
              "falls back to a built-in number speller), off = text as it is")
    _add(p, "--max_seconds", type=float, default=15.0, help="skip utterances longer than this (default 15)")
    _add(p, "--threads", type=int, default=1, help="CPU threads for the teacher and the LLM (default 1)")
    _add(p, "--relative_paths", action="store_true",
         help="write speech_folder relative to the JSON (portable) instead of absolute")
    _add(p, "--json_name", default="data.json", help="dataset file name inside --out_dir")
    _add(p, "--allow_heldout", action="store_true",
         help="do not drop the held-out evaluation sentences (they are dropped by default)")
    _add(p, "--no_extended_vocab", action="store_true",
         help="generated sentences use only llmvox's own word lists")
    _add(p, "--no_progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    import json
    import logging

    from llmvox.errors import LLMVoXError
    from llmvox.train import synth
    from llmvox.train.sentences import sentence_set
    from llmvox.train.teachers import make_teacher

    log = logging.getLogger("llmvox.data")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    sentences: list[str] = []
    for path in args.sentences:
        sentences += synth.read_sentence_file(path)
    num_prompts = args.num_prompts
    if num_prompts is None:
        num_prompts = 0 if (sentences or args.num_sentences) else 100
    if num_prompts < 0 or args.num_sentences < 0:
        raise LLMVoXError("--num_prompts and --num_sentences must be >= 0")
    if not sentences and not args.num_sentences and not num_prompts:
        raise LLMVoXError("nothing to do: give --sentences FILE, --num_sentences N or --num_prompts N")
    exclude = [] if args.allow_heldout else None
    generated = sentence_set(args.num_sentences, args.seed, extended_vocab=not args.no_extended_vocab,
                             exclude=exclude) if args.num_sentences else None
    generate = prompts = None
    extra: dict = {"teacher": args.teacher, "seed": args.seed}
    if num_prompts:
        from llmvox.llm.llamacpp import LlamaCppBackend, default_gguf_path
        from llmvox.train.prompts import prompt_set

        gguf = args.llm_checkpoint or default_gguf_path()
        backend = LlamaCppBackend(gguf, n_threads=args.threads, repeat_penalty=args.llm_repeat_penalty)
        generate = synth.llm_answerer(backend, max_tokens=args.llm_max_tokens, temperature=args.llm_temperature,
                                      top_p=args.llm_top_p, top_k=args.llm_top_k,
                                      system_prompt=args.system_prompt or synth.SYSTEM_PROMPT)
        prompts = prompt_set(num_prompts, args.seed)
        extra["llm"] = os.path.basename(str(gguf))
    teacher = make_teacher(args.teacher, seed=args.seed, threads=args.threads, voice=args.voice,
                           deterministic=args.deterministic_teacher)
    normalizer = synth.get_normalizer(args.normalize)
    extra["normalizer"] = None if normalizer is None else f"{normalizer.__module__}.{normalizer.__name__}"
    report = synth.synthesize_corpus(
        args.out_dir, teacher, sentences=sentences, generated=generated, prompts=prompts, generate=generate,
        seed=args.seed, normalizer=normalizer, exclude=exclude, max_seconds=args.max_seconds,
        absolute_paths=not args.relative_paths, progress=not args.no_progress, json_name=args.json_name,
        extra_report=extra)
    log.info("dataset %s: %d utterances, %.2f h, %d unique words",
             os.path.join(args.out_dir, args.json_name), report["utterances"], report["hours"],
             report["unique_words"])
    print(json.dumps(report, indent=1))
    return 0
