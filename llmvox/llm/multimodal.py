"""Models that hear the question themselves: the `multimodal` chat type (Phi-4-multimodal-style).

No ASR runs: the user's speech goes to the model as an audio content part, with any images beside it.
Recent transformers load such models (Phi-4-multimodal, Qwen2-Audio, Qwen2.5-Omni, Voxtral, Gemma 3n,
Granite Speech) through `AutoModelForMultimodalLM`; checkpoints that still ship their own code (the
original Phi-4-multimodal release) load with `trust_remote_code=True` through `AutoModelForCausalLM`.
Everything else (prompt, processor call, streaming, cancellation) is shared with `vlm.py`.
"""

from __future__ import annotations

from llmvox.llm.vlm import ProcessorChatBackend

# What the original asked when the user sent audio and no image.
AUDIO_ONLY_INSTRUCTION = "Based on the attached audio, answer the query in a descriptive manner."


class MultimodalBackend(ProcessorChatBackend):
    """An audio(+image)-text-to-text model; audio parts must be at the processor's sampling rate."""

    accepts_images = True
    accepts_audio = True
    kind = "multimodal model"

    def _model_class(self, trust_remote_code: bool):
        import transformers

        if trust_remote_code:
            return transformers.AutoModelForCausalLM
        for name in ("AutoModelForMultimodalLM", "AutoModelForImageTextToText"):
            cls = getattr(transformers, name, None)
            if cls is not None:
                return cls
        return transformers.AutoModelForCausalLM

    @property
    def sampling_rate(self) -> int:
        """The audio rate the processor expects (16 kHz for Whisper-style feature extractors)."""
        extractor = getattr(self.processor, "feature_extractor", None) or getattr(self.processor, "audio_processor", None)
        return int(getattr(extractor, "sampling_rate", 16000) or 16000)
