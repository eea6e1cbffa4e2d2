"""The chat flags, each defined once with its one default: the LLM (`llmvox.llm.select.add_llm_args`),
the original's ASR flags and the chat input limits, and what they build (ChatSettings, the ASR model).

`llmvox serve` adds them to its parser; code that builds a server in Python passes the same names as a
dict (`ServerSettings.chat_options`), read by `chat_flags(options)` with these defaults.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from typing import Any

from llmvox.asr.input import ASR_RATE, AudioLimits
from llmvox.chat import ChatSettings
from llmvox.llm.images import ImageLimits

log = logging.getLogger(__name__)


def chat_flags(options: Mapping[str, Any] | None = None) -> argparse.Namespace:
    """Every chat flag at its default, overridden by `options` (flag names without dashes)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_chat_args(parser)
    args = parser.parse_args([])
    for name, value in (options or {}).items():
        setattr(args, name, value)
    return args


def _bool(text: str) -> bool:
    """The original parsed `--asr_enable_translation` with type=bool (any text was True); we parse words."""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def add_chat_args(parser) -> None:
    """LLM flags (`llmvox.llm.select.add_llm_args`), the original's ASR flags and the input limits.

    Flags the parser already has are left alone, so a server CLI can call this after defining its own.
    """
    from llmvox.llm.select import _add, add_llm_args

    add_llm_args(parser)
    group = parser.add_argument_group("ASR and chat input (default ASR: the embedded Whisper base)")
    _add(group, "asr_model", default=None, metavar="DIR|base",
         help="CTranslate2 Whisper folder, or base (the embedded model; the default)")
    _add(group, "asr_device", default="cpu", help="cpu or cuda (default cpu)")
    _add(group, "asr_threads", type=int, default=None, help="CPU threads for Whisper (default: half the cores)")
    _add(group, "asr_sample_rate", type=int, default=ASR_RATE,
         help="sample rate of the int16 PCM in audio_base64 (default 16000)")
    _add(group, "asr_max_audio_length", type=float, default=60.0, help="longest question in seconds (default 60)")
    _add(group, "asr_default_language", default="english", help="language of questions (name or code; auto detects)")
    _add(group, "asr_enable_translation", type=_bool, default=False, metavar="BOOL",
         help="translate questions into English when target_language differs (default false)")
    _add(group, "max_images", type=int, default=4, help="images per request (default 4)")
    _add(group, "max_image_mb", type=float, default=20.0, help="size of one encoded image in MB (default 20)")


def settings_from_args(args) -> ChatSettings:
    """ChatSettings from parsed flags (missing ones take their defaults)."""
    from llmvox.llm.select import sampling_defaults

    get = lambda name, default: default if getattr(args, name, None) is None else getattr(args, name)  # noqa: E731
    defaults = ChatSettings()
    sampling = sampling_defaults(args)
    return ChatSettings(
        system_prompt=sampling["system_prompt"] or None, max_tokens=get("llm_max_tokens", 1000),
        temperature=sampling["llm_temperature"], top_p=sampling["llm_top_p"], top_k=sampling["llm_top_k"],
        eos_token=get("eos_token", defaults.eos_token), asr_language=get("asr_default_language", "english"),
        asr_translate=bool(get("asr_enable_translation", False)),
        max_text_chars=int(get("max_text_chars", defaults.max_text_chars)),
        pcm_rate=int(float(get("asr_sample_rate", ASR_RATE))),
        audio=AudioLimits(max_seconds=float(get("asr_max_audio_length", 60.0))),
        images=ImageLimits(max_images=int(get("max_images", 4)),
                           max_bytes=int(float(get("max_image_mb", 20.0)) * 1024 * 1024)))


WHISPER_SIZES = ("tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en", "large",
                 "large-v1", "large-v2", "large-v3", "large-v3-turbo", "turbo", "distil-large-v3")


def asr_from_args(args):
    """The Whisper model the flags name, or None for chat types that need no ASR (text, multimodal).

    The original's `--asr_model` took size names (default small) that it downloaded; offline only the
    embedded base exists, so a size name that is not a local folder uses the embedded base (logged).
    """
    import os

    if getattr(args, "chat_type", "voice") not in ("voice", "visual_speech"):
        return None
    from llmvox.asr.whisper import WhisperASR

    model = getattr(args, "asr_model", None)
    if model and str(model).lower() in WHISPER_SIZES and not os.path.isdir(str(model)):
        if str(model).lower() != "base":
            log.warning("--asr_model %s is not available offline; using the embedded Whisper base "
                        "(pass a CTranslate2 Whisper folder to use another model)", model)
        model = None
    device = (getattr(args, "asr_device", None) or "cpu").split(":", 1)[0]
    threads = getattr(args, "asr_threads", None) or max(1, (os.cpu_count() or 2) // 2)
    return WhisperASR(model, device=device, threads=threads, beam_size=1, short_window=True,
                      language=getattr(args, "asr_default_language", None) or "english",
                      translate=bool(getattr(args, "asr_enable_translation", False)))
