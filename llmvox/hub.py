"""The released LLMVoX by its hub id: find the original files, convert them once, reuse the bundle.

`MBZUAI/LLMVoX` holds the two original checkpoints (`ckpt_english_tiny.pt`, the decoder, and
`wavtokenizer_large_speech_320_24k.ckpt`, the codec); the text table comes from the charsiu ByT5 g2p
T5 folder, and the codec's architecture from the YAML the package carries (the release has none).
`resolve_pretrained` downloads them through `huggingface_hub` (its cache, `HF_HUB_CACHE`/`HF_HOME`,
`HF_HUB_OFFLINE=1`), converts them into an llmvox bundle under `$LLMVOX_CACHE` (default
`~/.cache/llmvox`), keyed by repo, commit and file names, and returns that folder; the next call finds
it there. A hub repo that is itself a bundle (an llmvox config.json) is downloaded as it is.

A file is named `FILE` (in the main repo, at `revision`) or `OWNER/NAME[@REV]:FILE` (another repo).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmvox.errors import LLMVoXError

RELEASED_CHECKPOINT = "ckpt_english_tiny.pt"
RELEASED_CODEC = "wavtokenizer_large_speech_320_24k.ckpt"
RELEASED_G2P = "charsiu/g2p_multilingual_byT5_tiny_16_layers_100"
RELEASED_CODEC_CONFIG = (Path(__file__).resolve().parent / "voices" / "configs"
                         / "wavtokenizer_smalldata_frame75_3s_nq1_code4096_dim512_kmeans200_attn.yaml")
G2P_FILES = ["config.json", "model.safetensors", "pytorch_model.bin"]

# (decoder .pt, T5 folder, codec YAML, codec .ckpt, bundle folder to write)
Converter = Callable[[Path, Path, Path, Path, Path], None]


@dataclass(frozen=True)
class HubFile:
    """One file of a hub repo, at a revision (None: the main repo's revision)."""

    repo_id: str
    filename: str
    revision: str | None = None

    @classmethod
    def parse(cls, spec: str, repo_id: str, revision: str | None) -> HubFile:
        """`FILE` in `repo_id` at `revision`, or `OWNER/NAME[@REV]:FILE`."""
        if ":" in spec:
            repo, filename = spec.split(":", 1)
            repo, rev = parse_repo(repo)
            if not filename:
                raise LLMVoXError(f"hub file {spec!r} names no file after ':' (OWNER/NAME:FILE)")
            return cls(repo, filename, rev)
        if not spec:
            raise LLMVoXError("empty hub file name")
        return cls(repo_id, spec, revision)


@dataclass(frozen=True)
class Release:
    """Which files make the voice; the defaults are the released English LLMVoX."""

    checkpoint: str = RELEASED_CHECKPOINT
    codec: str = RELEASED_CODEC
    g2p: str = RELEASED_G2P
    codec_config: Path = RELEASED_CODEC_CONFIG


def parse_repo(spec: str) -> tuple[str, str | None]:
    """`OWNER/NAME[@REV]` -> (repo id, revision or None)."""
    repo, _, rev = spec.partition("@")
    if not is_hub_id(repo):
        raise LLMVoXError(f"{spec!r} is not a hub repo id (OWNER/NAME, optionally @REVISION)")
    return repo, rev or None


def is_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~")) and " " not in text


def llmvox_cache() -> Path:
    """Where converted releases live: $LLMVOX_CACHE, else $XDG_CACHE_HOME/llmvox, else ~/.cache/llmvox."""
    if os.environ.get("LLMVOX_CACHE"):
        return Path(os.environ["LLMVOX_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "llmvox"


# --------------------------------------------------------------------------------------------
# huggingface_hub calls with one-line errors
# --------------------------------------------------------------------------------------------


def _offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return constants.is_offline_mode() or value.upper() in {"1", "ON", "YES", "TRUE"}


def _hub_cache() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def _endpoint() -> str | None:
    """HF_ENDPOINT as set now (a mirror); None: huggingface_hub's own."""
    return os.environ.get("HF_ENDPOINT") or None


def _hub_call(what: str, repo_id: str, revision: str | None, call: Callable[..., str], *, cached_only: bool = False,
              **kwargs: Any) -> Path:
    """Run a download (`cached_only`: from the cache alone); huggingface_hub's exceptions as one line."""
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f"{repo_id}@{revision or 'main'}"
    try:
        return Path(call(repo_id=repo_id, revision=revision, cache_dir=_hub_cache(), endpoint=_endpoint(),
                         local_files_only=cached_only or _offline(), **kwargs))
    except RevisionNotFoundError:
        raise LLMVoXError(f"revision {revision!r} does not exist in hub repo {repo_id}", 404,
                          code="revision_not_found") from None
    except RepositoryNotFoundError:
        raise LLMVoXError(f"hub repo {repo_id} not found (or it is private or gated: log in with `hf auth login`)",
                          404, code="repo_not_found") from None
    except RemoteEntryNotFoundError:
        raise LLMVoXError(f"hub repo {at} has no {what}", 404, code="file_not_found") from None
    except LocalEntryNotFoundError:
        how = "HF_HUB_OFFLINE is set" if _offline() else "the hub cannot be reached"
        raise LLMVoXError(f"{what} of {at} is not in the local hub cache ({_hub_cache()}) and {how}: "
                          "run once with a network, or pin a cached --revision", 503,
                          code="not_cached") from None
    except HFValidationError as exc:
        raise LLMVoXError(f"bad hub id or revision for {at}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:  # disk full, a cut connection that left no file, permissions
        raise LLMVoXError(f"could not fetch {what} of {at}: {str(exc).splitlines()[0][:300]}", 503,
                          code="download_failed") from None


def download_file(file: HubFile, what: str, cached_only: bool = False) -> tuple[Path, str]:
    """(local path, commit) of one file; `what` says what it is and which flag renames it."""
    from huggingface_hub import hf_hub_download

    path = _hub_call(f"file {file.filename} ({what})", file.repo_id, file.revision, hf_hub_download,
                     filename=file.filename, cached_only=cached_only)
    return path, commit_of(path, file.filename)


def download_folder(repo_id: str, revision: str | None, what: str, allow: list[str] | None = None,
                    cached_only: bool = False) -> Path:
    from huggingface_hub import snapshot_download

    return _hub_call(what, repo_id, revision, snapshot_download, allow_patterns=allow, cached_only=cached_only)


def commit_of(path: Path, filename: str) -> str:
    """The commit a cached file belongs to: the cache keeps it at snapshots/<commit>/<filename>."""
    snapshot = path
    for _ in Path(filename).parts:
        snapshot = snapshot.parent
    return snapshot.name


# --------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------


def resolve_pretrained(repo_id: str, revision: str | None, convert: Converter,
                       release: Release | None = None) -> Path:
    """A local bundle folder for a hub id: the repo itself when it is a bundle, else the converted release."""
    cached_only = False
    if release is None:
        bundle, reachable = _bundle_repo(repo_id, revision)
        if bundle is not None:
            return bundle
        cached_only = not reachable  # the hub did not answer: only cached files, without its retries again
        release = Release()
    return converted_release(repo_id, revision, release, convert, cached_only=cached_only)


def _bundle_repo(repo_id: str, revision: str | None) -> tuple[Path | None, bool]:
    """(the snapshot of a bundle repo or None, whether the hub answered): None when the repo has no
    llmvox config.json, or when it cannot be known here (offline and not cached)."""
    from huggingface_hub import hf_hub_download

    from llmvox.bundle import is_bundle

    try:
        config = _hub_call("file config.json", repo_id, revision, hf_hub_download, filename="config.json")
    except LLMVoXError as exc:
        if exc.code == "file_not_found":
            return None, True  # a release repo
        if exc.code == "not_cached":
            return None, _offline()  # the release files may still be cached
        raise
    if not is_bundle(config.parent):
        return None, True
    return download_folder(repo_id, revision, "the bundle"), True


def converted_release(repo_id: str, revision: str | None, release: Release, convert: Converter,
                      cached_only: bool = False) -> Path:
    """Download the release's files, convert them once, and return the cached bundle folder."""
    from llmvox.bundle import BUNDLE_VERSION, is_bundle

    checkpoint = HubFile.parse(release.checkpoint, repo_id, revision)
    codec = HubFile.parse(release.codec, repo_id, revision)
    g2p_repo, g2p_revision = parse_repo(release.g2p)
    config = Path(release.codec_config)
    if not config.is_file():
        raise LLMVoXError(f"codec config not found: {config}")
    ckpt_path, ckpt_commit = download_file(checkpoint, "the LLMVoX checkpoint; --hub_checkpoint names another",
                                           cached_only)
    codec_path, codec_commit = download_file(codec, "the WavTokenizer checkpoint; --hub_codec names another",
                                             cached_only)
    g2p_path = download_folder(g2p_repo, g2p_revision, "the g2p T5 folder", G2P_FILES, cached_only)
    source = {
        "repo": repo_id, "commit": ckpt_commit,
        "checkpoint": f"{checkpoint.repo_id}@{ckpt_commit}:{checkpoint.filename}",
        "codec": f"{codec.repo_id}@{codec_commit}:{codec.filename}",
        "g2p": f"{g2p_repo}@{g2p_path.name}",
        "codec_config_sha256": hashlib.sha256(config.read_bytes()).hexdigest(),
        "bundle_version": BUNDLE_VERSION,
    }
    key = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]
    folder = llmvox_cache() / "hub" / repo_id.replace("/", "--") / ckpt_commit / key
    if is_bundle(folder):
        return folder
    return _convert_into(folder, source, lambda out: _convert(convert, ckpt_path, g2p_path, config, codec_path,
                                                              out, source))


def _convert(convert: Converter, ckpt: Path, g2p: Path, config: Path, codec: Path, out: Path,
             source: dict[str, Any]) -> None:
    try:
        convert(ckpt, g2p, config, codec, out)
    except LLMVoXError as exc:
        for path, name in ((ckpt, source["checkpoint"]), (codec, source["codec"])):
            if not zipfile.is_zipfile(path):
                raise LLMVoXError(f"the download of {name} is damaged (not a complete checkpoint): delete "
                                  f"{path.resolve()} and run again with a network", 502,
                                  code="damaged_download") from None
        raise LLMVoXError(f"could not convert {source['repo']}@{source['commit'][:12]}: {exc}") from None


def _convert_into(folder: Path, source: dict[str, Any], write: Callable[[Path], None]) -> Path:
    """Write the bundle into a temporary sibling, then rename: a cut conversion leaves no half bundle."""
    from llmvox.bundle import is_bundle

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        write(tmp)
        (tmp / "source.json").write_text(json.dumps(source, indent=2) + "\n")
        if folder.exists() and not is_bundle(folder):
            shutil.rmtree(folder)  # a folder someone emptied by hand: convert anew
        try:
            os.replace(tmp, folder)
        except OSError:
            if not is_bundle(folder):  # not another process's finished copy: a real failure
                raise
    except OSError as exc:
        raise LLMVoXError(f"could not write the converted bundle under {folder.parent}: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
