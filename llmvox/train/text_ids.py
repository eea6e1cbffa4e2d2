"""The corpus's text ids as a run's text front-end reads them.

The code cache stores every transcript as byte ids (the `byt5` front-end): codes never depend on how
the text is read, so one tokenised corpus serves voices of every front-end. A run with another
front-end re-reads each transcript with it, word by word exactly as inference streams it, once; the
table is kept next to the checkpoint, keyed by the texts and the front-end, and reused on resume.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmvox.text.frontend import TextFrontend

TEXT_IDS_FILE = "text_ids.npz"


class FrontendCache:
    """A code cache whose `text_ids(i)` are `frontend`'s; everything else is the cache's own."""

    def __init__(self, cache, frontend: TextFrontend, store: Path | None = None) -> None:
        self._cache = cache
        self.frontend = frontend
        texts = [cache.text(i) for i in range(len(cache))]
        self._ids = _read_all(texts, frontend, store)
        self.text_lengths = np.array([len(t) for t in self._ids], dtype=np.int64)

    def text_ids(self, i: int) -> np.ndarray:
        return self._ids[i]

    def __len__(self) -> int:
        return len(self._cache)

    def __getattr__(self, name: str):
        return getattr(self._cache, name)


def _read_all(texts: list[str], frontend: TextFrontend, store: Path | None) -> list[np.ndarray]:
    table, _ = stored_id_table(texts, frontend.config(), store,
                               lambda: ([np.array(frontend.encode_words(t.split()), dtype=np.int64) for t in texts], {}))
    return table


def stored_id_table(texts: Sequence[str], tag: Any, store: Path | None,
                    build: Callable[[], tuple[list[np.ndarray], dict[str, int]]]) -> tuple[list[np.ndarray], dict[str, int]]:
    """An id array per text (and a few named integers) from `build()`, kept in the .npz `store` keyed by
    the texts, `tag` (what reads them) and the g2p's version, and reused while they are the same.
    Re-reading a 50 h corpus costs minutes at every trainer start; this makes it once per corpus."""
    key = _key(texts, tag)
    if store is not None and store.exists():
        try:
            with np.load(store) as saved:
                if str(saved["key"]) == key:
                    extras = {k.removeprefix("extra_"): int(saved[k]) for k in saved.files if k.startswith("extra_")}
                    return np.split(saved["ids"], saved["offsets"][1:-1]), extras
        except (OSError, ValueError, KeyError):
            pass  # unreadable: built again and rewritten below
    table, extras = build()
    if store is not None:
        offsets = np.cumsum([0, *(len(ids) for ids in table)])
        tmp = store.with_name(f"{store.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(key), ids=np.concatenate([np.zeros(0, np.int64), *table]), offsets=offsets,
                     **{f"extra_{k}": np.array(v) for k, v in extras.items()})
        os.replace(tmp, store)
    return table, extras


def _key(texts: Sequence[str], tag: Any) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        g2p_version = version("hibari-tts")
    except PackageNotFoundError:
        g2p_version = "unknown"
    h = hashlib.sha256(json.dumps([tag, g2p_version], sort_keys=True).encode())
    for text in texts:
        h.update(text.encode() + b"\0")
    return h.hexdigest()
