"""Writing a code cache: `tokenize_dataset` encodes a dataset JSON's utterances into shards.

The folder layout, the formats and the read side are `llmvox.train.cache`'s. Here: one writer per
folder (a lock), shards written arrays first and index last (each by rename), utterances keyed by their
inputs so a rerun encodes only what is new, and optional encoding in worker processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from llmvox.errors import LLMVoXError
from llmvox.model.speech_decoder import EOA_ID
from llmvox.text.tokenizer import PAD_ID, SENTENCE_END_ID, TEXT_VOCAB_SIZE, encode_words
from llmvox.train.cache import (
    CACHE_FORMAT,
    CACHE_VERSION,
    CODEBOOK_FILE,
    LOCK_FILE,
    META_FILE,
    PROBLEMS_FILE,
    SELECTION_FILE,
    TEXT_SCHEME,
    CodeCache,
    codec_fingerprint,
    read_meta,
    shard_names,
)

if TYPE_CHECKING:
    from llmvox.codec.wavtokenizer import WavTokenizer
    from llmvox.train.dataset import Entry, Problem

log = logging.getLogger("llmvox.cache")

# problem kinds found while encoding (the dataset module reports the JSON-level kinds)
SILENT_AUDIO = "silent_audio"
TEXT_LONGER_THAN_AUDIO = "text_longer_than_audio"
ENCODE_FAILED = "encode_failed"


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
        meta = read_meta(folder)
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
    names = shard_names(folder)
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
