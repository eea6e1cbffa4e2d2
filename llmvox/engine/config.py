"""How one stream is chunked and joined: `StreamConfig`, shared by the engine, the server and the CLI.

Chunk policies:
- "fixed" (the original's schedule, the default of this class and of the Python API): a lane dumps a
  chunk when `dump` new codes are waiting; `dump` starts at `initial_dump_size_1` on lane 0 and
  `initial_dump_size_2` on the others, grows x3 after every chunk and twice more when a segment ends,
  capped at `max_dump_size`; a segment's last codes always go out. Byte-identical whatever the load.
- "adaptive" (the default of `llmvox serve`): a playout deadline from the measured decoder pace and
  codec latency (`llmvox.engine.chunk_policy`): the first chunk is `initial_dump_size_1` codes (more
  only when the pace could not make the next one in time), each later one is cut when waiting longer
  would let the listener's buffer run dry minus `playout_margin_ms`; at most `max_dump_size` codes.

Chunk joins:
- "context" (default): every chunk is decoded together with up to `context_frames` earlier codes of
  the stream (across sentence boundaries) and the last `lookahead_frames` of a chunk are held back and
  re-decoded with the next chunk, then cross-faded over `crossfade_samples`. The codec's pos-net
  (GroupNorm over time and global attention) makes every frame depend a little on the whole sequence,
  so no causal decode equals a one-shot decode exactly; this gets close without clicks.
- "original": each chunk decoded alone, exactly what the original server streams (it clicks at joins).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from llmvox.errors import LLMVoXError

if TYPE_CHECKING:
    from llmvox.text.lexicon import Lexicon

CHUNK_JOINS = ("context", "original")
CHUNK_POLICIES = ("fixed", "adaptive")


@dataclass(frozen=True)
class StreamConfig:
    """How one stream is chunked and joined (defaults: the original server's schedule)."""

    initial_dump_size_1: int = 10
    initial_dump_size_2: int = 160
    max_dump_size: int = 1280
    chunk_policy: str = "fixed"
    playout_margin_ms: float = 40.0  # adaptive: audio a chunk should still find in the listener's buffer
    max_audio_length: int | None = None  # codes per sentence; None: the voice's own limit
    chunk_join: str = "context"
    context_frames: int = 64
    lookahead_frames: int = 4
    crossfade_samples: int = 480
    normalize: bool = True
    max_sentence_chars: int | None = 300
    max_spoken_chars: int | None = None  # the whole stream's text once spelled out (None: no limit)
    lexicon: Lexicon | None = None  # this stream's pronunciations, over the voice's own (llmvox.text.lexicon)
    word_timestamps: bool = False  # AudioChunk.words from the voice's aligner head (llmvox.engine.word_times)

    def validate(self) -> StreamConfig:
        for name in ("initial_dump_size_1", "initial_dump_size_2", "max_dump_size"):
            if int(getattr(self, name)) < 1:
                raise LLMVoXError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.max_audio_length is not None and self.max_audio_length < 1:
            raise LLMVoXError(f"max_audio_length must be at least 1 (got {self.max_audio_length})")
        if self.chunk_policy not in CHUNK_POLICIES:
            raise LLMVoXError(f"chunk_policy must be one of {', '.join(CHUNK_POLICIES)} (got {self.chunk_policy!r})")
        if not 0 <= self.playout_margin_ms <= 5000:
            raise LLMVoXError(f"playout_margin_ms must be 0-5000 (got {self.playout_margin_ms})")
        if self.chunk_join not in CHUNK_JOINS:
            raise LLMVoXError(f"chunk_join must be one of {', '.join(CHUNK_JOINS)} (got {self.chunk_join!r})")
        for name in ("context_frames", "lookahead_frames", "crossfade_samples"):
            if int(getattr(self, name)) < 0:
                raise LLMVoXError(f"{name} must not be negative (got {getattr(self, name)})")
        if self.max_spoken_chars is not None and self.max_spoken_chars < 1:
            raise LLMVoXError("max_spoken_chars must be at least 1")
        if self.max_sentence_chars is not None and self.max_sentence_chars < 8:
            raise LLMVoXError("max_sentence_chars must be at least 8")
        return self

    @classmethod
    def from_options(cls, base: StreamConfig | None = None, **options: Any) -> StreamConfig:
        """A config from keyword options (unknown names are an error, not silently ignored)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise LLMVoXError(f"unknown stream option(s): {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        return replace(base or cls(), **options).validate()
