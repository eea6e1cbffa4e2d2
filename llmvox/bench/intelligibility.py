"""Intelligibility of a voice: synthesize sentences, transcribe them with Whisper, score WER and CER.

The same sentences can also be run through two references that bound what a voice can reach:
- the teacher (the TTS whose speech the voice was trained on): its WER is the target;
- codec resynthesis (teacher audio -> codec codes -> codec audio): what the codec alone loses, the
  floor for any decoder using that codec.

Scoring normalises both sides the same way before jiwer counts errors: numbers and symbols are spelled
as words (llmvox.text.normalize, so Whisper's "22" and the text's "twenty two" agree), then lower case,
hyphens and slashes become spaces, punctuation is removed (apostrophes inside words stay), and spaces
are collapsed. The overall figures are corpus-level (all errors / all reference words), not the mean of
per-sentence figures, so long sentences weigh more, as usual.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmvox.errors import LLMVoXError

Synthesizer = Callable[[str], tuple[np.ndarray, int]]


def _spoken(text: str) -> str:
    from llmvox.text.normalize import normalize

    return normalize(text)


def normalize_for_wer(text: str) -> str:
    """Text -> the word sequence WER compares (see the module docstring)."""
    t = _spoken(text).lower()
    t = t.replace("’", "'").replace("‘", "'")
    t = re.sub(r"[-‐‑–—/]", " ", t)
    t = re.sub(r"[^\w\s']", " ", t)
    t = re.sub(r"(?<!\w)'|'(?!\w)", " ", t)
    return " ".join(t.split())


def read_sentences(path: str | Path) -> list[str]:
    """One sentence a line; blank lines and lines starting with # are skipped."""
    path = Path(path)
    if not path.is_file():
        raise LLMVoXError(f"sentence file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise LLMVoXError(f"{path} is not UTF-8 text") from None
    sentences = [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
    if not sentences:
        raise LLMVoXError(f"{path} has no sentences (one a line)")
    unscorable = [s for s in sentences if not normalize_for_wer(s)]
    if unscorable:
        raise LLMVoXError(f"{path}: no words to score in {unscorable[0]!r}")
    return sentences


@dataclass
class SystemResult:
    """One system (voice, teacher or codec) over all sentences."""

    name: str
    hypotheses: list[str] = field(default_factory=list)
    wavs: list[str] = field(default_factory=list)
    audio_seconds: list[float] = field(default_factory=list)
    synth_seconds: list[float] = field(default_factory=list)
    audios: list[tuple[np.ndarray, int]] = field(default_factory=list)


def score(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus WER and CER of normalised texts (uncapped: insertions can push them above 1)."""
    import jiwer

    refs = [normalize_for_wer(r) for r in references]
    hyps = [normalize_for_wer(h) for h in hypotheses]
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}


def ending(reference: str, hypothesis: str) -> dict[str, int]:
    """How the sentence's end came out: reference words missing after the last one heard
    (`missing_end_words`, a truncated ending) and words heard after the reference's end
    (`extra_end_words`, the voice running on), from the word alignment of the normalised texts."""
    import jiwer

    ref, hyp = normalize_for_wer(reference), normalize_for_wer(hypothesis)
    if not ref:
        return {"missing_end_words": 0, "extra_end_words": len(hyp.split())}
    if not hyp:
        return {"missing_end_words": len(ref.split()), "extra_end_words": 0}
    last = jiwer.process_words(ref, hyp).alignments[0][-1]
    if last.type == "delete":
        return {"missing_end_words": last.ref_end_idx - last.ref_start_idx, "extra_end_words": 0}
    if last.type == "insert":
        return {"missing_end_words": 0, "extra_end_words": last.hyp_end_idx - last.hyp_start_idx}
    return {"missing_end_words": 0, "extra_end_words": 0}


def run_system(name: str, sentences: list[str], synth: Synthesizer, asr, wav_dir: Path, *,
               keep_audio: bool = False, progress: bool = True) -> SystemResult:
    """Synthesize and transcribe every sentence; WAVs go to wav_dir/name/NNN.wav."""
    from tqdm import tqdm

    from llmvox.audio import save_audio

    out = SystemResult(name)
    folder = wav_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(tqdm(sentences, desc=name, unit="sent", disable=not progress, dynamic_ncols=True)):
        start = time.perf_counter()
        audio, rate = synth(text)
        out.synth_seconds.append(time.perf_counter() - start)
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        wav = folder / f"{i:03d}.wav"
        save_audio(wav, audio, rate)
        out.wavs.append(str(wav))
        out.audio_seconds.append(len(audio) / rate)
        out.hypotheses.append(asr.transcribe(audio, rate) if audio.size else "")
        if keep_audio:
            out.audios.append((audio, rate))
    return out


def evaluate(sentences: list[str], *, voice=None, teacher=None, codec=None, asr, wav_dir: str | Path,
             spoken_input: bool = True, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score the voice (an LLMVoX) and, when given, the teacher and the codec's resynthesis of it.

    `codec` (a WavTokenizer) resynthesises the teacher's audio, so it needs `teacher`.
    `spoken_input` feeds the systems the normalised spoken form of each sentence (numbers as words), as
    the server does with normalisation on; the reference is the sentence itself either way.
    """
    from llmvox.audio import resample

    if codec is not None and teacher is None:
        raise LLMVoXError("codec resynthesis needs the teacher's audio: give a teacher too")
    wav_dir = Path(wav_dir)
    inputs = [_spoken(s) if spoken_input else s for s in sentences]
    systems: list[SystemResult] = []
    if voice is not None:
        def speak_voice(text: str) -> tuple[np.ndarray, int]:
            return voice.synthesize(text)

        systems.append(run_system("voice", inputs, speak_voice, asr, wav_dir, progress=progress))
    if teacher is not None:
        teacher_run = run_system("teacher", inputs, teacher.speak, asr, wav_dir, keep_audio=codec is not None,
                                 progress=progress)
        systems.append(teacher_run)
        if codec is not None:
            import torch

            it = iter(teacher_run.audios)

            def resynthesize(_text: str) -> tuple[np.ndarray, int]:
                audio, rate = next(it)
                samples = resample(audio, rate, codec.sample_rate)
                with torch.inference_mode():
                    codes = codec.encode(torch.from_numpy(samples)[None].to(codec.device))
                    out = codec.decode_codes(codes)[0, : len(samples)]
                return out.float().cpu().numpy(), codec.sample_rate

            systems.append(run_system("codec", inputs, resynthesize, asr, wav_dir, progress=progress))
    if not systems:
        raise LLMVoXError("nothing to evaluate: give a voice, a teacher or both")

    result: dict[str, Any] = {"n_sentences": len(sentences), "wav_dir": str(wav_dir), "systems": {}}
    per_sentence: list[dict[str, Any]] = [
        {"text": s, "spoken": x, "reference": normalize_for_wer(s)} for s, x in zip(sentences, inputs, strict=True)]
    for sys_result in systems:
        overall = score(sentences, sys_result.hypotheses)
        total_audio = sum(sys_result.audio_seconds)
        total_synth = sum(sys_result.synth_seconds)
        result["systems"][sys_result.name] = {
            **overall,
            "audio_seconds": round(total_audio, 2),
            "synth_seconds": round(total_synth, 2),
            "real_time_factor": round(total_synth / total_audio, 4) if total_audio else None,
        }
        endings = []
        for row, hyp, wav, secs in zip(per_sentence, sys_result.hypotheses, sys_result.wavs,
                                       sys_result.audio_seconds, strict=True):
            endings.append(ending(row["text"], hyp))
            row[sys_result.name] = {"hypothesis": hyp, **score([row["text"]], [hyp]), **endings[-1], "wav": wav,
                                    "seconds": round(secs, 3)}
        result["systems"][sys_result.name] |= {
            "truncated_endings": sum(e["missing_end_words"] > 0 for e in endings),
            "run_on_endings": sum(e["extra_end_words"] > 0 for e in endings)}
    result["sentences"] = per_sentence
    names = {"voice": "", "teacher": "teacher_", "codec": "codec_"}
    for name, prefix in names.items():
        if name in result["systems"]:
            wer, cer = result["systems"][name]["wer"], result["systems"][name]["cer"]
            # top-level figures are fractions in [0, 1]; the uncapped values stay under "systems"
            result[f"{prefix}wer"] = min(wer, 1.0)
            result[f"{prefix}cer"] = min(cer, 1.0)
    log(format_table(result))
    return result


def format_table(result: dict[str, Any]) -> str:
    rows = ["system     WER      CER     audio s   synth s   RTF    cut end  runs on"]
    for name, r in result["systems"].items():
        rtf = f"{r['real_time_factor']:.3f}" if r["real_time_factor"] is not None else "-"
        rows.append(f"{name:8s} {100 * r['wer']:6.1f}% {100 * r['cer']:6.1f}%  {r['audio_seconds']:8.1f}  "
                    f"{r['synth_seconds']:8.1f}  {rtf:6s} {r['truncated_endings']:7d}  {r['run_on_endings']:7d}")
    rows.append(f"({result['n_sentences']} sentences; WAVs in {result['wav_dir']})")
    return "\n".join(rows)
