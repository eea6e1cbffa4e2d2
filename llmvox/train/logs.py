"""Where a run reports: the JSONL log (always), TensorBoard, W&B, a progress bar, and Ctrl-C.

A resumed run rewrites its JSONL log to the checkpoint's step, so the log of an interrupted and
resumed run is the log of the uninterrupted one. SIGINT/SIGTERM only ask the loop to stop, so the
stop lands between steps, with a checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmvox.errors import LLMVoXError
from llmvox.train.config import TrainConfig

log = logging.getLogger("llmvox.train")


class RunLog:
    """The loop's reports: losses kept on every process; sinks, progress bar and messages on rank 0 only."""

    def __init__(self, cfg: TrainConfig, out_dir: Path, start_iter: int, resumed: bool, wandb_id: str | None,
                 master: bool, info: Callable[[str], None]) -> None:
        self.info = info
        self._wandb_id = wandb_id
        self.losses: list[tuple[int, float]] = []  # (iteration, train loss) at log steps
        self.val_loss: float | None = None  # the latest held-out loss
        self.sinks = LogSinks(cfg, out_dir, start_iter, resumed, wandb_id) if master else None
        self.bar = None
        if master and cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.max_iters, initial=start_iter, desc="train", unit="it", dynamic_ncols=True)
        self.window_tokens, self.window_start = 0, time.perf_counter()

    @property
    def wandb_id(self) -> str | None:
        """The W&B run id to save (a new run's, once W&B started one)."""
        return self.sinks.wandb_id if self.sinks else self._wandb_id

    def held_out(self, step: int, val: float, val_ctc: float | None) -> None:
        self.val_loss = val
        row = {"val/loss": val} | ({"val/phoneme_ctc": val_ctc} if val_ctc is not None else {})
        if self.sinks:
            self.sinks.log(step, row)
        ctc_note = f", phoneme CTC {val_ctc:.4f}" if val_ctc is not None else ""
        self.info(f"iter {step}: held-out loss {val:.4f}{ctc_note}")

    def count_tokens(self, n: int) -> None:
        self.window_tokens += n

    def train_step(self, step: int, loss: float, lr: float, aux: dict[str, float], tokens_seen: int) -> None:
        """A log step: `loss` and the `aux` losses are means over every process."""
        now = time.perf_counter()
        tps = self.window_tokens / max(now - self.window_start, 1e-9)
        self.window_tokens, self.window_start = 0, now
        self.losses.append((step, loss))
        if self.sinks:
            self.sinks.log(step, {"loss": loss, "lr": lr, "tokens_per_s": tps, "tokens_seen": tokens_seen} | aux)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:.0f}")

    def step_done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.sinks:
            self.sinks.close()


class LogSinks:
    """JSONL log (always), TensorBoard and W&B (when asked; imported only then)."""

    def __init__(self, cfg: TrainConfig, out_dir: Path, start_iter: int, resumed: bool, wandb_id: str | None):
        self.path = out_dir / "train_log.jsonl"
        if resumed and self.path.exists():
            _truncate_log(self.path, start_iter)
        elif not resumed and self.path.exists():
            self.path.unlink()
        self.tb = None
        self.wandb = None
        self.wandb_id = wandb_id
        if cfg.tensorboard_log:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise LLMVoXError("--tensorboard_log needs the tensorboard package: pip install tensorboard") from None
            self.tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=start_iter if resumed else None)
        if cfg.wandb_log:
            try:
                import wandb
            except ImportError:
                raise LLMVoXError("--wandb_log needs the wandb package: pip install wandb") from None
            if cfg.wandb_mode not in ("offline", "online", "disabled"):
                raise LLMVoXError("--wandb_mode must be offline, online or disabled")
            self.wandb_id = wandb_id or uuid.uuid4().hex[:12]
            self.wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=cfg.to_dict(),
                                    dir=str(out_dir), mode=cfg.wandb_mode, id=self.wandb_id, resume="allow")

    def log(self, step: int, values: dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"iter": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _truncate_log(path: Path, start_iter: int) -> None:
    """Drop rows from steps after the checkpoint (a crash after the last save would repeat them)."""
    kept = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            row = json.loads(line)
            if ("loss" in row and row["iter"] < start_iter) or ("loss" not in row and row["iter"] <= start_iter):
                kept.append(line)
    path.write_text("".join(k + "\n" for k in kept))


class StopOnSignal:
    """SIGINT/SIGTERM ask the loop to save and stop after the current step; a second one stops now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stop requested: finishing this step, saving a checkpoint (again to abort now)")

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
