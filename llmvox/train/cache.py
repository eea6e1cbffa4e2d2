"""The tokenised training cache: every utterance encoded once into codec codes + ByT5 text ids.

Why: the original trainer re-reads and re-encodes every WAV with the codec inside every batch, which
costs more than the decoder step itself on a CPU. Encoding once and memory-mapping the result makes a
batch a few array slices.

Layout of a cache folder:

    meta.json                 format, version, codec fingerprint, special ids, text scheme
    codebook.npy              float32 (K, D): the code features the decoder reads (no codec needed to train)
    shard_00000.codes.npy     all codes of the shard's utterances, concatenated (int16 or int32)
    shard_00000.text.npy      all text ids, concatenated (uint16)
    shard_00000.index.json    per utterance: id, key, offsets and lengths into the two arrays
    selection.json            the utterance keys of the last `tokenize` run, in dataset order
    problems.json             entries that were skipped, with their ids and why

A shard is complete once its index exists (arrays first, index last, each by rename), so an interrupted
run loses at most the utterances not yet flushed, and rerunning `tokenize` continues where it stopped.
An utterance is identified by a key over (id, text, audio size): a changed transcript or a re-recorded
file is encoded again; unchanged ones are never re-encoded, so a grown dataset costs only its new part.

The codes are the codec's, with the end-of-audio code (453) removed as the original data pipeline
does (training appends exactly one at the end). Text ids follow the original: the transcript split on
whitespace, each word its own ByT5 chunk ending in `</s>`, 385 after the last.

The cache records a fingerprint of the codec's encoding half (encoder weights, codebook, sizes), and
refuses codes from another codec: a decoder trained on a mix of two codecs' codes learns neither.
Changes to the codec's decoder half (backbone, head) leave the codes valid and the fingerprint equal.

This module is the format and the read side (`CodeCache`); `llmvox.train.cache_writer` encodes a
dataset into a cache (`tokenize_dataset`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmvox.errors import LLMVoXError
from llmvox.text.tokenizer import plain_text

if TYPE_CHECKING:
    from llmvox.codec.wavtokenizer import WavTokenizer

CACHE_FORMAT = "llmvox-code-cache"
CACHE_VERSION = 1
TEXT_SCHEME = "byt5-words-eos385-v1"  # how transcripts become ids (see module docstring)

META_FILE = "meta.json"
CODEBOOK_FILE = "codebook.npy"
SELECTION_FILE = "selection.json"
PROBLEMS_FILE = "problems.json"
LOCK_FILE = ".lock"

_ENCODING_CONFIG_FIELDS = ("sample_rate", "downsample_ratios", "encoder_filters", "encoder_dimension",
                           "encoder_lstm_layers", "encoder_residual_layers", "codebook_size", "hop_length")


# ------------------------------------------------------------------------------------------------
# codec fingerprint
# ------------------------------------------------------------------------------------------------


def _encoding_tensors(codec: WavTokenizer) -> dict[str, Any]:
    """The tensors that decide codes and code features, weight-normed convs as their effective kernel.

    Using the kernel (not g and v) makes a codec loaded from the Lightning checkpoint and the same codec
    loaded from a bundle hash alike: both fold to the same float32 kernel.
    """
    from llmvox.codec.wavtokenizer import WeightNormConv1d

    encoder = codec.encoder
    wn = {name: m for name, m in encoder.named_modules() if isinstance(m, WeightNormConv1d)}
    out: dict[str, Any] = {}
    for name, module in wn.items():
        out[f"encoder.{name}.kernel"] = module.kernel()
        out[f"encoder.{name}.bias"] = module.bias
    for name, tensor in encoder.state_dict().items():
        if name.rpartition(".")[0] not in wn:
            out[f"encoder.{name}"] = tensor
    out["quantizer.embed"] = codec.quantizer.embed
    return out


def codec_fingerprint(codec: WavTokenizer) -> str:
    """sha256 (hex, 16 chars) of the codec's encoding sizes and encoder + codebook weights."""
    import torch

    h = hashlib.sha256()
    cfg = codec.config.to_dict()
    h.update(json.dumps({k: cfg[k] for k in _ENCODING_CONFIG_FIELDS}, sort_keys=True).encode())
    with torch.no_grad():
        for name, tensor in sorted(_encoding_tensors(codec).items()):
            arr = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
            h.update(f"{name}:{arr.shape}".encode())
            h.update(arr.tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------


def is_cache(path: str | os.PathLike) -> bool:
    """True for a folder holding a cache's meta.json."""
    meta = Path(path) / META_FILE
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("format") == CACHE_FORMAT
    except (json.JSONDecodeError, OSError):
        return False


def read_meta(folder: Path) -> dict[str, Any]:
    """A cache folder's meta.json, checked to be a cache of this format, version and text scheme."""
    meta_path = folder / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise LLMVoXError(f"{folder} is not a tokenised cache (no {META_FILE}); run `llmvox data tokenize`") from None
    except (json.JSONDecodeError, OSError) as exc:
        raise LLMVoXError(f"{meta_path} is not readable JSON: {exc}") from None
    if meta.get("format") != CACHE_FORMAT:
        raise LLMVoXError(f"{folder} is not an llmvox code cache ({META_FILE} format {meta.get('format')!r})")
    if int(meta.get("version", 0)) != CACHE_VERSION:
        raise LLMVoXError(f"{folder} is cache version {meta.get('version')}; this llmvox reads version "
                          f"{CACHE_VERSION}: tokenise again into a new --cache_dir")
    if meta.get("text_scheme") != TEXT_SCHEME:
        raise LLMVoXError(f"{folder} holds text ids made with {meta.get('text_scheme')!r}, not {TEXT_SCHEME!r}: "
                          "tokenise again into a new --cache_dir")
    return meta


def shard_names(folder: Path) -> list[str]:
    """Names of the complete shards (those whose index was written), in order."""
    return sorted(p.name[: -len(".index.json")] for p in folder.glob("shard_*.index.json"))


@dataclass(frozen=True)
class _Record:
    id: str
    key: str
    shard: int
    code_offset: int
    n_codes: int
    text_offset: int
    n_text: int
    seconds: float


class CodeCache:
    """Read side of a cache: utterances as memory-mapped code and text-id arrays.

    By default it holds the utterances of the last `tokenize` run (selection.json), in dataset order;
    `all_records=True` takes every stored record instead (the newest one per id).
    """

    def __init__(self, folder: str | os.PathLike, *, all_records: bool = False) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise LLMVoXError(f"cache folder not found: {self.folder}")
        self.meta = read_meta(self.folder)
        self.fingerprint: str = self.meta["codec"]["fingerprint"]
        self.eoa_id: int = int(self.meta["eoa_id"])
        self.codebook_size: int = int(self.meta["codec"]["codebook_size"])
        self.sample_rate: int = int(self.meta["codec"]["sample_rate"])
        self.hop_length: int = int(self.meta["codec"]["hop_length"])
        self._codes: list[np.ndarray] = []
        self._text: list[np.ndarray] = []
        by_key: dict[str, _Record] = {}
        for shard, name in enumerate(shard_names(self.folder)):
            try:
                index = json.loads((self.folder / f"{name}.index.json").read_text())
                self._codes.append(np.load(self.folder / f"{name}.codes.npy", mmap_mode="r"))
                self._text.append(np.load(self.folder / f"{name}.text.npy", mmap_mode="r"))
            except (OSError, ValueError) as exc:
                raise LLMVoXError(f"cache shard {self.folder / name} is damaged ({exc}); delete its three "
                                  "files and run `llmvox data tokenize` again") from None
            for row in index:
                by_key[row["key"]] = _Record(row["id"], row["key"], shard, row["code_offset"], row["n_codes"],
                                             row["text_offset"], row["n_text"], row.get("seconds", 0.0))
        if all_records:
            newest: dict[str, _Record] = {}
            for rec in by_key.values():
                newest[rec.id] = rec
            records = list(newest.values())
        else:
            sel_path = self.folder / SELECTION_FILE
            if not sel_path.is_file():
                raise LLMVoXError(f"cache {self.folder} is incomplete (no {SELECTION_FILE}): run "
                                  "`llmvox data tokenize` on its dataset again to finish it")
            keys = json.loads(sel_path.read_text())
            absent = [k for k in keys if k not in by_key]
            if absent:
                raise LLMVoXError(f"cache {self.folder}: {len(absent)} selected utterances have no stored codes "
                                  "(a shard was deleted?); run `llmvox data tokenize` again")
            records = [by_key[k] for k in keys]
        self.records = records
        self.ids = [r.id for r in records]
        self.code_lengths = np.array([r.n_codes for r in records], dtype=np.int64)
        self.text_lengths = np.array([r.n_text for r in records], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.records)

    def codes(self, i: int) -> np.ndarray:
        r = self.records[i]
        return self._codes[r.shard][r.code_offset : r.code_offset + r.n_codes]

    def text_ids(self, i: int) -> np.ndarray:
        r = self.records[i]
        return self._text[r.shard][r.text_offset : r.text_offset + r.n_text]

    def text(self, i: int) -> str:
        """Utterance i's transcript (read back from its byte ids)."""
        return plain_text(self.text_ids(i))

    def codebook(self) -> np.ndarray:
        """(K, D) float32 code features (the codec's codebook rows)."""
        return np.load(self.folder / CODEBOOK_FILE)

    @property
    def hours(self) -> float:
        return float(self.code_lengths.sum()) * self.hop_length / self.sample_rate / 3600.0

    def data_fingerprint(self) -> str:
        """Hash of the selected keys: tells a resumed run whether its data is the one it started with."""
        h = hashlib.sha256()
        for r in self.records:
            h.update(r.key.encode())
        return h.hexdigest()[:16]

    def check_codec(self, fingerprint: str, what: str = "the given codec") -> None:
        if fingerprint != self.fingerprint:
            raise LLMVoXError(
                f"cache {self.folder} was made with codec {self.fingerprint} "
                f"({self.meta['codec'].get('source', 'unknown source')}), but {what} is {fingerprint}: "
                "codes of two codecs cannot be mixed; tokenise into another --cache_dir"
            )
