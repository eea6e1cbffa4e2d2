"""What reading text costs per word, for each text front-end, as the engine streams it.

Every sentence of a text file is pushed word by word through a fresh reader (as `SpeechStream` does when
an LLM writes), timing each `push` and the final `finish`. The phoneme reader re-reads the sentence so far
at every word (its g2p needs the context), so its cost grows with the sentence; the figures say by how
much. `words_held_back_max` is the look-ahead: how many words a reader holds back before the decoder sees them.
"""

from __future__ import annotations

import platform
import time
from typing import Any

import numpy as np

from llmvox.text.frontend import FRONTENDS, new_frontend
from llmvox.text.tokenizer import EOS_ID


def run_frontend_bench(sentences: list[str], kinds: tuple[str, ...] = FRONTENDS, repeats: int = 3) -> dict[str, Any]:
    """Per front-end: median and 95th-percentile milliseconds per pushed word, per sentence end, and
    the words held back before the decoder sees them (one `repeats` pass is kept per word: the fastest)."""
    result: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "sentences": len(sentences),
                              "words": sum(len(s.split()) for s in sentences), "frontends": {}}
    for kind in kinds:
        frontend = new_frontend(kind)
        per_word: list[float] = []
        per_end: list[float] = []
        held: list[int] = []
        for sentence in sentences:
            words = sentence.split()
            best_words, best_end = [float("inf")] * len(words), float("inf")
            for _ in range(repeats):
                reader = frontend.reader()
                released = 0
                for i, word in enumerate(words):
                    start = time.perf_counter()
                    ids = reader.push(word)
                    best_words[i] = min(best_words[i], time.perf_counter() - start)
                    released += ids.count(EOS_ID)  # every released word ends in </s>
                    held.append(i + 1 - released)
                start = time.perf_counter()
                reader.finish()
                best_end = min(best_end, time.perf_counter() - start)
            per_word.extend(best_words)
            per_end.append(best_end)
        ms = np.array(per_word) * 1e3
        result["frontends"][kind] = {
            "ms_per_word_median": round(float(np.median(ms)), 4),
            "ms_per_word_p95": round(float(np.percentile(ms, 95)), 4),
            "ms_per_word_max": round(float(ms.max()), 4),
            "ms_per_sentence_end_median": round(float(np.median(per_end) * 1e3), 4),
            "words_held_back_max": int(max(held)),
        }
    return result
