"""The LLMVoX training dataset: the original JSON list, read and validated.

Format (as in the original README): a JSON list of objects
`{"speech_folder": str, "speech_file": str, "answer_text": str, "id": str | int}`.

Where the audio is: the original trainer ignores both path fields and opens
`<--speech_data_folder>/<id>.wav`. We honour the fields and keep that convention as the fallback:
- with `speech_data_folder` given (the original flag), the file is `speech_data_folder/speech_file`,
  or `speech_data_folder/<id>.wav` when the entry has no `speech_file`;
- otherwise it is `speech_folder/speech_file`, a relative `speech_folder` being relative to the JSON
  file's own folder (so a dataset folder can be moved as a whole).
`llmvox data synth` writes `speech_file == f"{id}.wav"`, so both readings find the same file.

Validation reports every problem with the entry's id (or its index when it has no usable id); with
`on_error="skip"` the bad entries are left out and listed, with `on_error="fail"` the first problems
raise an LLMVoXError. Nothing is dropped without a record.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from llmvox.errors import LLMVoXError

FIELDS = ("speech_folder", "speech_file", "answer_text", "id")

# problem kinds
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
EMPTY_TEXT = "empty_text"
DUPLICATE_ID = "duplicate_id"
MISSING_FILE = "missing_file"
UNREADABLE_AUDIO = "unreadable_audio"
EMPTY_AUDIO = "empty_audio"


@dataclass(frozen=True)
class Entry:
    """One valid utterance: its id, its transcript and the resolved path of its audio."""

    id: str
    answer_text: str
    audio_path: Path
    speech_folder: str
    speech_file: str
    duration: float | None = None  # seconds, when the audio header was read

    def to_json(self) -> dict[str, str]:
        """The entry as the original JSON object."""
        return {"speech_folder": self.speech_folder, "speech_file": self.speech_file,
                "answer_text": self.answer_text, "id": self.id}


@dataclass(frozen=True)
class Problem:
    """Why one entry was rejected; `id` is None when the entry had no usable id."""

    index: int
    id: str | None
    kind: str
    message: str

    def __str__(self) -> str:
        who = f"id {self.id!r}" if self.id is not None else f"entry #{self.index}"
        return f"{who}: {self.kind}: {self.message}"


def _id_of(raw: Any) -> str | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, str) and raw.strip():
        return raw
    return None


def _check_audio(path: Path) -> tuple[str, str, float | None] | tuple[None, None, float]:
    """(kind, message, None) for a bad file, else (None, None, duration) from the header."""
    import soundfile as sf

    if not path.is_file():
        return MISSING_FILE, f"audio file not found: {path}", None
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        return UNREADABLE_AUDIO, f"not a readable audio file: {path} ({first})", None
    if info.frames <= 0 or info.samplerate <= 0:
        return EMPTY_AUDIO, f"audio file has no samples: {path}", None
    return None, None, info.frames / info.samplerate


def validate_entries(items: Any, *, base_dir: str | os.PathLike = ".",
                     speech_data_folder: str | os.PathLike | None = None,
                     check_audio: bool = True) -> tuple[list[Entry], list[Problem]]:
    """Check every item of a loaded dataset list; returns (valid entries, problems), in order."""
    if not isinstance(items, list):
        raise LLMVoXError(f"dataset must be a JSON list of objects, got {type(items).__name__}")
    entries: list[Entry] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        checked = _check_item(index, item, seen, Path(base_dir), speech_data_folder, check_audio)
        (entries if isinstance(checked, Entry) else problems).append(checked)
    return entries, problems


def _check_item(index: int, item: Any, seen: dict[str, int], base: Path,
                speech_data_folder: str | os.PathLike | None, check_audio: bool) -> Entry | Problem:
    """One dataset item -> its Entry, or the first Problem with it (`seen`: ids so far -> their index)."""
    if not isinstance(item, dict):
        return Problem(index, None, NOT_AN_OBJECT, f"expected an object, got {type(item).__name__}")
    ident = _id_of(item.get("id"))
    if "id" not in item:
        return Problem(index, ident, MISSING_FIELD, "no 'id' field")
    if ident is None:
        return Problem(index, ident, WRONG_TYPE, f"'id' must be a non-empty string or an integer, got {item['id']!r}")
    if ident in seen:
        return Problem(index, ident, DUPLICATE_ID, f"id already used by entry #{seen[ident]}")
    seen[ident] = index
    if "answer_text" not in item:
        return Problem(index, ident, MISSING_FIELD, "no 'answer_text' field")
    text = item["answer_text"]
    if not isinstance(text, str):
        return Problem(index, ident, WRONG_TYPE, f"'answer_text' must be a string, got {type(text).__name__}")
    if not text.strip():
        return Problem(index, ident, EMPTY_TEXT, "'answer_text' is empty")
    folder, file = item.get("speech_folder"), item.get("speech_file")
    wrong = [k for k, v in (("speech_folder", folder), ("speech_file", file)) if v is not None and not isinstance(v, str)]
    if wrong:
        return Problem(index, ident, WRONG_TYPE, f"'{wrong[0]}' must be a string, got {type(item[wrong[0]]).__name__}")
    file = file or f"{ident}.wav"
    if speech_data_folder is not None:
        path = Path(speech_data_folder) / file
    elif folder is None:
        return Problem(index, ident, MISSING_FIELD, "no 'speech_folder' field (or pass the speech data folder)")
    else:
        path = Path(folder) / file
        if not path.is_absolute():
            path = base / path
    duration = None
    if check_audio:
        kind, message, duration = _check_audio(path)
        if kind is not None:
            return Problem(index, ident, kind, message)
    return Entry(ident, text, path, folder if folder is not None else str(speech_data_folder), file, duration)


def load_dataset_json(path: str | os.PathLike, on_error: Literal["skip", "fail"] = "skip", *,
                      speech_data_folder: str | os.PathLike | None = None,
                      check_audio: bool = True) -> tuple[list[Entry], list[Problem]]:
    """Read and validate a dataset JSON file; returns (valid entries, problems).

    on_error="fail" raises LLMVoXError naming the first problem and how many there are.
    """
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', not {on_error!r}")
    path = Path(path)
    if not path.is_file():
        raise LLMVoXError(f"dataset file not found: {path}")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LLMVoXError(f"dataset {path} is not valid JSON: {exc}") from None
    entries, problems = validate_entries(items, base_dir=path.parent, speech_data_folder=speech_data_folder,
                                         check_audio=check_audio)
    if problems and on_error == "fail":
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise LLMVoXError(f"dataset {path}: {problems[0]}{more}")
    return entries, problems


def write_problem_report(problems: list[Problem], path: str | os.PathLike) -> None:
    """Write the skipped entries as JSON (one object per problem) so nothing is dropped unseen."""
    write_json_atomic(path, [asdict(p) for p in problems])


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
