"""The wheel and the sdist `python -m build` makes: what they carry, and that a fresh venv speaks with them.

The wheel is installed into a new venv (no system site-packages, so its own dependency list must be
enough): first bare, where `llmvox synthesize` speaks with the embedded voice, then with the `server`
extra, where `llmvox serve --chat_type tts` answers an OpenAI speech request and serves the browser UI.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from _chat_models import free_port, stop_process
from openai import OpenAI

import llmvox

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MAX_WHEEL_BYTES = 45_000_000  # the embedded voice is ~38 MB before compression; the code is < 1 MB
NOT_SHIPPED = ("tests/", "voice/", "bench_results/", "docs/", "runs/", "cache/")
# the runtime data the package reads through Path(__file__) (api.py, server/ui.py, train/sentences.py)
RUNTIME_DATA = ("llmvox/voices/default/config.json", "llmvox/voices/default/decoder.safetensors",
                "llmvox/voices/default/codec.safetensors", "llmvox/voices/default/README.md",
                "llmvox/voices/heldout_sentences.txt", "llmvox/voices/configs/codec_small.yaml",
                "llmvox/server/static/index.html")


def fresh_clone(dest: Path) -> Path:
    """The checkout's files as a clone has them (tracked, and new ones git does not ignore), copied to `dest`.

    Built in place, setuptools would reuse the stale llmvox.egg-info/SOURCES.txt of the editable install,
    which lists every file and so hides a file the packaging rules miss.
    """
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, timeout=60)
    if listed.returncode != 0:
        pytest.fail(f"the wheel is built from a git checkout's files: {listed.stderr.decode()[-500:]}")
    for name in filter(None, listed.stdout.split(b"\0")):
        source = REPO / os.fsdecode(name)
        if source.is_file():  # a tracked file deleted in the working tree is gone from a commit too
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / os.fsdecode(name))
    return dest


def package_files(source: Path) -> set[str]:
    """Every file of the package in `source` (sources and data), as the wheel names them."""
    return {p.relative_to(source).as_posix() for p in (source / "llmvox").rglob("*") if p.is_file()}


def clean_env() -> dict[str, str]:
    """This environment without anything that would let the fresh venv import from elsewhere."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def run(cmd: list[str], timeout: float, cwd: Path) -> str:
    """Run `cmd`; its combined output, or a failure that shows the end of it."""
    done = subprocess.run(cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {done.returncode}:\n{output[-4000:]}")
    return output


@pytest.fixture(scope="module")
def work() -> Path:
    """One temporary folder for the dists and the venv (about 1 GB with torch), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="llmvox-wheel-")).resolve()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def dists(work: Path) -> tuple[Path, Path, str, set[str]]:
    """(wheel, sdist, build output, the package's files) of `python -m build` on a fresh copy of the
    checkout: the sdist, then the wheel built from it."""
    if importlib.util.find_spec("build") is None:
        pytest.fail("the `build` package is missing: it is in the dev extra (pip install -e '.[dev]')")
    source, out = fresh_clone(work / "src"), work / "dist"
    files = package_files(source)
    log = run([sys.executable, "-m", "build", "--outdir", str(out), str(source)], timeout=300, cwd=work)
    wheels, sdists = sorted(out.glob("llmvox-*.whl")), sorted(out.glob("llmvox-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return wheels[0], sdists[0], log, files


@pytest.fixture(scope="module")
def venv(work: Path, dists) -> Path:
    """A fresh venv with the pinned torch (the local CPU wheel, as setup.sh installs it) and the bare wheel."""
    folder = work / "venv"
    run([sys.executable, "-m", "venv", str(folder)], timeout=120, cwd=work)
    pip_install(folder, "torch==2.13.0")
    pip_install(folder, str(dists[0]))
    return folder


def pip_install(venv: Path, requirement: str) -> None:
    # --no-compile: byte-compiling torch's ~4,000 modules is most of the install's CPU time (and files to delete)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-input", "--no-compile", requirement],
        timeout=300, cwd=venv.parent)


def test_wheel_carries_the_package_its_data_and_nothing_else(dists):
    wheel, _, log, files = dists
    assert wheel.stat().st_size < MAX_WHEEL_BYTES, f"{wheel.stat().st_size / 1e6:.1f} MB"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = f"llmvox-{llmvox.__version__}.dist-info"
        metadata = Parser().parsestr(z.read(f"{info}/METADATA").decode())
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    shipped = {n for n in names if not n.startswith(f"{info}/")}
    assert shipped == files, {"missing": sorted(files - shipped), "extra": sorted(shipped - files)}
    assert set(RUNTIME_DATA) <= shipped and not [n for n in names if n.startswith(NOT_SHIPPED)]

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert (metadata["Name"], metadata["Version"]) == ("llmvox", llmvox.__version__)
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Requires-Python"] == project["requires-python"]
    assert set(metadata.get_all("Provides-Extra")) == set(project["optional-dependencies"])
    assert "torch==2.13.0" in metadata.get_all("Requires-Dist")
    assert "llmvox = llmvox.cli:main" in entry_points
    assert "deprecat" not in log.lower(), [line for line in log.splitlines() if "deprecat" in line.lower()]


def test_sdist_carries_what_builds_the_wheel(dists):
    _, sdist, _, files = dists
    top = sdist.name.removesuffix(".tar.gz")
    with tarfile.open(sdist) as tar:
        names = {m.name.removeprefix(f"{top}/") for m in tar.getmembers() if m.isfile()}
    assert {"pyproject.toml", "README.md", "PKG-INFO"} <= names
    assert files <= names, sorted(files - names)
    assert not [n for n in names if n.startswith(NOT_SHIPPED)]


def test_installed_wheel_synthesizes_with_the_embedded_voice(venv, work):
    where = run([str(venv / "bin" / "python"), "-c",
                 "import llmvox.api as a; print(a.__file__); print(a.DEFAULT_VOICE_DIR)"], timeout=120, cwd=work)
    site = str(venv / "lib")
    assert all(line.startswith(site) for line in where.split()), where  # the wheel's copy, not the checkout
    out = work / "hello.wav"
    run([str(venv / "bin" / "llmvox"), "synthesize", "--text", "Hello there, this voice came in a wheel.",
         "--out", str(out)], timeout=240, cwd=work)
    audio, rate = sf.read(str(out), dtype="float32")
    assert rate == 24000 and 0.5 < len(audio) / rate < 10, len(audio) / rate
    assert float(np.sqrt(np.mean(audio**2))) > 0.01


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llmvox serve exited {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"llmvox serve did not come up in {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def test_installed_wheel_serves_speech_and_the_ui(venv, work, dists):
    wheel, static = dists[0], work / "src" / "llmvox" / "server" / "static"
    pip_install(venv, f"llmvox[server] @ {wheel.as_uri()}")
    port, log = free_port(), work / "serve.log"
    with open(log, "wb") as sink:
        server = subprocess.Popen(
            [str(venv / "bin" / "llmvox"), "serve", "--chat_type", "tts", "--api_host", "127.0.0.1",
             "--api_port", str(port), "--threads", "1"],
            cwd=work, env=clean_env(), stdout=sink, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, server, log)
            client = OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=120)
            speech = client.audio.speech.create(model="llmvox", voice="default", input="Hello from the wheel.",
                                                response_format="wav")
            audio, rate = sf.read(io.BytesIO(speech.content), dtype="float32")
            assert rate == 24000 and len(audio) / rate > 0.3 and float(np.sqrt(np.mean(audio**2))) > 0.01
            page = httpx.get(f"{url}/", headers={"Accept": "text/html"}, timeout=10)
            assert page.status_code == 200 and page.content == (static / "index.html").read_bytes()
            for path in sorted(static.iterdir()):
                served = httpx.get(f"{url}/ui/{path.name}", timeout=10)
                assert served.status_code == 200 and served.content == path.read_bytes(), path.name
        finally:
            stop_process(server)
    assert server.returncode == 0, log.read_text()[-4000:]  # SIGTERM: a clean shutdown
