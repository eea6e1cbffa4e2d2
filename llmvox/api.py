"""`LLMVoX`: the Python entry point, shaped like models elsewhere in the ecosystem.

    tts = LLMVoX.from_pretrained("path/to/bundle")      # or a hub id: MBZUAI/LLMVoX
    audio, rate = tts.synthesize("Hello world.")
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmvox.engine.generate import Generation, generate
from llmvox.errors import LLMVoXError
from llmvox.model.aligner import Aligner
from llmvox.model.speech_decoder import EOA_ID, SpeechDecoder
from llmvox.model.voice import Voice
from llmvox.text.frontend import frontend_from_config

DEFAULT_VOICE_DIR = Path(__file__).resolve().parent / "voices" / "default"


def check_tokenizer_path(path: str | None) -> None:
    """The ByT5 tokenizer needs no files; a given local folder must still be a ByT5 tokenizer."""
    if not path:
        return
    folder = Path(path)
    if not folder.exists():
        if "/" in path and "byt5" in path.lower() and not path.startswith((".", "/")):
            return  # a hub id such as google/byt5-small: ids are UTF-8 bytes + 3, nothing to download
        raise LLMVoXError(f"tokenizer path not found: {path}")
    config = folder / "tokenizer_config.json"
    if folder.is_dir() and config.is_file():
        try:
            cls = json.loads(config.read_text()).get("tokenizer_class", "")
        except json.JSONDecodeError:
            raise LLMVoXError(f"{config} is not valid JSON") from None
        if cls and "byt5" not in cls.lower():
            raise LLMVoXError(f"{path} holds a {cls}, but LLMVoX needs the ByT5 tokenizer")
        return
    raise LLMVoXError(f"{path} is not a tokenizer folder (no tokenizer_config.json)")


class LLMVoX(Voice):
    """A voice with its loaders (original files, bundles, the hub) and one-call synthesis."""

    # ---- loading -------------------------------------------------------------------------------
    @classmethod
    def from_original(cls, llmvox_checkpoint_path: str, encoder_model_path: str, wav_config_path: str,
                      wav_model_path: str, tokenizer_path: str | None = None, *,
                      device: str | None = None, max_audio_length: int = 8000) -> LLMVoX:
        """From the released files: LLMVoX .pt, charsiu T5 folder, WavTokenizer YAML + .ckpt."""
        from llmvox.codec.checkpoint import load_wavtokenizer
        from llmvox.model.checkpoint import load_llmvox_checkpoint
        from llmvox.model.embedding import load_t5_text_embedding

        check_tokenizer_path(tokenizer_path)
        gpt = load_llmvox_checkpoint(llmvox_checkpoint_path)
        table = load_t5_text_embedding(encoder_model_path)
        codec = load_wavtokenizer(wav_config_path, wav_model_path)
        return cls(_pair(gpt, table, codec, "the LLMVoX checkpoint", "the WavTokenizer"), codec,
                   max_audio_length=max_audio_length, device=device, name=Path(llmvox_checkpoint_path).stem)

    @classmethod
    def from_bundle(cls, path: str | Path, *, device: str | None = None) -> LLMVoX:
        from llmvox.bundle import load_bundle_parts

        config, gpt, table, codec = load_bundle_parts(path)
        gen = config.get("generation", {})
        ids = config.get("special_ids", {})
        return cls(_pair(gpt, table, codec, f"{path}/decoder.safetensors", f"{path}/codec.safetensors"), codec,
                   max_audio_length=int(gen.get("max_audio_length", 8000)), eoa_id=int(ids.get("eoa", EOA_ID)),
                   device=device, name=config.get("name", Path(path).name),
                   frontend=frontend_from_config(config.get("text_frontend")), source=path,
                   aligner=Aligner.from_config(config.get("aligner"), gpt.config.n_layer, gpt.config.n_head),
                   stored_dtype=stored_dtype(config))

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, *, device: str | None = None,
                        revision: str | None = None, checkpoint: str | None = None, codec: str | None = None,
                        g2p: str | None = None, codec_config: str | Path | None = None) -> LLMVoX:
        """A local bundle folder, a hub id, or the embedded voice.

        A hub id is a bundle repo, or a repo of the original files (`MBZUAI/LLMVoX`), converted once into
        a cached bundle (llmvox/hub.py). `checkpoint` and `codec` rename its files (`FILE` or
        `OWNER/NAME[@REV]:FILE`), `g2p` the T5 folder's repo (`OWNER/NAME[@REV]`), `codec_config` the
        WavTokenizer YAML (default: the released one, carried by the package); `revision` pins a commit
        or tag of the repo.
        """
        from llmvox.hub import Release, is_hub_id, resolve_pretrained

        given = {k: v for k, v in (("checkpoint", checkpoint), ("codec", codec), ("g2p", g2p),
                                   ("codec_config", codec_config)) if v is not None}
        if name_or_path is None or Path(name_or_path).exists():
            if given or revision is not None:
                what = ", ".join([*given, *(["revision"] if revision is not None else [])])
                raise LLMVoXError(f"{what} name files of a hub repo; give a hub id (OWNER/NAME), not a folder")
            return cls.from_bundle(default_voice_path() if name_or_path is None else name_or_path, device=device)
        text = str(name_or_path)
        if not is_hub_id(text):
            raise LLMVoXError(f"voice not found: {name_or_path} (give a bundle folder or a hub id owner/name)")
        release = Release(**{k: (Path(v) if k == "codec_config" else v) for k, v in given.items()}) if given else None
        return cls.from_bundle(resolve_pretrained(text, revision, _convert_original, release), device=device)

    def save_pretrained(self, path: str | Path, *, dtype: torch.dtype = torch.float32,
                        extra_config: dict | None = None) -> Path:
        from llmvox.bundle import save_bundle

        extra = {"generation": {"max_audio_length": self.max_audio_length}, "name": self.name}
        if self.frontend.kind != "byt5":
            extra["text_frontend"] = self.frontend.config()
        if self.aligner is not None:
            extra["aligner"] = self.aligner.to_config()
        extra.update(extra_config or {})
        return save_bundle(path, self.decoder.gpt, self.decoder.text_embedding.weight, self.codec,
                           dtype=dtype, extra_config=extra)

    # ---- inference -----------------------------------------------------------------------------
    def to_dtype(self, dtype: torch.dtype) -> LLMVoX:
        """Run the decoder in another precision (bf16 is ~2x faster on CPUs with AVX-512 BF16)."""
        self.decoder.gpt.to(dtype)
        return self

    def generate(self, text: str, *, max_tokens: int | None = None, keep_logits: bool = False) -> Generation:
        """Speech codes for `text`, streamed word by word as an LLM would, one segment per sentence."""
        chunks = text.split()
        if not chunks:
            raise LLMVoXError("text is empty: nothing to say")
        return generate(self.decoder, chunks, max_tokens=max_tokens, max_audio_length=self.max_audio_length,
                        eoa_id=self.eoa_id, keep_logits=keep_logits, frontend=self.frontend)

    @torch.inference_mode()
    def decode(self, codes: Iterable[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        """Audio (float32, N) for codes, decoded in one call."""
        codes = torch.as_tensor(np.asarray(list(codes) if isinstance(codes, Iterator) else codes,
                                           dtype=np.int64), device=self.device)
        if codes.numel() == 0:
            return np.zeros(0, dtype=np.float32)
        return self.codec.decode_codes(codes.reshape(1, -1))[0].float().cpu().numpy()

    def synthesize(self, text: str, *, max_tokens: int | None = None) -> tuple[np.ndarray, int]:
        """(float32 samples, sample rate) for `text`."""
        return self.decode(self.generate(text, max_tokens=max_tokens).codes), self.sample_rate

    def stream(self, text_deltas: Iterable[str], **options: Any) -> Iterator[np.ndarray]:
        """Audio chunks as soon as they exist, for text arriving in pieces (an LLM's output)."""
        from llmvox.engine.engine import stream_speech

        yield from stream_speech(self, text_deltas, **options)


def _convert_original(checkpoint: Path, g2p: Path, codec_config: Path, codec: Path, out: Path) -> None:
    """What `llmvox convert` does: the original files -> a bundle folder (float32, as released)."""
    LLMVoX.from_original(str(checkpoint), str(g2p), str(codec_config), str(codec)).save_pretrained(out)


def _pair(gpt, table: torch.Tensor, codec: Any, decoder_source: str, codec_source: str) -> SpeechDecoder:
    try:
        return SpeechDecoder(gpt, table, codec.codebook)
    except ValueError as exc:
        raise LLMVoXError(f"{decoder_source} and {codec_source} do not fit together: {exc}") from None


def stored_dtype(config: dict) -> torch.dtype:
    """The decoder weights' storage precision a bundle's config.json names (float32 when unnamed)."""
    name = str(config.get("storage_dtype", "float32"))
    dtype = getattr(torch, name, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def default_voice_path() -> Path:
    if not (DEFAULT_VOICE_DIR / "config.json").is_file():
        raise LLMVoXError(
            "the embedded default voice is not installed; pass --bundle DIR or the original model paths"
        )
    return DEFAULT_VOICE_DIR
