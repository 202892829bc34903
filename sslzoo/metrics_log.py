"""What a run writes as it trains, besides checkpoints: its ``config.yaml``, the ``metrics.jsonl``
records (and wandb, if asked for), and the bookkeeping of non-finite losses (``trainer.on_nonfinite``).
The file names are ``sslzoo/rundir.py``'s."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm

from sslzoo.callbacks import Callback
from sslzoo.config import RunConfig, to_yaml
from sslzoo.errors import UserError
from sslzoo.rundir import RunDir


def write_text(path: Path, text: str, mode: str = "w") -> None:
    """Write (or append) ``text``; a full or read-only disk is a one-line UserError."""
    try:
        with path.open(mode) as handle:
            handle.write(text)
    except OSError as err:
        raise UserError(f"could not write {path} ({err.strerror}); free some disk space, then resume") from None


def saved_config(cfg: RunConfig, callbacks: Sequence[Callback]) -> str:
    """The text of a run's ``config.yaml``: the resolved config, and under ``callbacks`` the settings of
    what the entry point attached to the loop (the online probe's), where anything was."""
    settings = {callback.name: callback.settings for callback in callbacks}
    return to_yaml(cfg) + (yaml.safe_dump({"callbacks": settings}, sort_keys=False) if settings else "")


def record_step(line: str) -> float:
    """The step of a ``metrics.jsonl`` line; infinite for a line torn by a killed run (so it is dropped)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class MetricsLog:
    """``metrics.jsonl`` plus, when asked for, wandb (never fatal if the network is down)."""

    def __init__(self, cfg: RunConfig, run: RunDir, resumed_step: int) -> None:
        self.path = run.metrics
        self.truncate_after(resumed_step)
        self.wandb = None
        if cfg.logger.wandb != "off":
            try:
                import wandb

                self.wandb = wandb.init(
                    project=cfg.logger.project,
                    dir=str(run.path),
                    mode=cfg.logger.wandb,
                    config=cfg.raw,
                    settings=wandb.Settings(init_timeout=30),
                )
            except Exception as err:  # noqa: BLE001 - logging must never stop training
                tqdm.write(f"warning: wandb disabled ({err})")

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step``: they belong to steps a resumed run will redo. Rewritten
        through a temporary file, so a kill during the rewrite loses nothing."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if record_step(line) <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        write_text(tmp, "".join(f"{line}\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        write_text(self.path, json.dumps(record) + "\n", mode="a")
        if self.wandb is not None:
            self.wandb.log(record, step=record["step"])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


# --------------------------------------------------------------------------- non-finite losses


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite."""


class NonFiniteSteps:
    """``trainer.on_nonfinite``: a NaN/inf loss on any rank skips the step everywhere (undoing what its
    forward did to the buffers) and is counted, or stops the run naming the last good checkpoint."""

    def __init__(self, policy: str, module: torch.nn.Module, run: RunDir, world_size: int) -> None:
        self.policy = policy
        self.module = module
        self.run = run
        self.world_size = world_size
        self.skipped = 0

    def snapshot_buffers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(buffer, copy) pairs when a non-finite step may be skipped: the forward that yields the bad loss
        has already moved the buffers (BatchNorm running statistics), which the skip must undo."""
        if self.policy != "skip":
            return []
        return [(buffer, buffer.detach().clone()) for buffer in self.module.buffers()]

    def all_finite(self, loss: torch.Tensor) -> bool:
        finite = torch.isfinite(loss.detach()).float()
        if self.world_size > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    def handle(self, loss: torch.Tensor, step: int, buffers: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
        """Skip optimizer step ``step`` (the record to log), or raise :class:`NonFiniteLoss`."""
        if self.policy == "skip":
            self.skipped += 1
            with torch.no_grad():
                for buffer, before in buffers:
                    buffer.copy_(before)
            tqdm.write(f"warning: loss is {loss.item()} at step {step}; step skipped ({self.skipped} so far)")
            return {"loss": loss.item(), "skipped": True}
        checkpoint = self.run.checkpoint
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint.exists() else "no checkpoint was saved yet"
        raise NonFiniteLoss(
            f"loss is {loss.item()} at step {step}; {kept}. Lower optim.lr, use trainer.precision=fp32, "
            "or set trainer.on_nonfinite=skip"
        )
