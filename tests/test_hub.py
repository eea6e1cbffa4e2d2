"""The released LLMVoX by hub id (llmvox/hub.py): offline, against a hub cache in huggingface_hub's real
layout (models--OWNER--NAME/{blobs,snapshots/<commit>,refs}) filled with the parity fixtures' files in the
official formats; the errors a user meets, including the hub's own answers from a loopback stand-in.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants as hf_constants  # read now, before a test sets HF_HUB_OFFLINE

from llmvox.api import DEFAULT_VOICE_DIR, LLMVoX
from llmvox.cli import main as cli_main
from llmvox.errors import LLMVoXError
from llmvox.hub import RELEASED_CHECKPOINT, RELEASED_CODEC, RELEASED_G2P, HubFile, Release, resolve_pretrained

RELEASE = "MBZUAI/LLMVoX"
COMMIT = "a" * 40
BROKEN = "b" * 40
G2P_COMMIT = "c" * 40
BUNDLE_REPO = "someone/voice-bundle"
BUNDLE_COMMIT = "d" * 40


def add_repo(cache: Path, repo_id: str, commit: str, files: dict[str, bytes | Path], refs: tuple[str, ...]) -> Path:
    """One commit of a repo as huggingface_hub caches it: content-addressed blobs, snapshot symlinks, refs."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for name, content in files.items():
        data = content.read_bytes() if isinstance(content, Path) else content
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return repo / "snapshots" / commit


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory, parity_dir: Path) -> Path:
    """The release at `main`/`v1.0`, a cut-short copy at `broken`, the g2p T5 repo and a bundle repo."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    release = {RELEASED_CHECKPOINT: parity_dir / "llmvox.pt", RELEASED_CODEC: parity_dir / "wavtokenizer.ckpt",
               "README.md": b"# LLMVoX\n"}
    add_repo(cache, RELEASE, COMMIT, release, ("main", "v1.0"))
    truncated = (parity_dir / "llmvox.pt").read_bytes()[: 1 << 20]
    add_repo(cache, RELEASE, BROKEN, {**release, RELEASED_CHECKPOINT: truncated}, ("broken",))
    g2p = parity_dir / "byt5_g2p_bin"  # the released charsiu layout: pytorch_model.bin
    add_repo(cache, RELEASED_G2P, G2P_COMMIT, {p.name: p for p in g2p.iterdir()}, ("main",))
    bundle = {n: DEFAULT_VOICE_DIR / n for n in ("config.json", "decoder.safetensors", "codec.safetensors")}
    add_repo(cache, BUNDLE_REPO, BUNDLE_COMMIT, bundle, ("main",))
    return cache


@pytest.fixture()
def offline(hub_cache: Path, tmp_path: Path, monkeypatch) -> Path:
    """HF_HUB_OFFLINE=1 on the filled cache; a fresh llmvox cache (returned)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("LLMVOX_CACHE", str(tmp_path / "llmvox"))
    return tmp_path / "llmvox"


def converted(llmvox_cache: Path) -> list[Path]:
    return sorted(p.parent for p in llmvox_cache.glob("hub/*/*/*/config.json"))


def test_the_release_converts_once_and_speaks_as_the_original_files(offline, parity_dir, codec_paths,
                                                                    tmp_path, capsys):
    tts = LLMVoX.from_pretrained(RELEASE, codec_config=codec_paths[0])
    [folder] = converted(offline)
    assert folder.relative_to(offline).parts[:3] == ("hub", "MBZUAI--LLMVoX", COMMIT)
    source = json.loads((folder / "source.json").read_text())
    assert source["checkpoint"] == f"{RELEASE}@{COMMIT}:{RELEASED_CHECKPOINT}"
    assert source["g2p"] == f"{RELEASED_G2P}@{G2P_COMMIT}"

    original = LLMVoX.from_original(str(parity_dir / "llmvox.pt"), str(parity_dir / "byt5_g2p_bin"),
                                    str(codec_paths[0]), str(codec_paths[1]))
    ours, theirs = tts.generate("Hello world.", max_tokens=20), original.generate("Hello world.", max_tokens=20)
    assert np.array_equal(np.asarray(ours.codes), np.asarray(theirs.codes))
    np.testing.assert_allclose(tts.decode(ours.codes), original.decode(theirs.codes), atol=1e-5)

    def never(*paths: Path) -> None:
        raise AssertionError(f"converted again: {paths}")

    release = Release(codec_config=codec_paths[0])
    for revision in (None, "main", "v1.0", COMMIT):  # a branch, a tag and the commit: the same bundle, reused
        assert resolve_pretrained(RELEASE, revision, never, release) == folder
    out = tmp_path / "hello.wav"  # the command reuses it too
    rc = cli_main(["synthesize", "--bundle", RELEASE, "--revision", "v1.0", "--hub_codec_config",
                   str(codec_paths[0]), "--text", "Hello world.", "--max_tokens", "20", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert out.stat().st_size > 44
    assert converted(offline) == [folder]
    assert not list(folder.parent.glob(".*.tmp"))


def test_a_bundle_repo_loads_as_it_is(offline):
    tts = LLMVoX.from_pretrained(BUNDLE_REPO)
    default = json.loads((DEFAULT_VOICE_DIR / "config.json").read_text())
    assert tts.name == default.get("name", DEFAULT_VOICE_DIR.name)
    assert converted(offline) == []


def cli_error(args: list[str], capsys) -> str:
    """The one line `llmvox` prints for a user error (exit 2, no traceback)."""
    rc = cli_main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


SPEAK = ["synthesize", "--text", "Hi.", "--out", "/nonexistent/never-written.wav"]


def test_offline_errors(offline, codec_paths, capsys):
    small = ["--hub_codec_config", str(codec_paths[0])]
    missing = cli_error([*SPEAK, "--bundle", RELEASE, "--hub_checkpoint", "ckpt_arabic.pt", *small], capsys)
    assert "ckpt_arabic.pt" in missing and "not in the local hub cache" in missing and "HF_HUB_OFFLINE" in missing
    damaged = cli_error([*SPEAK, "--bundle", RELEASE, "--revision", "broken", *small], capsys)
    assert "damaged" in damaged and RELEASED_CHECKPOINT in damaged and "blobs" in damaged
    nowhere = cli_error([*SPEAK, "--bundle", "nobody/nothing"], capsys)
    assert "nobody/nothing@main" in nowhere and "not in the local hub cache" in nowhere
    bad_revision = cli_error([*SPEAK, "--bundle", RELEASE, "--revision", "v9", *small], capsys)
    assert f"{RELEASE}@v9" in bad_revision
    no_bundle = cli_error([*SPEAK, "--hub_checkpoint", "x.pt"], capsys)
    assert "--hub_checkpoint needs --bundle" in no_bundle
    bad_spec = cli_error([*SPEAK, "--bundle", RELEASE, "--hub_codec", "nota repo:x.ckpt"], capsys)
    assert "not a hub repo id" in bad_spec
    assert converted(offline) == []


def test_hub_options_need_a_hub_id(tmp_path):
    with pytest.raises(LLMVoXError, match="revision name files of a hub repo"):
        LLMVoX.from_pretrained(DEFAULT_VOICE_DIR, revision="v1")
    with pytest.raises(LLMVoXError, match="voice not found"):
        LLMVoX.from_pretrained(tmp_path / "absent")


def test_hub_file_names():
    assert HubFile.parse("a.pt", RELEASE, "v1") == HubFile(RELEASE, "a.pt", "v1")
    assert HubFile.parse("novateur/WavTokenizer@e1:w.ckpt", RELEASE, "v1") == HubFile("novateur/WavTokenizer",
                                                                                        "w.ckpt", "e1")
    with pytest.raises(LLMVoXError, match="names no file"):
        HubFile.parse("novateur/WavTokenizer:", RELEASE, None)


# ---- online: the hub's own error answers, from a loopback stand-in ------------------------------


class HubErrors(http.server.BaseHTTPRequestHandler):
    """Answers as the hub does for what is not there: 404 with X-Error-Code."""

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.startswith(("/nobody/", "/api/models/nobody/")):
            code = "RepoNotFound"
        elif "/badrev" in self.path:
            code = "RevisionNotFound"
        else:
            code = "EntryNotFound"
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def online(tmp_path, monkeypatch) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubErrors)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    monkeypatch.setenv("LLMVOX_CACHE", str(tmp_path / "llmvox"))
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "5")
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    yield url
    server.shutdown()
    server.server_close()


def test_online_errors(online, monkeypatch, capsys):
    if hf_constants.HF_HUB_OFFLINE:
        pytest.skip("HF_HUB_OFFLINE was set when huggingface_hub was imported: no request can be made")
    assert "revision 'badrev' does not exist in hub repo" in cli_error([*SPEAK, "--bundle", RELEASE, "--revision",
                                                                       "badrev"], capsys)
    assert "hub repo nobody/nothing not found" in cli_error([*SPEAK, "--bundle", "nobody/nothing"], capsys)
    missing = cli_error([*SPEAK, "--bundle", RELEASE, "--hub_checkpoint", "ckpt_arabic.pt"], capsys)
    assert f"hub repo {RELEASE}@main has no file ckpt_arabic.pt" in missing


@pytest.mark.slow
def test_no_network_says_so_once_the_hub_s_retries_are_spent(online, monkeypatch, capsys):
    """About 24 s: huggingface_hub retries a refused connection 5 times; the release files are then
    looked up in the cache only, without a second round of retries."""
    if hf_constants.HF_HUB_OFFLINE:
        pytest.skip("HF_HUB_OFFLINE was set when huggingface_hub was imported: no request can be made")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed}")
    assert cli_main([*SPEAK, "--bundle", RELEASE]) == 2
    err = capsys.readouterr().err  # huggingface_hub's own "Retrying in Ns" lines, then ours
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("llmvox: error: ") and "the hub cannot be reached" in last, err
    assert RELEASED_CHECKPOINT in last


# ---- the released sizes ------------------------------------------------------------------------


@pytest.mark.slow
def test_full_size_release_with_the_packaged_codec_config(tmp_path, parity_dir, full_size_codec_files):
    """The real command, in its own process (huggingface_hub reads HF_HUB_OFFLINE at import): the parity
    decoder with a full-size random WavTokenizer, the codec config from the package."""
    cache = tmp_path / "hub"
    add_repo(cache, RELEASE, COMMIT, {RELEASED_CHECKPOINT: parity_dir / "llmvox.pt",
                                      RELEASED_CODEC: full_size_codec_files[1]}, ("main",))
    add_repo(cache, RELEASED_G2P, G2P_COMMIT, {p.name: p for p in (parity_dir / "byt5_g2p_bin").iterdir()},
             ("main",))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "LLMVOX_CACHE": str(tmp_path / "lv")}
    env.pop("HF_ENDPOINT", None)
    out = tmp_path / "hello.wav"
    run = subprocess.run([sys.executable, "-m", "llmvox", "synthesize", "--bundle", RELEASE, "--text",
                          "Hello world.", "--max_tokens", "20", "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert out.stat().st_size > 44
    [folder] = converted(tmp_path / "lv")
    config = json.loads((folder / "config.json").read_text())
    assert config["codec"]["backbone_dim"] == 768 and config["codec"]["backbone_layers"] == 12
    shutil.rmtree(cache)
