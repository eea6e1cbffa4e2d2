"""The LLMVoX decoder trainer: the original recipe, made resumable, distributed and CPU-friendly.

This module is the training loop, readable top to bottom like nanoGPT's `train.py`; its pieces live
next to it: `config` (the flags), `distributed` (torchrun), `training_data` (cache, split, data order),
`decoder_init` (sizes, weights, text table), `optim` (schedule, AdamW, one step), `checkpoints`
(format, resume, export) and `logs` (JSONL/TensorBoard/W&B, Ctrl-C).

What it keeps from the original `train.py` (so results and checkpoints mean the same thing):
- step semantics (see `llmvox.train.batching`): text padded with PAD to the audio length, inputs
  [no code, codes], targets codes + EOA, cross-entropy ignoring padding (-1000), averaged per
  micro-batch and divided by the accumulation steps;
- AdamW (betas 0.9/0.95, eps 1e-5) with the nanoGPT decay groups: GPT tensors of 2+ dims decay,
  1-dim ones (LayerNorm weights, biases) do not;
- linear warmup from 0 then cosine decay to `min_lr` at `lr_decay_iters`; gradient clipping;
- `gradient_accumulation_steps` is the total over all processes (each of W ranks does 1/W of it);
- checkpoints: a `torch.save` dict with `model`, `model_args`, `iter_num`, `optimizer`, `config`.

What it adds:
- the text embedding table is part of the trained model (our voices learn it: no ByT5 weights
  offline); it is stored under the extra key `text_embedding` and sits in the no-decay group, because
  after the L2 normalisation of [text, code] decay would only shift weight from text to code;
- a tokenised cache instead of re-encoding audio in every batch; length-bucketed batches;
- exact resume: RNG states of every rank and the data position (`train_state`) are saved, and the
  data order is a pure function of the seed, so an interrupted run continues bit for bit;
- bf16/fp16 autocast on CPU as well as CUDA; DDP over gloo (CPU) or nccl (CUDA) under torchrun;
- held-out eval loss; tqdm, TensorBoard and W&B logging; SIGINT/SIGTERM save a checkpoint and stop.

`max_iters` is the number of optimizer steps: the run stops with `iter_num == max_iters` (the
original took one extra step). A checkpoint's `iter_num` counts completed steps.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmvox.errors import LLMVoXError
from llmvox.model.gpt import GPT
from llmvox.model.speech_decoder import SpeechDecoder
from llmvox.train.alignment import GuidedAttention, parse_heads
from llmvox.train.batching import IGNORE_INDEX
from llmvox.train.checkpoints import (
    CheckpointWriter,
    TrainState,
    check_same_codec,
    export_bundle_from_checkpoint,
    load_optimizer_state,
    set_rng_state,
    starting_checkpoint,
)
from llmvox.train.config import DTYPES, TrainConfig, resolve_dtype, validate_config
from llmvox.train.decoder_init import build_decoder, choose_text_frontend
from llmvox.train.distributed import DistEnv, process_group, set_thread_count, setup_distributed, wrap_ddp
from llmvox.train.logs import RunLog, StopOnSignal, log
from llmvox.train.optim import ADAM_EPS, autocast_context, lr_for_iter, make_optimizer, optimizer_step, set_lr
from llmvox.train.phonemes import PHONEME_TABLE_FILE, PhonemeCTC, fit_head, phoneme_table
from llmvox.train.training_data import TrainingData, load_codec_source, open_code_cache, read_with_frontend


@dataclass
class TrainResult:
    iter_num: int
    checkpoint: Path
    losses: list[tuple[int, float]] = field(default_factory=list)  # (iteration, train loss) at log steps
    val_loss: float | None = None
    interrupted: bool = False
    bundle: Path | None = None


class Trainer:
    """One training run; build with a config, call `run()`."""

    def __init__(self, cfg: TrainConfig, env: DistEnv, log_fn: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.env = env
        self.say = log_fn or (lambda s: log.info(s))
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_path = self.out_dir / cfg.checkpoint_filename

    def _info(self, message: str) -> None:
        if self.env.master:
            self.say(message)

    def run(self) -> TrainResult:
        cfg, env = self.cfg, self.env
        self._check_run()
        device, dtype = env.device, resolve_dtype(cfg.dtype, env.device)

        # what to start from, and the data (a dataset JSON is tokenised first)
        ckpt, resumed = starting_checkpoint(cfg, self.ckpt_path)
        resume_from = ckpt if resumed else None
        codec, codec_source = self._codec()
        if env.master:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        cache = open_code_cache(cfg, env, codec, codec_source, self.out_dir, self.say)
        if ckpt is not None:
            check_same_codec(ckpt, cache.fingerprint)
        frontend = choose_text_frontend(cfg, ckpt, resumed, self._info)
        cache = read_with_frontend(cache, frontend, self.out_dir, self._info)
        code_features = torch.from_numpy(cache.codebook()).float()

        # model and optimizer; a resumed run continues its optimizer, counters and RNG streams
        torch.manual_seed(cfg.seed)
        weights_source = str(self.ckpt_path) if resumed else cfg.init_from
        decoder, frozen = build_decoder(cfg, ckpt, weights_source, code_features, cache.codebook_size, device,
                                        self._info)
        gpt = decoder.gpt
        params = [p for p in decoder.parameters() if p.requires_grad]
        optimizer = make_optimizer(decoder, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                   betas=(cfg.beta1, cfg.beta2), device_type=device.type)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        progress = TrainState.resumed_from(resume_from, cfg.gradient_accumulation_steps)
        if resumed:
            self._resume_optimizer(ckpt, optimizer, scaler, cache)
        torch.manual_seed(cfg.seed + env.rank)  # per-rank RNG (dropout): the original seeds 1337 + rank
        if resumed:
            self._resume_rng(ckpt)
        model = self._wrap(decoder)

        # data order, autocast and the auxiliary losses
        max_len = min(cfg.max_seq_len or gpt.config.block_size, gpt.config.block_size)
        data = TrainingData(cache, cfg, max_len, env, self._info)
        ctx = autocast_context(device.type, dtype)
        guide = self._guided_attention(gpt)
        ctc, ctc_optimizer, head_is_new = self._phoneme_ctc(gpt, cache, max_len, ckpt, resumed)
        aux = [a for a in (guide, ctc) if a is not None]
        aux_optimizers = [ctc_optimizer] if ctc is not None else []
        evaluate = functools.partial(held_out_loss, decoder, data, ctx, ctc, env)
        self._describe(decoder, frozen, cache, data, dtype, progress.iter_num)
        if cfg.eval_only:
            return self._eval_only(evaluate, progress.iter_num)
        if head_is_new and cfg.phoneme_ctc_head_warmup and ckpt is not None:
            self._fit_ctc_head(ctc, ctc_optimizer, decoder, data, ctx)

        run_log = RunLog(cfg, self.out_dir, progress.iter_num, resumed, progress.wandb_run_id, env.master,
                         self._info)
        progress.wandb_run_id = run_log.wandb_id
        writer = CheckpointWriter(self.ckpt_path, cfg, env, decoder, optimizer, scaler, cache, frontend, frozen,
                                  ctc, ctc_optimizer)
        progress.start_clock()
        start_iter, interrupted = progress.iter_num, False
        try:
            with StopOnSignal() as stop:
                while progress.iter_num < cfg.max_iters:
                    it = progress.iter_num
                    # the original evaluates (and saves) at step 0 too; a resumed run just saved this state
                    if self._eval_due(it) and not (resumed and it == start_iter):
                        self._eval_and_save(evaluate, progress, run_log, writer)
                    lr = lr_for_iter(cfg, it)
                    set_lr([optimizer, *aux_optimizers], lr)
                    batches = data.step_batches(progress.cursor)
                    loss = optimizer_step(model, params, optimizer, scaler, batches, ctx, cfg.grad_clip, aux,
                                          aux_optimizers)
                    step_tokens = int(env.all_reduce(torch.tensor([sum(b.num_targets for b in batches)],
                                                                  dtype=torch.float64))[0])
                    progress.cursor += cfg.gradient_accumulation_steps
                    progress.tokens_seen += step_tokens
                    run_log.count_tokens(step_tokens)
                    if cfg.log_interval and it % cfg.log_interval == 0:
                        # the loss and the aux losses' means, over every process's micro-batches
                        means = env.all_reduce(torch.tensor([loss, *(a.last for a in aux)], dtype=torch.float64))
                        loss, *aux_means = (float(v) / env.world_size for v in means)
                        aux_logged = {a.name: mean for a, mean in zip(aux, aux_means, strict=True)}
                        run_log.train_step(it, loss, lr, aux_logged, progress.tokens_seen)
                    progress.iter_num += 1
                    run_log.step_done()
                    if env.agree_to_stop(stop.requested):
                        interrupted = True
                        break
                if interrupted:
                    writer.save(progress)
                    self._info(f"stopped at iter {progress.iter_num}; checkpoint saved to {self.ckpt_path} "
                               "(continue with --init_from=resume)")
                else:
                    self._eval_and_save(evaluate, progress, run_log, writer)
        finally:
            run_log.close()
        result = TrainResult(progress.iter_num, self.ckpt_path, run_log.losses, run_log.val_loss, interrupted)
        if not interrupted:
            result.bundle = self._export(codec)
        env.barrier()
        return result

    # --- setup steps of `run` ------------------------------------------------------------------------

    def _check_run(self) -> None:
        """Refuse a bad run before loading anything; set the CPU thread count."""
        cfg, env = self.cfg, self.env
        validate_config(cfg)
        set_thread_count(env, cfg.num_threads)
        if cfg.gradient_accumulation_steps % env.world_size:
            raise LLMVoXError(f"--gradient_accumulation_steps {cfg.gradient_accumulation_steps} (the total over "
                              f"all processes) must be a multiple of the {env.world_size} processes")
        if cfg.tokenizer_path:
            from llmvox.api import check_tokenizer_path

            check_tokenizer_path(cfg.tokenizer_path)

    def _codec(self):
        """(codec, description) from the flags; (None, None) when none is given and none is needed."""
        cfg = self.cfg
        codec, codec_source = load_codec_source(cfg.wav_config_path, cfg.wav_model_path, cfg.bundle)
        if cfg.export_bundle and codec is None:
            raise LLMVoXError("--export_bundle needs the codec (--wav_config_path/--wav_model_path or --bundle)")
        return codec, codec_source

    def _resume_optimizer(self, ckpt: dict, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                          cache) -> None:
        load_optimizer_state(ckpt, optimizer, scaler, self.ckpt_path)
        saved_data = ckpt.get("llmvox", {}).get("data_fingerprint")
        if saved_data and saved_data != cache.data_fingerprint():
            self._info("warning: the data set changed since the checkpoint; the run continues, but not "
                       "exactly as it would have")

    def _resume_rng(self, ckpt: dict) -> None:
        """Every rank continues its own RNG stream, when the world size is the checkpoint's."""
        rng_states = ckpt.get("train_state", {}).get("rng") or []
        if len(rng_states) == self.env.world_size:
            set_rng_state(rng_states[self.env.rank], self.env.device)
        else:
            self._info(f"warning: checkpoint has RNG states of {len(rng_states)} processes, not "
                       f"{self.env.world_size}: dropout noise will differ from an uninterrupted run")

    def _wrap(self, decoder: SpeechDecoder) -> nn.Module:
        """The module the steps run: the decoder, compiled and under DDP when asked."""
        model: nn.Module = decoder
        if self.cfg.compile:
            model = torch.compile(model)
        if self.env.ddp:
            model = wrap_ddp(model, self.env.device)
        return model

    def _guided_attention(self, gpt: GPT) -> GuidedAttention | None:
        cfg = self.cfg
        if not (cfg.guided_attn_heads and cfg.guided_attn_weight > 0):
            return None
        heads = parse_heads(cfg.guided_attn_heads, gpt.config.n_layer, gpt.config.n_head)
        guide = GuidedAttention(gpt, heads, sigma=cfg.guided_attn_sigma, weight=cfg.guided_attn_weight)
        self._info(f"guided attention on heads {cfg.guided_attn_heads} (weight {cfg.guided_attn_weight}, "
                   f"sigma {cfg.guided_attn_sigma})")
        return guide

    def _phoneme_ctc(self, gpt: GPT, cache, max_len: int, ckpt: dict | None, resumed: bool
                     ) -> tuple[PhonemeCTC | None, torch.optim.Optimizer | None, bool]:
        """The phoneme CTC loss, its head's optimizer (None when off) and whether the head is new.

        A resumed run continues its head and the head's optimizer; a warm start continues the head its
        weights came with (a bundle exported from a CTC run keeps it)."""
        cfg = self.cfg
        if cfg.phoneme_ctc_weight <= 0:
            return None, None, False
        layer = gpt.config.n_layer // 2 if cfg.phoneme_ctc_layer is None else cfg.phoneme_ctc_layer
        saved = (ckpt or {}).get("phoneme_ctc")
        if saved and saved["layer"] != layer:
            raise LLMVoXError(f"the checkpoint's phoneme CTC head reads layer {saved['layer']}, not {layer}")
        start = time.perf_counter()
        phonemes, vocab = phoneme_table([cache.text(i) for i in range(len(cache))],
                                         store=self.out_dir / PHONEME_TABLE_FILE)
        complete = cache.code_lengths + 1 <= max_len
        first = cache.text_lengths if cfg.phoneme_ctc_after_text else None
        ctc = PhonemeCTC(gpt, layer, phonemes, complete, vocab_size=vocab, weight=cfg.phoneme_ctc_weight,
                         seed=cfg.seed, first_steps=first)
        ctc.head.to(self.env.device)
        opt = torch.optim.AdamW(ctc.head.parameters(), lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                                eps=ADAM_EPS, weight_decay=0.0)
        if saved:
            ctc.head.load_state_dict(saved["head"])
            if resumed:
                opt.load_state_dict(saved["optimizer"])
        counts = [len(p) for p in phonemes]
        where = ", after the text" if cfg.phoneme_ctc_after_text else ""
        origin = ("; head resumed" if resumed else "; head from the warm start") if saved else ""
        self._info(f"phoneme CTC on layer {layer}{where} (weight {cfg.phoneme_ctc_weight}): {vocab} symbols, "
                   f"{np.mean(counts):.0f} phonemes per utterance, {int(complete.sum())}/{len(cache)} scored; "
                   f"g2p took {time.perf_counter() - start:.1f} s{origin}")
        return ctc, opt, not saved

    def _fit_ctc_head(self, ctc: PhonemeCTC, optimizer: torch.optim.Optimizer, model: nn.Module,
                      data: TrainingData, ctx: contextlib.AbstractContextManager) -> None:
        """--phoneme_ctc_head_warmup N on a warm start without a head: N head-only steps over the first
        batches of the data order (which the run then trains on as usual)."""
        cfg = self.cfg
        start = time.perf_counter()
        steps = (data.step_batches(k * cfg.gradient_accumulation_steps) for k in range(cfg.phoneme_ctc_head_warmup))
        losses = fit_head(ctc, optimizer, model, steps, ctx, cfg.grad_clip)
        self._info(f"phoneme CTC head fitted alone (decoder frozen) for {len(losses)} steps in "
                   f"{time.perf_counter() - start:.0f} s: {losses[0]:.2f} -> {np.mean(losses[-10:]):.3f} nats per "
                   "phoneme (mean of the last 10)")

    def _describe(self, decoder: SpeechDecoder, frozen: bool, cache, data: TrainingData, dtype: torch.dtype,
                  iter_num: int) -> None:
        cfg, env, gconf = self.cfg, self.env, decoder.gpt.config
        self._info(
            f"decoder {gconf.n_layer} x {gconf.n_embd} ({gconf.n_head} heads), {decoder.gpt.num_params() / 1e6:.2f} "
            f"M params, {cache.codebook_size} codes, text table {tuple(decoder.text_embedding.weight.shape)} "
            f"{'frozen' if frozen else 'trained'}; {len(data.train_idx)} train / {len(data.val_idx)} held-out "
            f"utterances ({cache.hours:.2f} h); device {env.device}, {str(dtype).removeprefix('torch.')}, "
            f"{env.world_size} process(es); global batch {cfg.batch_size} x {cfg.gradient_accumulation_steps}; "
            f"iter {iter_num} -> {cfg.max_iters}")

    # --- steps of the loop ---------------------------------------------------------------------------

    def _eval_due(self, it: int) -> bool:
        return bool(self.cfg.eval_interval) and it % self.cfg.eval_interval == 0

    def _eval_and_save(self, evaluate: Callable[[], tuple[float | None, float | None]], progress: TrainState,
                       run_log: RunLog, writer: CheckpointWriter) -> None:
        """Evaluate on the held-out batches, log the losses, then save (the best loss goes with it)."""
        val, val_ctc = evaluate()
        if val is not None:
            progress.best_val_loss = val if progress.best_val_loss is None else min(progress.best_val_loss, val)
            run_log.held_out(progress.iter_num, val, val_ctc)
        writer.save(progress)

    def _eval_only(self, evaluate: Callable[[], tuple[float | None, float | None]], iter_num: int) -> TrainResult:
        val, _ = evaluate()
        self._info(f"eval at iter {iter_num}: held-out loss {val if val is None else round(val, 4)}")
        return TrainResult(iter_num, self.ckpt_path, val_loss=val)

    def _export(self, codec) -> Path | None:
        """--export_bundle: the finished checkpoint as a bundle (written by rank 0)."""
        cfg = self.cfg
        if not (cfg.export_bundle and self.env.master):
            return None
        bundle = export_bundle_from_checkpoint(self.ckpt_path, codec, cfg.export_bundle,
                                               dtype=DTYPES[cfg.export_dtype])
        self.say(f"bundle written to {bundle}")
        return bundle


@torch.no_grad()
def held_out_loss(decoder: SpeechDecoder, data: TrainingData, ctx: contextlib.AbstractContextManager,
                  ctc: PhonemeCTC | None, env: DistEnv) -> tuple[float | None, float | None]:
    """Held-out cross-entropy per step (and phoneme CTC per batch, when it is trained), over all processes."""
    if not data.val_batches:
        return None, None
    decoder.eval()
    sums = torch.zeros(4, dtype=torch.float64)
    for batch in data.held_out_batches():
        with ctx, ctc.recording() if ctc is not None else contextlib.nullcontext():
            logits = decoder(batch.text_ids, batch.prev_codes)
        sums[0] += F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(),
                                   ignore_index=IGNORE_INDEX, reduction="sum").double().cpu()
        sums[1] += batch.num_targets
        if ctc is not None:
            sums[2] += float(ctc.batch_loss(batch))
            sums[3] += 1
    decoder.train()
    sums = env.all_reduce(sums)
    return float(sums[0] / sums[1]), float(sums[2] / sums[3]) if sums[3] else None


def train(cfg: TrainConfig, log_fn: Callable[[str], None] | None = None) -> TrainResult:
    """Run one training (under torchrun: one process of a DDP run)."""
    validate_config(cfg)
    env = setup_distributed(cfg)
    with process_group(env):
        return Trainer(cfg, env, log_fn).run()
