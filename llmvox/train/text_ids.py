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
from pathlib import Path

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
    key = _key(texts, frontend)
    if store is not None and store.exists():
        try:
            with np.load(store) as saved:
                if str(saved["key"]) == key:
                    return np.split(saved["ids"], saved["offsets"][1:-1])
        except (OSError, ValueError, KeyError):
            pass  # unreadable: read again and rewritten below
    table = [np.array(frontend.encode_words(t.split()), dtype=np.int64) for t in texts]
    if store is not None:
        offsets = np.cumsum([0, *(len(ids) for ids in table)])
        tmp = store.with_name(f"{store.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(key), ids=np.concatenate([np.zeros(0, np.int64), *table]), offsets=offsets)
        os.replace(tmp, store)
    return table


def _key(texts: list[str], frontend: TextFrontend) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        g2p_version = version("hibari-tts")
    except PackageNotFoundError:
        g2p_version = "unknown"
    h = hashlib.sha256(json.dumps([frontend.config(), g2p_version], sort_keys=True).encode())
    for text in texts:
        h.update(text.encode() + b"\0")
    return h.hexdigest()

