"""Which LLM backend a command line means, and the flags that say it.

`--llm_checkpoint` alone usually decides: a `.gguf` file runs on llama.cpp, an `http(s)://` URL is an
OpenAI-compatible server, anything else is a transformers folder or hub id (a vision-language model for
`--chat_type visual_speech`, an audio+image model for `multimodal`). Nothing at all means the embedded
SmolLM2 GGUF, so text and voice chat work offline out of the box. `--llm_backend` overrides the guess.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from llmvox.errors import LLMVoXError
from llmvox.llm.base import LLMBackend

BACKENDS = ("auto", "llamacpp", "transformers", "openai", "vlm", "multimodal")
CHAT_TYPES = ("text", "voice", "visual_speech", "multimodal")

# the original's default system prompt (configs/inference_config.py), kept so answers sound alike
DEFAULT_SYSTEM_PROMPT = ("You are a friendly assistant that answers questions concisely. Do not answer in list, "
                         "use brackets etc. Think yourself as person speaking.")
# The original's sampling (T 0.7, top-p 0.95) and prompt suit an 8B model. The embedded 135M SmolLM2
# drifts with them (asked for the capital of France it began in French); a plain short prompt, low
# temperature and a mild repeat penalty keep its answers on topic. Flags given explicitly still win.
SAMPLING_DEFAULTS = {"llm_temperature": 0.7, "llm_top_p": 0.95, "llm_top_k": 40, "system_prompt": DEFAULT_SYSTEM_PROMPT}
EMBEDDED_LLM_DEFAULTS = {"llm_temperature": 0.2, "llm_top_p": 0.9, "llm_top_k": 40,
                         "system_prompt": "You are a helpful assistant. Keep answers short and simple."}
EMBEDDED_REPEAT_PENALTY = 1.1


def uses_embedded_llm(args: argparse.Namespace) -> bool:
    """True when the flags leave the chat LLM at the embedded SmolLM2 (no checkpoint, no server URL)."""
    return (getattr(args, "llm_checkpoint", None) is None and getattr(args, "llm_base_url", None) is None
            and (getattr(args, "llm_backend", None) or "auto") in ("auto", "llamacpp"))


def sampling_defaults(args: argparse.Namespace) -> dict:
    """Sampling flags and system prompt: the ones given, else the defaults for the LLM they load."""
    base = EMBEDDED_LLM_DEFAULTS if uses_embedded_llm(args) else SAMPLING_DEFAULTS
    return {name: base[name] if getattr(args, name, None) is None else getattr(args, name) for name in base}


def is_url(text: str | None) -> bool:
    return bool(text) and str(text).lower().startswith(("http://", "https://"))


def guess_backend(llm_checkpoint: str | None, chat_type: str = "text", llm_base_url: str | None = None) -> str:
    """The backend `--llm_checkpoint` implies for `chat_type` (see the module docstring)."""
    if llm_base_url or is_url(llm_checkpoint):
        return "openai"
    if llm_checkpoint is None:
        if chat_type in ("visual_speech", "multimodal"):
            example = "Qwen/Qwen2.5-VL-3B-Instruct" if chat_type == "visual_speech" else \
                "microsoft/Phi-4-multimodal-instruct"
            raise LLMVoXError(f"--chat_type {chat_type} needs --llm_checkpoint: a model folder or hub id "
                              f"(e.g. {example}) or the URL of an OpenAI-compatible server that takes images")
        return "llamacpp"
    if str(llm_checkpoint).lower().endswith(".gguf"):
        return "llamacpp"
    if chat_type == "visual_speech":
        return "vlm"
    if chat_type == "multimodal":
        return "multimodal"
    return "transformers"


def backend_from_args(llm_checkpoint: str | None = None, llm_backend: str | None = None, *,
                      chat_type: str = "text", llm_device: str = "cpu", llm_dtype: str = "auto",
                      eos_token: str | None = None, llm_base_url: str | None = None, llm_api_key: str | None = None,
                      llm_model: str | None = None, trust_remote_code: bool = False,
                      llm_threads: int | None = None, llm_n_ctx: int = 4096) -> LLMBackend:
    """Build the LLM backend the flags describe (loading its model); LLMVoXError on a bad combination."""
    if chat_type not in CHAT_TYPES:
        raise LLMVoXError(f"unknown chat type {chat_type!r}; choose one of: {', '.join(CHAT_TYPES)}")
    kind = (llm_backend or "auto").lower()
    if kind not in BACKENDS:
        raise LLMVoXError(f"unknown --llm_backend {llm_backend!r}; choose one of: {', '.join(BACKENDS)}")
    if kind == "auto":
        kind = guess_backend(llm_checkpoint, chat_type, llm_base_url)

    if kind == "openai":
        url = llm_base_url or (llm_checkpoint if is_url(llm_checkpoint) else None)
        if not url:
            raise LLMVoXError("the openai backend needs --llm_base_url (or a URL as --llm_checkpoint)")
        model = llm_model or (llm_checkpoint if llm_checkpoint and not is_url(llm_checkpoint) else None)
        key = llm_api_key or os.environ.get("LLMVOX_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
        from llmvox.llm.openai_backend import OpenAIBackend

        return OpenAIBackend(url, api_key=key, model=model)
    if kind == "llamacpp":
        if llm_checkpoint is not None and not Path(llm_checkpoint).is_file():
            raise LLMVoXError(f"GGUF model file not found: {llm_checkpoint}")
        from llmvox.llm.llamacpp import LlamaCppBackend

        return LlamaCppBackend(llm_checkpoint, n_ctx=llm_n_ctx, n_threads=llm_threads,
                               repeat_penalty=EMBEDDED_REPEAT_PENALTY if llm_checkpoint is None else 1.0)
    if llm_checkpoint is None:
        raise LLMVoXError(f"--llm_backend {kind} needs --llm_checkpoint (a model folder or hub id)")
    if Path(llm_checkpoint).suffix.lower() == ".gguf":
        raise LLMVoXError(f"{llm_checkpoint} is a GGUF file: use --llm_backend llamacpp (or auto)")
    common = dict(device=llm_device, dtype=llm_dtype, eos_token=eos_token, trust_remote_code=trust_remote_code)
    if kind == "transformers":
        from llmvox.llm.transformers_backend import TransformersBackend

        return TransformersBackend(llm_checkpoint, **common)
    if kind == "vlm":
        from llmvox.llm.vlm import VisionLanguageBackend

        return VisionLanguageBackend(llm_checkpoint, **common)
    from llmvox.llm.multimodal import MultimodalBackend

    return MultimodalBackend(llm_checkpoint, **common)


def _add(group, name: str, **kwargs) -> None:
    """--snake_case plus a --kebab-case alias, skipped when the parser already has the flag."""
    flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    container = getattr(group, "_container", group)
    while hasattr(container, "_container"):
        container = container._container
    if any(flag in container._option_string_actions for flag in flags):
        return
    group.add_argument(*flags, dest=name, **kwargs)


def add_llm_args(parser: argparse.ArgumentParser) -> None:
    """The original's LLM flags plus the backend choice; flags the parser already has are left alone."""
    group = parser.add_argument_group("LLM (default: the embedded SmolLM2-135M GGUF on llama.cpp)")
    _add(group, "llm_checkpoint", default=None, metavar="GGUF|DIR|HUB_ID|URL",
         help="a .gguf file, a transformers folder or hub id, or an OpenAI-compatible server URL")
    _add(group, "llm_backend", default="auto", choices=BACKENDS, help="override the guess from --llm_checkpoint")
    _add(group, "llm_device", default="cpu", help="cpu, cuda, cuda:N or auto (transformers backends)")
    _add(group, "llm_dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    _add(group, "llm_max_tokens", type=int, default=1000, help="answer length cap in tokens (default 1000)")
    _add(group, "llm_temperature", type=float, default=None,
         help="sampling temperature; 0 = greedy (default 0.7; 0.2 for the embedded SmolLM2)")
    _add(group, "llm_top_p", type=float, default=None, help="nucleus sampling mass (default 0.95; 0.9 for SmolLM2)")
    _add(group, "llm_top_k", type=int, default=None, help="top-k sampling (default 40)")
    _add(group, "eos_token", default="<|eot_id|>",
         help="extra end-of-turn token, used when the model's vocabulary has it (default <|eot_id|>)")
    _add(group, "system_prompt", default=None,
         help="system prompt for every chat (default: the original's; a short plain one for the embedded SmolLM2)")
    _add(group, "llm_base_url", default=None, metavar="URL", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    _add(group, "llm_api_key", default=None, help="API key for --llm_base_url (or $LLMVOX_LLM_API_KEY, $OPENAI_API_KEY)")
    _add(group, "llm_model", default=None, help="model name at --llm_base_url (default: the first it lists)")
    _add(group, "trust_remote_code", action="store_true",
         help="allow model code shipped with a transformers checkpoint (e.g. the original Phi-4-multimodal)")


def backend_from_namespace(args: argparse.Namespace) -> LLMBackend:
    """`backend_from_args` fed from parsed flags (missing attributes take their defaults)."""
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    return backend_from_args(
        get("llm_checkpoint"), get("llm_backend"), chat_type=get("chat_type", "text") or "text",
        llm_device=get("llm_device", "cpu") or "cpu", llm_dtype=get("llm_dtype", "auto") or "auto",
        eos_token=get("eos_token"), llm_base_url=get("llm_base_url"), llm_api_key=get("llm_api_key"),
        llm_model=get("llm_model"), trust_remote_code=bool(get("trust_remote_code", False)),
        llm_threads=get("llm_threads"))
