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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from llmvox.errors import LLMVoXError
from llmvox.text.tokenizer import PAD_ID, SENTENCE_END_ID, TEXT_VOCAB_SIZE, encode_words, plain_text

if TYPE_CHECKING:
    from llmvox.codec.wavtokenizer import WavTokenizer
    from llmvox.train.dataset import Entry, Problem

log = logging.getLogger("llmvox.cache")

CACHE_FORMAT = "llmvox-code-cache"
CACHE_VERSION = 1
TEXT_SCHEME = "byt5-words-eos385-v1"  # how transcripts become ids (see module docstring)
EOA_ID = 453

META_FILE = "meta.json"
CODEBOOK_FILE = "codebook.npy"
SELECTION_FILE = "selection.json"
PROBLEMS_FILE = "problems.json"
LOCK_FILE = ".lock"

# problem kinds found while encoding (the dataset module reports the JSON-level kinds)
SILENT_AUDIO = "silent_audio"
TEXT_LONGER_THAN_AUDIO = "text_longer_than_audio"
ENCODE_FAILED = "encode_failed"

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


def _read_meta(folder: Path) -> dict[str, Any]:
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


def _shard_names(folder: Path) -> list[str]:
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
        self.meta = _read_meta(self.folder)
        self.fingerprint: str = self.meta["codec"]["fingerprint"]
        self.eoa_id: int = int(self.meta["eoa_id"])
        self.codebook_size: int = int(self.meta["codec"]["codebook_size"])
        self.sample_rate: int = int(self.meta["codec"]["sample_rate"])
        self.hop_length: int = int(self.meta["codec"]["hop_length"])
        self._codes: list[np.ndarray] = []
        self._text: list[np.ndarray] = []
        by_key: dict[str, _Record] = {}
        for shard, name in enumerate(_shard_names(self.folder)):
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


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------


def utterance_key(entry: Entry) -> str:
    """Identity of one utterance's inputs: id, transcript and audio file size."""
    try:
        size = entry.audio_path.stat().st_size
    except OSError:
        size = -1
    payload = json.dumps([entry.id, entry.answer_text, size], ensure_ascii=False)
    return hashlib.sha1(payload.encode()).hexdigest()[:20]


def text_ids_for(text: str) -> list[int]:
    """The decoder's text ids for one transcript (original scheme: whitespace words, 385 at the end)."""
    return encode_words(text.split())


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One writer per cache: a second `tokenize` on the same folder fails instead of interleaving."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LLMVoXError(f"cache {folder} is being written by another process") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _atomic_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _ShardWriter:
    """Buffers encoded utterances and writes them as one shard (arrays, then index)."""

    def __init__(self, folder: Path, code_dtype: np.dtype, next_shard: int) -> None:
        self.folder = folder
        self.code_dtype = code_dtype
        self.next_shard = next_shard
        self.rows: list[dict[str, Any]] = []
        self.codes: list[np.ndarray] = []
        self.text: list[np.ndarray] = []

    def add(self, entry_id: str, key: str, codes: np.ndarray, text: list[int], seconds: float) -> None:
        self.rows.append({"id": entry_id, "key": key, "n_codes": int(len(codes)), "n_text": len(text),
                          "seconds": round(seconds, 4)})
        self.codes.append(codes.astype(self.code_dtype))
        self.text.append(np.asarray(text, dtype=np.uint16))

    def __len__(self) -> int:
        return len(self.rows)

    def flush(self) -> None:
        if not self.rows:
            return
        name = f"shard_{self.next_shard:05d}"
        code_off = text_off = 0
        for row, c, t in zip(self.rows, self.codes, self.text, strict=True):
            row["code_offset"], row["text_offset"] = code_off, text_off
            code_off += len(c)
            text_off += len(t)
        _atomic_npy(self.folder / f"{name}.codes.npy", np.concatenate(self.codes))
        _atomic_npy(self.folder / f"{name}.text.npy", np.concatenate(self.text))
        _atomic_json(self.folder / f"{name}.index.json", self.rows)  # last: marks the shard complete
        self.next_shard += 1
        self.rows, self.codes, self.text = [], [], []


def _new_meta(codec: WavTokenizer, fingerprint: str, source: str) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "text_scheme": TEXT_SCHEME,
        "eoa_id": EOA_ID,
        "pad_id": PAD_ID,
        "sentence_end_id": SENTENCE_END_ID,
        "text_vocab_size": TEXT_VOCAB_SIZE,
        "codec": {
            "fingerprint": fingerprint,
            "source": source,
            "codebook_size": int(codec.codebook_size),
            "feature_dim": int(codec.codebook.shape[1]),
            "sample_rate": int(codec.sample_rate),
            "hop_length": int(codec.hop_length),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _open_for_writing(folder: Path, codec: WavTokenizer, source: str) -> tuple[dict[str, Any], str]:
    fingerprint = codec_fingerprint(codec)
    if codec.codebook_size <= EOA_ID:
        raise LLMVoXError(f"the codec has {codec.codebook_size} codes; LLMVoX's end-of-audio code {EOA_ID} "
                          f"needs a codebook of at least {EOA_ID + 1}")
    if (folder / META_FILE).exists():
        meta = _read_meta(folder)
        if meta["codec"]["fingerprint"] != fingerprint:
            raise LLMVoXError(
                f"cache {folder} was made with codec {meta['codec']['fingerprint']} "
                f"({meta['codec'].get('source', 'unknown source')}), but this codec ({source}) is "
                f"{fingerprint}: codes of two codecs cannot be mixed; use another --cache_dir"
            )
        return meta, fingerprint
    if folder.exists() and any(p.name != LOCK_FILE for p in folder.iterdir()):
        raise LLMVoXError(f"{folder} exists and is not a code cache; give an empty or new --cache_dir")
    meta = _new_meta(codec, fingerprint, source)
    _atomic_npy(folder / CODEBOOK_FILE, codec.codebook.detach().to("cpu").float().numpy())
    _atomic_json(folder / META_FILE, meta)
    return meta, fingerprint


def _stored_keys(folder: Path) -> tuple[set[str], int]:
    """Keys already encoded, and the next free shard number; removes arrays of unfinished shards."""
    keys: set[str] = set()
    names = _shard_names(folder)
    for name in names:
        for row in json.loads((folder / f"{name}.index.json").read_text()):
            keys.add(row["key"])
    complete = set(names)
    for leftover in folder.glob("shard_*.npy"):
        if leftover.name.split(".")[0] not in complete:
            leftover.unlink()  # arrays of a shard whose index was never written
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink()
    next_shard = int(names[-1].split("_")[1]) + 1 if names else 0
    return keys, next_shard


def tokenize_dataset(
    data_path: str | os.PathLike,
    cache_dir: str | os.PathLike,
    codec: WavTokenizer,
    *,
    codec_source: str = "",
    on_error: Literal["skip", "fail"] = "skip",
    speech_data_folder: str | os.PathLike | None = None,
    shard_size: int = 1000,
    flush_seconds: float = 120.0,
    progress: bool = True,
    log_fn: Callable[[str], None] | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Encode every valid entry of a dataset JSON into `cache_dir` (only the ones not stored yet).

    `workers` > 1 encodes in that many processes of one thread each (the codec's LSTM uses one core
    however many threads it gets); this process still writes every shard, in dataset order.

    Returns a report: counts, hours, problems by kind. Bad entries are skipped and listed in
    problems.json (`on_error="skip"`) or stop the run with an LLMVoXError naming the first one
    (`on_error="fail"`, after saving what was encoded).
    """
    from llmvox.train.dataset import load_dataset_json, write_problem_report

    say = log_fn or log.info
    folder = Path(cache_dir)
    if shard_size < 1:
        raise LLMVoXError("--shard_size must be at least 1")
    if workers < 1:
        raise LLMVoXError("--workers must be at least 1")
    entries, problems = load_dataset_json(data_path, on_error, speech_data_folder=speech_data_folder)
    start = time.perf_counter()
    with _locked(folder):
        meta, fingerprint = _open_for_writing(folder, codec, codec_source or "unknown")
        stored, next_shard = _stored_keys(folder)
        code_dtype = np.dtype(np.int16 if codec.codebook_size <= np.iinfo(np.int16).max + 1 else np.int32)
        writer = _ShardWriter(folder, code_dtype, next_shard)
        keys = [utterance_key(e) for e in entries]
        todo = [(e, k) for e, k in zip(entries, keys, strict=True) if k not in stored]
        say(f"dataset {data_path}: {len(entries)} valid entries, {len(problems)} skipped, "
            f"{len(entries) - len(todo)} already in {folder}, {len(todo)} to encode")
        bad_keys: set[str] = set()
        encoded_seconds = 0.0
        last_flush = time.perf_counter()
        bar = _progress(len(todo), progress)
        try:
            for (entry, key), (problem, encoded) in zip(todo, _encode_all([e for e, _ in todo], codec, workers),
                                                        strict=True):
                if problem is not None:
                    problems.append(problem)
                    bad_keys.add(key)
                    if on_error == "fail":
                        raise LLMVoXError(f"dataset {data_path}: {problem}")
                else:
                    codes, text, seconds = encoded
                    writer.add(entry.id, key, codes, text, seconds)
                    encoded_seconds += seconds
                if len(writer) >= shard_size or (len(writer) and time.perf_counter() - last_flush > flush_seconds):
                    writer.flush()
                    last_flush = time.perf_counter()
                bar.update(1)
        finally:
            writer.flush()
            bar.close()
            write_problem_report(problems, folder / PROBLEMS_FILE)
        selection = [k for k in keys if k not in bad_keys]
        _atomic_json(folder / SELECTION_FILE, selection)
    cache = CodeCache(folder)
    kinds: dict[str, int] = {}
    for p in problems:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    elapsed = time.perf_counter() - start
    report = {
        "cache_dir": str(folder),
        "codec_fingerprint": fingerprint,
        "utterances": len(cache),
        "encoded_now": len(todo) - len(bad_keys),
        "already_cached": len(entries) - len(todo),
        "skipped": len(problems),
        "problems_by_kind": kinds,
        "hours": round(cache.hours, 4),
        "codes": int(cache.code_lengths.sum()),
        "encode_seconds": round(elapsed, 2),
        "realtime_factor": round(encoded_seconds / elapsed, 1) if elapsed > 0 and encoded_seconds else None,
    }
    for p in problems[:20]:
        say(f"skipped {p}")
    if len(problems) > 20:
        say(f"... and {len(problems) - 20} more skipped entries, all listed in {folder / PROBLEMS_FILE}")
    return report


Encoded = tuple[np.ndarray, list[int], float]  # codes (EOA removed), text ids, seconds of audio


def encode_entry(entry: Entry, codec: WavTokenizer) -> tuple[Problem | None, Encoded | None]:
    """One utterance's codes and text ids, or the problem that keeps it out of the cache."""
    import torch

    from llmvox.audio import is_silent, load_audio
    from llmvox.train.dataset import Problem

    try:
        audio = load_audio(entry.audio_path, target_rate=codec.sample_rate)
    except LLMVoXError as exc:
        return Problem(-1, entry.id, "unreadable_audio", str(exc)), None
    if is_silent(audio):
        return Problem(-1, entry.id, SILENT_AUDIO, f"audio is silent: {entry.audio_path}"), None
    try:
        with torch.inference_mode():
            codes = codec.encode(torch.from_numpy(audio)[None])[0].cpu().numpy()
    except (RuntimeError, ValueError) as exc:
        return Problem(-1, entry.id, ENCODE_FAILED, f"codec could not encode {entry.audio_path}: "
                       f"{str(exc).splitlines()[0][:160]}"), None
    codes = codes[codes != EOA_ID]
    text = text_ids_for(entry.answer_text)
    if len(text) > len(codes) + 1:
        return Problem(-1, entry.id, TEXT_LONGER_THAN_AUDIO,
                       f"the text has {len(text)} ids but the audio only {len(codes) + 1} decoder steps "
                       f"({len(audio) / codec.sample_rate:.2f} s): audio truncated or not this text?"), None
    return None, (codes, text, len(audio) / codec.sample_rate)


_worker_codec: WavTokenizer | None = None


def _start_worker(codec: WavTokenizer) -> None:
    import torch

    global _worker_codec
    torch.set_num_threads(1)
    _worker_codec = codec


def _encode_in_worker(entry: Entry) -> tuple[Problem | None, Encoded | None]:
    assert _worker_codec is not None
    return encode_entry(entry, _worker_codec)


def _encode_all(entries: list[Entry], codec: WavTokenizer,
                workers: int) -> Iterator[tuple[Problem | None, Encoded | None]]:
    """encode_entry over the entries, in order; in `workers` fresh processes when more than one."""
    if workers <= 1 or len(entries) < 2:
        for entry in entries:
            yield encode_entry(entry, codec)
        return
    import multiprocessing

    # spawn, not fork: a forked child of a process whose OpenMP threads already ran can hang
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_start_worker, initargs=(codec,)) as pool:
        yield from pool.imap(_encode_in_worker, entries, chunksize=4)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="tokenize", unit="utt", disable=not enabled or total == 0, dynamic_ncols=True)
