"""Streaming `generate()` for every transformers-based backend (text, vision, audio+vision).

transformers generates in a blocking call, so the call runs in a worker thread and hands text to the
caller through a `TextIteratorStreamer`. Two things the plain recipe lacks, done here once:
- cancellation reaches the model: a stopping criterion reads the cancel event at every step, so a client
  that hangs up stops the token loop (not just the reading of its output);
- errors reach the caller: an exception in the worker becomes an `LLMVoXError` in the consumer, instead
  of a consumer that waits forever on an empty queue.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from llmvox.errors import LLMVoXError
from llmvox.llm.base import LLMBackend, fit_to_context


class StopText:
    """Cuts a text stream at the first stop string, holding back only what could start one.

    Deltas arrive in arbitrary pieces, so a stop string may straddle two of them; the tail that is a
    prefix of some stop string waits until the next delta decides.
    """

    def __init__(self, stops: list[str] | None) -> None:
        self.stops = [s for s in (stops or []) if s]
        self._held = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Text that is safe to emit now (empty once a stop string was seen)."""
        if self.stopped:
            return ""
        if not self.stops:
            return delta
        text = self._held + delta
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self._held = True, ""
            return text[:cut]
        keep = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    keep = max(keep, n)
                    break
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What was held back when the stream ended without completing a stop string."""
        held, self._held = self._held, ""
        return "" if self.stopped else held


def sampling_kwargs(temperature: float, top_p: float, top_k: int) -> dict[str, Any]:
    """generate() sampling arguments; temperature <= 0 means greedy decoding."""
    if temperature is None or temperature <= 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p),
            "top_k": int(top_k) if top_k and top_k > 0 else None}


def stream_generate(model, tokenizer, inputs: dict[str, Any], *, max_new_tokens: int, sampling: dict[str, Any],
                    eos_token_ids: list[int] | None, pad_token_id: int | None, stop: list[str] | None,
                    cancel: threading.Event | None, on_token=None, seed: int | None = None) -> Iterator[str]:
    """Run `model.generate(**inputs)` in a thread and yield decoded text as it is produced.

    `on_token()` is called once per generated token (in the worker thread): backends count tokens with
    it. Closing the returned iterator early (the consumer stops reading) also stops the generation.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    halt = threading.Event()  # set by the consumer going away, or by the caller's cancel event

    class _Halt(StoppingCriteria):
        """Stops at the next step once cancelled; also the per-token hook."""

        def __call__(self, input_ids, scores, **kwargs):
            if on_token is not None:
                on_token()
            stop_now = halt.is_set() or (cancel is not None and cancel.is_set())
            return torch.full((input_ids.shape[0],), stop_now, dtype=torch.bool, device=input_ids.device)

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(inputs)
    kwargs.update(sampling)
    kwargs.update(max_new_tokens=int(max_new_tokens), streamer=streamer,
                  stopping_criteria=StoppingCriteriaList([_Halt()]))
    if eos_token_ids:
        kwargs["eos_token_id"] = eos_token_ids
    if pad_token_id is not None:
        kwargs["pad_token_id"] = pad_token_id
    failure: list[BaseException] = []

    def work() -> None:
        try:
            with torch.inference_mode():
                if seed is not None:
                    torch.manual_seed(seed)  # global RNG: backends run one generation at a time
                model.generate(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer below
            failure.append(exc)
            streamer.end()  # wake the consumer; generate() did not get to end the stream

    worker = threading.Thread(target=work, name="llm-generate", daemon=True)
    worker.start()
    stops = StopText(stop)
    try:
        for text in streamer:
            if cancel is not None and cancel.is_set():
                break
            out = stops.feed(text)
            if out:
                yield out
            if stops.stopped:
                break
        else:
            tail = stops.flush()
            if tail and not failure:
                yield tail
    finally:
        halt.set()
        worker.join()
    if failure and not (cancel is not None and cancel.is_set()):
        exc = failure[0]
        raise LLMVoXError(f"the LLM failed while generating: {type(exc).__name__}: {exc}") from exc


def resolve_device(device: str | None) -> str:
    """'auto' -> cuda when present, else cpu; a CUDA device that is missing is a user error."""
    import torch

    device = (device or "cpu").strip()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LLMVoXError(f"--llm_device {device}: CUDA is not available on this machine (use cpu)")
    return device


def resolve_dtype(dtype: str | None, device: str):
    """'auto' -> bfloat16 on GPUs, float32 on the CPU (bf16 matmuls are slow on many CPUs)."""
    import torch

    name = (dtype or "auto").lower()
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise LLMVoXError(f"unknown dtype {dtype!r}; choose auto, float32, bfloat16 or float16")
    return table[name]


def load_failure(what: str, source: str, exc: BaseException) -> LLMVoXError:
    """One message for every 'could not load a model' case (missing folder, offline hub id, bad files)."""
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return LLMVoXError(f"cannot load {what} from {source!r}: {text}")


def eos_ids(model, tokenizer, eos_token: str | None) -> list[int]:
    """The ids that end a turn: the model's and tokenizer's EOS plus `--eos_token` when known.

    The original's default `--eos_token <|eot_id|>` is Llama-3's; other models do not know it, so an
    unknown token is ignored rather than failing.
    """
    ids: list[int] = []
    generation_config = getattr(model, "generation_config", None)
    for own in (getattr(generation_config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(own, int):
            ids.append(own)
        elif isinstance(own, (list, tuple)):
            ids.extend(int(i) for i in own)
    if eos_token:
        vocab = tokenizer.get_vocab()
        if eos_token in vocab:
            ids.append(int(vocab[eos_token]))
    return sorted(set(ids))


def context_size(model, tokenizer=None) -> int | None:
    """The most tokens the model takes (prompt plus answer), from its config; None when it does not say."""
    config = getattr(model, "config", None)
    sizes = []
    for part in (config, getattr(config, "text_config", None)):
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(part, name, None)
            if isinstance(value, int) and value > 0:
                sizes.append(value)
                break
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**7:  # unset, transformers reports a huge sentinel
        sizes.append(limit)
    return min(sizes) if sizes else None


class HFChatBackend(LLMBackend):
    """What the transformers backends share: one answer at a time, streamed through `stream_generate`.

    Subclasses set model, tokenizer, eos/pad ids, `_lock`, `_count` and define `prompt_inputs`.
    """

    _fitted: tuple[list[dict], dict] | None = None  # the last fitted messages and their inputs, reused once

    def prompt_inputs(self, messages: list[dict]) -> dict:
        raise NotImplementedError

    def fit_messages(self, messages: list[dict], max_tokens: int) -> tuple[list[dict], int]:
        """Oldest turns dropped until the templated prompt (media tokens included) leaves room for an answer
        in the model's positions; past them generate() fails or the model writes garbage."""
        context = context_size(self.model, self.tokenizer)
        if context is None:
            return messages, max_tokens
        last: list = [None, None]  # the latest (messages, inputs) encoded

        def prompt_tokens(kept: list[dict]) -> int:
            last[:] = [kept, self.prompt_inputs(kept)]
            return int(last[1]["input_ids"].shape[-1])

        fitted, budget = fit_to_context(messages, max_tokens, context, prompt_tokens)
        if last[0] is not None and [id(m) for m in last[0]] == [id(m) for m in fitted]:
            self._fitted = (fitted, last[1])  # stream_chat uses these inputs instead of encoding again
        return fitted, budget

    def stream_chat(self, messages: list[dict], *, max_tokens: int = 1000, temperature: float = 0.7,
                    top_p: float = 0.95, top_k: int = 40, stop: list[str] | None = None,
                    cancel: threading.Event | None = None, seed: int | None = None) -> Iterator[str]:
        with self._lock:
            fitted, self._fitted = self._fitted, None
            inputs = fitted[1] if fitted is not None and fitted[0] is messages else self.prompt_inputs(messages)
            yield from stream_generate(
                self.model, self.tokenizer, inputs, max_new_tokens=max_tokens,
                sampling=sampling_kwargs(temperature, top_p, top_k), eos_token_ids=self.eos_token_ids,
                pad_token_id=self.pad_token_id, stop=stop, cancel=cancel, on_token=self._count, seed=seed)

    def close(self) -> None:
        self.model = None
