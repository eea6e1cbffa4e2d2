"""Training a WavTokenizer codec on a CPU: the trainer and its loop, readable top to bottom.

One step (`train_step`) encodes random crops, quantises them with a straight-through gradient,
decodes, and minimises mel + multi-resolution STFT + commitment losses (plus, when enabled, the phase,
semantic-distillation and GAN terms) with AdamW, warmup + cosine decay and gradient clipping; bf16
autocast covers the encoder and backbone, while the ISTFT head, spectra and codebook distances stay
float32. `fit` repeats it, logging, evaluating, exporting milestones and saving on schedule.

Everything else has a module of its own: the settings and their YAML mapping (`codec_config`), the
clips and seeded crops (`codec_data`), the EMA codebook (`ema_codebook`), quantisation and latent
rescaling (`codec_latents`), held-out evaluation (`codec_eval`) and the run folder's files: state,
checkpoints, milestones, logs (`codec_checkpoints`).

Phase B of our recipe freezes the encoder and codebook (`freeze_encoder`): codes stop changing, so a
corpus tokenised with the phase-A codec stays valid while the backbone and head keep improving.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from llmvox.codec.config import CodecConfig
from llmvox.codec.wavtokenizer import WavTokenizer
from llmvox.errors import LLMVoXError
from llmvox.train.codec_checkpoints import (
    EVAL_LOG,
    STATE_FILE,
    STATE_VERSION,
    TRAIN_LOG,
    append_jsonl,
    codes_fingerprint,
    export_milestone,
    load_milestone_weights,
    read_training_state,
    resumed_run,
    write_checkpoints,
)
from llmvox.train.codec_config import CodecTrainSettings
from llmvox.train.codec_data import Clip, CropDataset, load_clips, split_heldout
from llmvox.train.codec_eval import EvalResult, evaluate_heldout
from llmvox.train.codec_latents import match_latent_scale, quantize_for_training, scale_encoder_output
from llmvox.train.ema_codebook import EmaCodebook
from llmvox.train.losses import (
    TRAIN_LOG_FLOOR,
    MelDistance,
    MultiResolutionMelLoss,
    MultiResolutionSTFTLoss,
    PhaseDerivativeLoss,
    codebook_perplexity,
    discriminator_hinge_loss,
    feature_matching_loss,
    generator_hinge_loss,
)
from llmvox.train.semantic import SemanticStore, probe_distance

log = logging.getLogger(__name__)


# ============================================================================================
# Model pieces used in training
# ============================================================================================


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


@dataclass
class StepOutput:
    audio_hat: Tensor
    latents: Tensor  # (B, D, T) float32, encoder output
    features: Tensor  # (B, D, T) what the backbone saw (quantised, straight-through gradient)
    codes: Tensor | None  # (B, T) or None while quantisation is skipped
    commit: Tensor


def _param_groups(model: WavTokenizer, weight_decay: float) -> list[dict[str, Any]]:
    """Four fixed groups (encoder/decoder x decay/no decay) so optimiser state survives phase switches."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {(p, d): [] for p in ("enc", "dec") for d in (True, False)}
    for name, param in model.named_parameters():
        part = "enc" if name.startswith("encoder.") else "dec"
        decay = param.dim() >= 2 and not name.endswith("weight_g")
        groups[(part, decay)].append(param)
    return [{"params": groups[(p, d)], "weight_decay": weight_decay if d else 0.0, "name": f"{p}_{'decay' if d else 'nodecay'}"}
            for p in ("enc", "dec") for d in (True, False)]


def lr_factor(step: int, settings: CodecTrainSettings) -> float:
    """Linear warmup then cosine decay to `min_lr_ratio`, counted from `schedule_start`."""
    s = step - settings.schedule_start
    span = max(settings.max_steps - settings.schedule_start, 1)
    if s < settings.warmup_steps:
        return (s + 1) / settings.warmup_steps
    progress = min((s - settings.warmup_steps) / max(span - settings.warmup_steps, 1), 1.0)
    return settings.min_lr_ratio + (1 - settings.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ============================================================================================
# The trainer
# ============================================================================================


class CodecTrainer:
    """Owns the model, optimiser(s), data and output folder of one codec training run."""

    def __init__(self, config: CodecConfig, settings: CodecTrainSettings, data_path: str | os.PathLike,
                 out_dir: str | os.PathLike, *, resume: bool = False,
                 overrides: dict[str, Any] | None = None, progress: bool = True,
                 clips: list[Clip] | None = None, init_weights: str | os.PathLike | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.data_path = str(data_path)
        self.progress = progress
        state = None
        phase_switch = False
        if resume:
            state = read_training_state(self.out_dir)
            config, settings, phase_switch = resumed_run(state, overrides)
        elif (self.out_dir / STATE_FILE).is_file():
            raise LLMVoXError(
                f"{self.out_dir} already holds a training state ({STATE_FILE}); pass --resume to continue it "
                "or choose another --out_dir"
            )
        settings.validate()
        self.config, self.settings = config, settings
        torch.set_num_threads(settings.threads)

        torch.manual_seed(settings.seed)  # the model, the probe and the discriminators draw in this order
        self._build_model_and_optimisers()
        self._build_losses()
        self._build_data(clips if clips is not None else load_clips(data_path), state)

        self.step = 0
        self.best_mel = math.inf
        self.last_milestone_mel = math.inf
        if state is None and init_weights is not None:
            load_milestone_weights(self.model, self.config, Path(init_weights))
            if settings.reinit_codebook:
                self.codebook.mark_uninitialised()
        elif state is None:
            self.codebook.mark_uninitialised()
            if settings.latent_init_std > 0:
                self._scale_encoder_output(settings.latent_init_std)
        else:
            self._load_state(state)
            if phase_switch:
                self._freeze_codes()

    # --- construction helpers --------------------------------------------------------------

    def _build_model_and_optimisers(self) -> None:
        config, settings = self.config, self.settings
        self.model = WavTokenizer(config).unfold_weight_norm_()
        self.last_reseeded = 0
        self.codebook = EmaCodebook(self.model.quantizer, settings.codebook_decay, settings.dead_code_fraction)
        self.semantic: SemanticStore | None = None
        self.semantic_head: nn.Conv1d | None = None
        groups = _param_groups(self.model, settings.weight_decay)
        if settings.semantic_weight > 0:
            if not settings.semantic_dir:
                raise LLMVoXError("--semantic_weight needs --semantic_dir (build it with `llmvox codec semantic`)")
            self.semantic = SemanticStore(settings.semantic_dir)
            # Throw-away probe: predicts the Whisper features from the codes; never exported.
            self.semantic_head = nn.Conv1d(config.encoder_dimension, self.semantic.dim, 1)
            groups.append({"params": list(self.semantic_head.parameters()), "weight_decay": 0.0, "name": "semantic"})
        self.optimizer = torch.optim.AdamW(groups, lr=settings.learning_rate, betas=settings.betas)
        self.disc: nn.Module | None = None
        self.disc_optimizer: torch.optim.Optimizer | None = None
        if settings.adversarial:
            self._build_discriminators()

    def _build_discriminators(self) -> None:
        from llmvox.train.discriminators import CodecDiscriminators

        self.disc = CodecDiscriminators()
        self.disc_optimizer = torch.optim.AdamW(self.disc.parameters(), lr=self.settings.disc_learning_rate,
                                                betas=(0.8, 0.99))

    def _build_losses(self) -> None:
        config, settings = self.config, self.settings
        self.mel_loss = MultiResolutionMelLoss(config.sample_rate, floor=settings.log_floor)
        self.stft_loss = MultiResolutionSTFTLoss(floor=settings.log_floor)
        self.phase_loss = PhaseDerivativeLoss(config.n_fft, config.hop_length)
        self.mel_distance = MelDistance(config.sample_rate)
        self.mel_distance_audible = MelDistance(config.sample_rate, floor=TRAIN_LOG_FLOOR)
        self.cond = torch.tensor([0])

    def _build_data(self, all_clips: list[Clip], state: dict[str, Any] | None) -> None:
        """Training crops and the held-out eval clips (fixed by the first run: a resume keeps them)."""
        config, settings = self.config, self.settings
        train, heldout = split_heldout(all_clips, settings.eval_clips, state["eval_ids"] if state else None)
        if not train:
            raise LLMVoXError("codec training: every clip is held out for evaluation; add data")
        self.eval_clips = heldout
        # Whole code frames only: a partial last frame would be decoded from reflection padding.
        hop = config.hop_length
        segment = max(int(round(settings.segment_seconds * config.sample_rate / hop)), 1) * hop
        self.data = CropDataset(train, config.sample_rate, segment, settings.seed)
        if self.semantic is not None:
            missing = [c.id for c in train if c.id not in self.semantic]
            if missing:
                raise LLMVoXError(f"{settings.semantic_dir} lacks Whisper features for {len(missing)} training clips "
                                  f"(e.g. {missing[:3]}); run `llmvox codec semantic` on this dataset")

    def _load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        if (self.semantic_head is not None) != (state.get("semantic_head") is not None):
            raise LLMVoXError("semantic distillation can only be switched on or off at the start of a run: "
                              "start a new --out_dir with --init_weights from a milestone")
        if self.semantic_head is not None:
            self.semantic_head.load_state_dict(state["semantic_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # settings may have changed on resume
            group["betas"] = self.settings.betas
        if self.disc is not None and state.get("disc") is not None:
            self.disc.load_state_dict(state["disc"])
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        self.step = int(state["step"])
        self.best_mel = float(state.get("best_audible_mel", math.inf))
        self.last_milestone_mel = float(state.get("last_milestone_audible_mel", math.inf))
        torch.set_rng_state(state["torch_rng"])
        self.codebook.center = state.get("codebook_center")
        self.codebook.anchor = state.get("codebook_anchor")

    def _freeze_codes(self) -> None:
        """Start of phase B: export the encoder + codebook that tokenise the corpus from now on.

        Code assignment is fragile: rounding the encoder to float16 changes ~15% of the codes of
        this codec (measured), so milestones keep the encoder and codebook in float32 (see
        `export_milestone`) and the checkpoint written at the end of phase A, the `phaseA_final`
        export and every phase-B export all produce the same codes.
        """
        metrics = {"step": self.step}
        for name in ("phaseA_final", "latest_phaseA"):
            path = self.export_milestone(name, metrics, phase="A")
        log.info("phase B: encoder and codebook frozen; tokenise with %s (codes fingerprint %s)",
                 path.with_name("phaseA_final"), self.codes_fingerprint())

    # --- one step ----------------------------------------------------------------------------

    def forward(self, audio: Tensor, *, update_codebook: bool) -> StepOutput:
        s = self.settings
        frozen = s.freeze_encoder
        quantise = frozen or self.step >= s.vq_warmup_steps
        if quantise and not self.codebook.initialised:
            self._kmeans_init()  # before the encoder runs: it may rescale the encoder (see _match_latent_scale)
        # A frozen encoder runs in float32, exactly as tokenisation will run it, so the backbone
        # learns to decode the very codes the exported codec produces.
        with _autocast(s.bf16 and s.encoder_bf16 and not frozen), \
                (torch.no_grad() if frozen else contextlib.nullcontext()):
            latents = self.model.encoder(audio[:, None]).float()
        if self.step < s.vq_warmup_steps and not frozen:
            features, codes, commit = latents, None, latents.new_zeros(())
        else:
            if update_codebook and not frozen and s.track_latent_mean:
                self.codebook.recenter(latents.detach().mean(dim=(0, 2)))
            features, codes, commit = quantize_for_training(self.model, latents)
            if s.track_latent_mean:
                commit = commit + self.codebook.anchor_loss(latents)
            if update_codebook and not frozen:
                flat = latents.detach().transpose(1, 2).reshape(-1, latents.shape[1])
                self.last_reseeded = self.codebook.update(flat, codes.reshape(-1))
        with _autocast(s.bf16):
            hidden = self.model.backbone(features, self.cond)
        audio_hat = self.model.head(hidden.float())[:, : audio.shape[1]]
        return StepOutput(audio_hat, latents, features, codes, commit)

    @torch.no_grad()
    def _scale_encoder_output(self, target: float) -> None:
        """A fresh encoder's latents are too flat for a codebook: see `scale_encoder_output`."""
        audio = self.data.batch(0, self.settings.batch_size, stream=2)
        scaled = scale_encoder_output(self.model, audio, target)
        if scaled is not None:
            log.info("encoder output scaled by %.1f (latent spread %.2e -> %.2f)", *scaled, target)

    @torch.no_grad()
    def _match_latent_scale(self, target: float) -> None:
        """VQ warm-up latents are too wide for a codebook: see `match_latent_scale`."""
        audio = self.data.batch(self.step, self.settings.batch_size, stream=3)
        rescaled = match_latent_scale(self.model, audio, target, self.optimizer, self.semantic_head)
        if rescaled is not None:
            log.info("latents rescaled by 1/%.1f before quantisation (spread %.3g -> %.3g)", *rescaled, target)

    @torch.no_grad()
    def _kmeans_init(self) -> None:
        """k-means over the encoder outputs of a few training batches (deterministic in the step)."""
        s = self.settings
        if s.latent_init_std > 0:
            self._match_latent_scale(s.latent_init_std)
        pool = []
        for i in range(s.kmeans_init_batches):
            audio = self.data.batch(self.step * 1000 + i, s.batch_size, stream=1)
            with _autocast(s.bf16 and s.encoder_bf16):
                latents = self.model.encoder(audio[:, None]).float()
            pool.append(latents.transpose(1, 2).reshape(-1, latents.shape[1]))
        vectors = torch.cat(pool)
        frames = vectors.shape[0] // max(s.kmeans_init_batches, 1)
        gen = torch.Generator().manual_seed(s.seed * 1000003 + self.step)
        self.codebook.kmeans_init(vectors, s.kmeans_iters, frames, generator=gen)
        log.info("codebook initialised by k-means on %d vectors (%d codes)", vectors.shape[0], self.codebook.size)

    def train_step(self) -> dict[str, float]:
        """One optimiser step (and one discriminator step when adversarial); returns scalar logs."""
        s = self.settings
        self.model.train()
        self.last_reseeded = 0
        lr = s.learning_rate * lr_factor(self.step, s)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * (s.encoder_lr_scale if group["name"].startswith("enc") else 1.0)
        audio, crops = self.data.batch_with_crops(self.step, s.batch_size)
        out = self.forward(audio, update_codebook=True)
        logs: dict[str, float] = {}

        if self.disc is not None:
            disc_lr = s.disc_learning_rate * lr_factor(self.step, s)
            for group in self.disc_optimizer.param_groups:
                group["lr"] = disc_lr
            real_scores, _ = self.disc(audio)  # float32: faster than bf16 for these narrow convs
            fake_scores, _ = self.disc(out.audio_hat.detach())
            d_loss = discriminator_hinge_loss(real_scores, fake_scores)
            self.disc_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(self.disc.parameters(), s.grad_clip)
            self.disc_optimizer.step()
            logs["disc"] = float(d_loss.detach())

        mel = self.mel_loss(out.audio_hat, audio)
        stft = self.stft_loss(out.audio_hat, audio)
        loss = s.mel_weight * mel + s.stft_weight * stft
        if s.phase_weight > 0:
            phase = self.phase_loss(out.audio_hat, audio)
            loss = loss + s.phase_weight * phase
            logs["phase"] = float(phase.detach())
        if not s.freeze_encoder:
            loss = loss + s.commit_weight * out.commit
            if self.semantic_head is not None:
                semantic = self.semantic_loss(out.features, crops)
                loss = loss + s.semantic_weight * semantic
                logs["semantic"] = float(semantic.detach())
        if self.disc is not None:
            with torch.no_grad():
                _, real_maps = self.disc(audio)
            fake_scores, fake_maps = self.disc(out.audio_hat)
            gen = generator_hinge_loss(fake_scores)
            fm = feature_matching_loss(real_maps, fake_maps)
            loss = loss + s.adv_weight * gen + s.fm_weight * fm
            logs.update(gen=float(gen.detach()), fm=float(fm.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
        self.optimizer.step()
        self.step += 1
        logs.update(loss=float(loss.detach()), mel=float(mel.detach()), stft=float(stft.detach()),
                    commit=float(out.commit.detach()),
                    grad_norm=float(grad_norm), lr=lr, reseeded=float(self.last_reseeded))
        if out.codes is not None:
            logs["batch_perplexity"] = codebook_perplexity(torch.bincount(out.codes.reshape(-1),
                                                                          minlength=self.codebook.size))
        return logs

    def semantic_loss(self, features: Tensor, crops: list[tuple[str, float]]) -> Tensor:
        """The semantic distillation loss of `features` (B, D, T) taken from `crops` (see `probe_distance`)."""
        rate = self.config.sample_rate / self.config.hop_length
        return probe_distance(self.semantic_head, self.semantic, features, crops, rate)

    # --- evaluation ----------------------------------------------------------------------------

    @torch.no_grad()
    def reconstruction_loss(self, audio: Tensor) -> float:
        """Weighted mel + STFT loss of (B, N) audio in training precision, without touching any state."""
        was_training = self.model.training
        self.model.eval()
        s = self.settings
        with _autocast(s.bf16 and s.encoder_bf16):
            latents = self.model.encoder(audio[:, None]).float()
        features = self.model.quantizer.lookup(self.model.quantizer.nearest(latents)) \
            if self.codebook.initialised else latents
        with _autocast(s.bf16):
            hidden = self.model.backbone(features, self.cond)
        audio_hat = self.model.head(hidden.float())[:, : audio.shape[1]]
        self.model.train(was_training)
        return float(s.mel_weight * self.mel_loss(audio_hat, audio) + s.stft_weight * self.stft_loss(audio_hat, audio))

    def evaluate(self) -> EvalResult:
        """Copy-synthesis of the held-out clips in inference mode (float32, like tokenisation)."""
        return evaluate_heldout(self.model, self.codebook, self.eval_clips, sample_rate=self.config.sample_rate,
                                max_seconds=self.settings.eval_max_seconds, mel_distance=self.mel_distance,
                                mel_distance_audible=self.mel_distance_audible, step=self.step,
                                semantic_loss=self.semantic_loss if self.semantic_head is not None else None)

    # --- saving ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "disc": self.disc.state_dict() if self.disc is not None else None,
            "disc_optimizer": self.disc_optimizer.state_dict() if self.disc_optimizer is not None else None,
            "codec_config": self.config.to_dict(),
            "settings": self.settings.to_dict(),
            "eval_ids": [c.id for c in self.eval_clips],
            "best_audible_mel": self.best_mel,
            "last_milestone_audible_mel": self.last_milestone_mel,
            "torch_rng": torch.get_rng_state(),
            "codebook_center": self.codebook.center,
            "codebook_anchor": self.codebook.anchor,
            "semantic_head": self.semantic_head.state_dict() if self.semantic_head is not None else None,
        }

    def save(self) -> None:
        """Full state (atomic) + the original-layout checkpoint and YAML for loading."""
        write_checkpoints(self.out_dir, self.state_dict(), self.model, self.config, self.settings, self.data_path)

    def export_milestone(self, name: str, metrics: dict[str, Any], phase: str | None = None) -> Path:
        """Inference-only copy + config.json, loadable as a codec bundle (see `codec_checkpoints`)."""
        return export_milestone(self.out_dir, name, self.model, self.config, self.settings, self.data_path,
                                step=self.step, phase=phase or ("B" if self.settings.freeze_encoder else "A"),
                                metrics=metrics)

    def codes_fingerprint(self) -> str:
        """A short hash of the encoder + codebook: equal fingerprints mean equal codes."""
        return codes_fingerprint(self.model)

    # --- the loop ------------------------------------------------------------------------------

    def _after_eval(self, result: EvalResult) -> None:
        record = asdict(result)
        record["phase"] = "B" if self.settings.freeze_encoder else "A"
        append_jsonl(self.out_dir / EVAL_LOG, record)
        # Milestones follow the audible mel distance: the 1e-7-floor one is dominated by digital silence.
        score = result.extra["mel_distance_audible"]
        self.best_mel = min(self.best_mel, score)
        improved = score <= self.last_milestone_mel * (1 - self.settings.milestone_improvement)
        if improved and self.codebook.initialised:
            self.last_milestone_mel = score
            metrics = {k: v for k, v in record.items() if isinstance(v, (int, float))}
            path = self.export_milestone(f"step_{self.step:07d}", metrics)
            latest = "latest_phaseB" if self.settings.freeze_encoder else "latest_phaseA"
            self.export_milestone(latest, metrics)
            log.info("milestone exported: %s (audible mel %.4f)", path, score)

    def fit(self, stop_at: int | None = None, on_log: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Train until `max_steps` (or `stop_at`), saving every `save_every` steps and at the end."""
        from tqdm import tqdm

        s = self.settings
        self.out_dir.mkdir(parents=True, exist_ok=True)
        end = s.max_steps if stop_at is None else min(stop_at, s.max_steps)
        bar = tqdm(total=end, initial=self.step, disable=not self.progress, dynamic_ncols=True,
                   mininterval=1.0 if sys.stderr.isatty() else 60.0, desc="codec")
        tic, tic_step = time.time(), self.step
        try:
            while self.step < end:
                logs = self.train_step()
                bar.update(1)
                if self.step % s.log_every == 0 or self.step == end:
                    rate = (self.step - tic_step) / max(time.time() - tic, 1e-9)
                    record = {"step": self.step, **{k: round(v, 6) for k, v in logs.items()},
                              "steps_per_s": round(rate, 4), "time": round(time.time(), 1)}
                    append_jsonl(self.out_dir / TRAIN_LOG, record)
                    bar.set_postfix(loss=f"{logs['loss']:.3f}", mel=f"{logs['mel']:.3f}",
                                    ppl=f"{logs.get('batch_perplexity', 0):.0f}")
                    if on_log:
                        on_log(record)
                    tic, tic_step = time.time(), self.step
                if self.step % s.eval_every == 0 and self.eval_clips:
                    result = self.evaluate()
                    self._after_eval(result)
                    bar.write(f"eval step {result.step}: mel {result.mel_distance:.4f} (audible "
                              f"{result.extra['mel_distance_audible']:.4f})  perplexity "
                              f"{result.perplexity:.0f} ({result.codes_used} codes used)  train usage "
                              f"perplexity {result.train_usage_perplexity:.0f}")
                if s.export_every and self.step % s.export_every == 0:
                    # unconditional exports: intelligibility (WER by step) is measured on these
                    self.export_milestone(f"step_{self.step:07d}", {"step": self.step})
                if self.step % s.save_every == 0:
                    self.save()
        finally:
            bar.close()
        self.save()

