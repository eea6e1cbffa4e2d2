"""Chat with pictures (and sound) through a transformers processor: the `visual_speech` chat type.

Vision-language models (Qwen2.5-VL, LLaVA, Gemma 3, SmolVLM, ...) all load the same way in recent
transformers: `AutoProcessor` turns a chat-templated prompt plus images into tensors and
`AutoModelForImageTextToText` generates. So one class serves them all, and `multimodal.py` reuses it for
models that also hear audio.

Messages use the llmvox content-part form: `{"type": "text", "text": ...}`, `{"type": "image",
"image": PIL.Image}`, `{"type": "audio", "audio": float32 array, "sampling_rate": int}`. The parts are
handed to the processor's chat template as they are (templates test for the `image`/`audio` keys) and
the media are passed to the processor in the order they appear.
"""

from __future__ import annotations

import os
import threading

from llmvox.errors import LLMVoXError
from llmvox.llm.hf_generate import (
    HFChatBackend,
    eos_ids,
    load_failure,
    resolve_device,
    resolve_dtype,
)
from llmvox.llm.transformers_backend import require_transformers


def split_media(messages: list[dict]) -> tuple[list, list]:
    """(images, audio arrays) in the order they appear in the conversation."""
    images, audios = [], []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if part.get("type") == "image":
                images.append(part["image"])
            elif part.get("type") == "audio":
                audios.append(part["audio"])
    return images, audios


def fold_system(messages: list[dict]) -> list[dict]:
    """System text moved into the first user turn, for templates that refuse a system role."""
    system = "\n".join(m["content"] for m in messages if m.get("role") == "system" and isinstance(m["content"], str))
    rest = [m for m in messages if m.get("role") != "system"]
    if not system or not rest:
        return rest
    first = dict(rest[0])
    content = first.get("content", "")
    first["content"] = ([{"type": "text", "text": system + "\n\n"}, *content] if isinstance(content, list)
                        else f"{system}\n\n{content}")
    return [first, *rest[1:]]


def shrink(image, max_side: int | None):
    """Downscale so the longer side is at most `max_side` (vision encoders cost grows with pixels)."""
    if not max_side or max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    return image.resize(size)


class ProcessorChatBackend(HFChatBackend):
    """A processor + generate() model; subclasses choose the auto class and what media they take."""

    accepts_images = True
    accepts_audio = False
    kind = "vision-language model"

    def __init__(self, checkpoint: str | os.PathLike, *, device: str = "cpu", dtype: str = "auto",
                 eos_token: str | None = None, trust_remote_code: bool = False,
                 max_image_side: int | None = 1280) -> None:
        require_transformers()
        from transformers import AutoProcessor

        source = str(checkpoint)
        self.device = resolve_device(device)
        try:
            self.processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
            self.model = self._model_class(trust_remote_code).from_pretrained(
                source, dtype=resolve_dtype(dtype, self.device), trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError, ImportError) as exc:
            raise load_failure(f"the {self.kind}", source, exc) from None
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None:
            raise LLMVoXError(f"the processor of {source!r} has no tokenizer")
        if not (getattr(self.processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)):
            raise LLMVoXError(f"{source!r} has no chat template; use an instruct/chat model")
        self.model.to(self.device).eval()
        self.eos_token_ids = eos_ids(self.model, self.tokenizer, eos_token)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (self.eos_token_ids[0] if self.eos_token_ids else None)
        self.max_image_side = max_image_side
        self.name = f"{type(self).__name__}:{os.path.basename(source.rstrip('/')) or source}"
        self._lock = threading.Lock()
        self.tokens_generated = 0

    def _model_class(self, trust_remote_code: bool):
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText

    def _count(self) -> None:
        self.tokens_generated += 1

    def _template(self, messages: list[dict]) -> str:
        from jinja2.exceptions import TemplateError

        owner = self.processor if getattr(self.processor, "chat_template", None) else self.tokenizer
        try:
            return owner.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except TemplateError:
            if not any(m.get("role") == "system" for m in messages):
                raise
            return owner.apply_chat_template(fold_system(messages), tokenize=False, add_generation_prompt=True)

    def prompt_inputs(self, messages: list[dict]) -> dict:
        """Processor tensors for the conversation (text, images, audio) on the model's device."""
        images, audios = split_media(messages)
        if images and not self.accepts_images:
            raise LLMVoXError(f"this {self.kind} does not take images")
        if audios and not self.accepts_audio:
            raise LLMVoXError(f"this {self.kind} does not take audio; transcribe it first (voice chat)")
        prompt = self._template(messages)
        kwargs: dict = {"text": [prompt], "return_tensors": "pt"}
        if images:
            kwargs["images"] = [shrink(image, self.max_image_side) for image in images]
        if audios:
            kwargs["audio"] = list(audios)
            rate = getattr(getattr(self.processor, "feature_extractor", None), "sampling_rate", None)
            if rate:
                kwargs["sampling_rate"] = rate
        try:
            encoded = self.processor(**kwargs)
        except (ValueError, TypeError) as exc:
            raise LLMVoXError(f"the {self.kind}'s processor rejected the input: {exc}") from None
        dtype = self.model.dtype
        return {k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in encoded.items() if hasattr(v, "to")}


class VisionLanguageBackend(ProcessorChatBackend):
    """An image-text-to-text model (Qwen2.5-VL-style): the question comes as text (from ASR)."""
