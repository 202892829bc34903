"""The one training loop. It knows no method by name: a method is looked up in
the registry and drives everything method-specific through the Method hooks."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from sslzoo.augment import CroppedViews, CropsAndParams, DeviceViews, MultiCrop
from sslzoo.backbones import Backbone
from sslzoo.checkpoint import FORMAT, atomic_save, load_checkpoint
from sslzoo.config import Config, to_yaml
from sslzoo.data import ResumableSampler, SeededViews, data_info, load_dataset
from sslzoo.diagnostics import collapse_metrics
from sslzoo.distributed import sync_batchnorm
from sslzoo.errors import UserError
from sslzoo.eval.online_probe import build_online_probe
from sslzoo.methods import Method, method_class
from sslzoo.optim import apply_schedules, build_optimizer, clip_gradients, parameter_groups, scaled_lr
from sslzoo.rundir import RunDir
from sslzoo.schedules import Clock

PRECISION = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite."""


class Stopped(Exception):
    """SIGTERM / SIGINT arrived; a checkpoint was saved."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# --------------------------------------------------------------------------- set-up


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Distributed:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    if not dist.is_initialized():
        if device_kind == "cuda":  # bind this process to its GPU before NCCL starts
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(choice: str, ddp: Distributed) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but no CUDA GPU is visible; use trainer.device=cpu or auto")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    torch.cuda.set_device(ddp.local_rank)
    return torch.device("cuda", ddp.local_rank)


def prepare_out_dir(run: RunDir) -> None:
    path = run.path
    try:
        run.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to trainer.out_dir={path} ({err.strerror}); choose a writable folder") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def ignore_stop_signals(trainer: int, worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C and SIGTERM to the trainer, which saves a checkpoint and then
    shuts them down. Ctrl-C and job schedulers signal the whole process group, and a worker dying
    of it would crash the trainer before it saves. As in torch's own worker handler, a SIGTERM
    sent by the trainer itself (process id ``trainer``; its clean-up at exit) still ends the worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # macOS: keep torch's handler
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def exit_when_the_trainer_asks() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != trainer:
            pass
        os._exit(0)

    threading.Thread(target=exit_when_the_trainer_asks, daemon=True).start()


def channels_last_resnets(method: nn.Module) -> bool:
    """Store the ResNets' weights as NHWC (channels_last), the layout GPU convolutions run fastest in
    under autocast; returns whether there was a ResNet, whose inputs then go NHWC too."""
    resnets = [m.model for m in method.modules() if isinstance(m, Backbone) and not m.is_vit]
    for model in resnets:
        model.to(memory_format=torch.channels_last)
    return bool(resnets)


def check_compile_support(device: torch.device) -> None:
    """torch.compile's default backend (inductor) writes C++ kernels on CPUs and Triton kernels on GPUs:
    say what is missing before the run, not as an inductor traceback at the first step."""
    fix = "or set trainer.compile=false"
    if not torch._dynamo.is_dynamo_supported():
        raise UserError(f"trainer.compile=true: torch.compile does not support Python {sys.version.split()[0]}; {fix}")
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise UserError(f"trainer.compile=true on a GPU needs Triton: pip install triton, {fix}")
    compiler = os.environ.get("CXX", "g++")
    if device.type == "cpu" and shutil.which(compiler) is None:
        raise UserError(
            f"trainer.compile=true on a CPU needs a C++ compiler ({compiler} not found): "
            f"apt-get install g++ or set CXX, {fix}"
        )


def compile_backbones(method: nn.Module, device: torch.device) -> None:
    """``trainer.compile``: compile each backbone in place (state_dict keys unchanged)."""
    check_compile_support(device)
    for module in method.modules():
        if isinstance(module, Backbone):
            module.model.compile()


# --------------------------------------------------------------------------- logging


def write_text(path: Path, text: str, mode: str = "w") -> None:
    """Write (or append) ``text``; a full or read-only disk is a one-line UserError."""
    try:
        with path.open(mode) as handle:
            handle.write(text)
    except OSError as err:
        raise UserError(f"could not write {path} ({err.strerror}); free some disk space, then resume") from None


def record_step(line: str) -> float:
    """The step of a ``metrics.jsonl`` line; infinite for a line torn by a killed run (so it is dropped)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class MetricsLog:
    """``metrics.jsonl`` plus, when asked for, wandb (never fatal if the network is down)."""

    def __init__(self, cfg: Config, run: RunDir, resumed_step: int) -> None:
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


# --------------------------------------------------------------------------- the loop


class Trainer:
    """Builds data, method and optimizer from a config and runs the optimizer steps."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.ddp = init_distributed(
            cfg.trainer.device if cfg.trainer.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.device = resolve_device(cfg.trainer.device, self.ddp)
        self.run = RunDir(cfg.trainer.out_dir)
        if self.ddp.is_main:
            prepare_out_dir(self.run)
        seed_everything(cfg.seed + self.ddp.rank)

        info = data_info(cfg.data)
        base = load_dataset(cfg.data, "pretrain")
        method_cls = method_class(cfg.method.name)
        method_cls.check_config(cfg)
        self.sampler = ResumableSampler(len(base), cfg.data.batch_size, cfg.seed, self.ddp.rank, self.ddp.world_size)
        if self.sampler.batches_per_epoch == 0:
            raise UserError(f"the dataset has {len(base)} images, fewer than one batch: lower data.batch_size")
        if cfg.augment.photometric == "batched":
            views = CropsAndParams(cfg.augment, info.channels)
        else:
            views = MultiCrop(cfg.augment, info.channels, list(info.mean), list(info.std))
        self.device_views = DeviceViews(cfg.augment, list(info.mean), list(info.std))
        self.loader = DataLoader(
            SeededViews(base, views),
            batch_size=cfg.data.batch_size,
            sampler=self.sampler,
            num_workers=cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=cfg.data.num_workers > 0,
            prefetch_factor=4 if cfg.data.num_workers > 0 else None,
            drop_last=True,
            # Its own generator: DataLoader draws the workers' base seed at each iter(); from the
            # global RNG that draw would shift the model's random stream (drop path) on resume.
            generator=torch.Generator().manual_seed(cfg.seed),
            worker_init_fn=functools.partial(ignore_stop_signals, os.getpid()),
        )
        steps_per_epoch = self.sampler.batches_per_epoch
        total = cfg.trainer.max_steps or cfg.trainer.epochs * steps_per_epoch
        self.clock = Clock(0, total, steps_per_epoch, cfg.trainer.epochs)

        self.method: Method = method_cls(cfg).to(self.device)
        if self.ddp.world_size > 1:
            self.method = sync_batchnorm(self.method, self.device)
        self.memory_format = torch.preserve_format  # NHWC gains nothing measurable on CPUs
        if self.device.type == "cuda" and channels_last_resnets(self.method):
            self.memory_format = torch.channels_last
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop sizes: pick the fastest kernels once (main_dino.py)
        if cfg.trainer.compile:
            compile_backbones(self.method, self.device)
        self.model: nn.Module = self.method
        if self.ddp.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.method, device_ids=device_ids)
        self.global_batch = cfg.data.batch_size * self.ddp.world_size
        self.peak_lr = scaled_lr(cfg.optim, self.global_batch)
        self.optimizer = build_optimizer(
            parameter_groups(self.method, cfg.optim.exclude_bias_norm, self.method.lr_scales()), cfg.optim, self.device
        )
        self.dtype = PRECISION[cfg.trainer.precision]
        if self.dtype == torch.bfloat16 and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError("trainer.precision=bf16 needs an Ampere or newer GPU; use trainer.precision=fp16 here")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.trainer.precision == "fp16")
        self.skipped_steps = 0
        self.train_s = 0.0  # training seconds so far (data and steps; not start-up or saving), continued on resume
        self.stop_signal: int | None = None
        self.probe = build_online_probe(cfg, self.method, self.device) if cfg.trainer.online_probe else None

    # -- checkpoints ---------------------------------------------------------

    def checkpoint_state(self) -> dict:
        return {
            "format": FORMAT,
            "method": self.cfg.method.name,
            "backbone": self.cfg.model.backbone,
            "step": self.clock.step,
            "epoch": self.clock.epoch,
            "skipped_steps": self.skipped_steps,
            "train_s": self.train_s,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "online_probe": self.probe.checkpoint() if self.probe is not None else None,
            "config": self.cfg.raw,
        }

    def save_checkpoint(self) -> None:
        if self.ddp.is_main:
            atomic_save(self.checkpoint_state(), self.run.checkpoint)

    def eval_backbone_state(self) -> dict:
        """The plain ``state_dict`` of the backbone to evaluate (``backbone.pt``, the snapshots)."""
        return self.method.eval_backbone().model.state_dict()

    def maybe_resume(self) -> None:
        resume = self.cfg.resume
        path = self.run.checkpoint if resume == "auto" else Path(resume)
        if resume == "none" or (resume == "auto" and not path.exists()):
            return
        state = load_checkpoint(path, self.cfg.method.name, self.cfg.model.backbone)
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.skipped_steps = state["skipped_steps"]
        self.train_s = state.get("train_s", 0.0)  # absent from checkpoints written before it was recorded
        if self.probe is not None and state.get("online_probe") is not None:  # else the probe starts afresh
            self.probe.restore(state["online_probe"])
        self.clock = self.clock.at(state["step"])
        if self.ddp.is_main:
            tqdm.write(f"resumed from {path} at step {self.clock.step}")

    # -- one step ------------------------------------------------------------

    def autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def step(self, views: list[torch.Tensor] | CroppedViews, labels: torch.Tensor | None = None) -> dict:
        """One optimizer step on a loader batch of views; returns what gets logged."""
        clock = self.clock
        lr, wd = apply_schedules(self.optimizer, self.cfg.optim, clock, self.peak_lr)
        views = self.device_views(views, self.device, memory_format=self.memory_format)
        buffers = self.snapshot_buffers()
        with self.autocast():
            out = self.model(views, clock)
        loss = out.loss.float()
        if not self.all_finite(loss):
            return self.non_finite(loss, buffers)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        self.method.before_optimizer_step(clock)
        clip_gradients(self.method, self.cfg.optim)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_optimizer_step(clock)
        if self.probe is not None:  # its own optimizer, on detached features
            self.probe.update(out.features, labels)
        record = {"loss": loss.item(), "lr": lr, "wd": wd, **out.logs}
        logged = (clock.step + 1) % self.cfg.trainer.log_every == 0 or clock.step + 1 == clock.total_steps
        if out.embeddings is not None and logged:
            record.update(collapse_metrics(out.embeddings))
        return record

    def all_finite(self, loss: torch.Tensor) -> bool:
        finite = torch.isfinite(loss.detach()).float()
        if self.ddp.world_size > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    def snapshot_buffers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(buffer, copy) pairs when a non-finite step may be skipped: the forward that yields the bad loss
        has already moved the buffers (BatchNorm running statistics), which the skip must undo."""
        if self.cfg.trainer.on_nonfinite != "skip":
            return []
        return [(buffer, buffer.detach().clone()) for buffer in self.method.buffers()]

    def non_finite(self, loss: torch.Tensor, buffers: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
        step = self.clock.step + 1
        if self.cfg.trainer.on_nonfinite == "skip":
            self.skipped_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for buffer, before in buffers:
                    buffer.copy_(before)
            tqdm.write(f"warning: loss is {loss.item()} at step {step}; step skipped ({self.skipped_steps} so far)")
            return {"loss": loss.item(), "skipped": True}
        kept = (
            f"the last good checkpoint is {self.run.checkpoint}"
            if self.run.checkpoint.exists()
            else "no checkpoint was saved yet"
        )
        raise NonFiniteLoss(
            f"loss is {loss.item()} at step {step}; {kept}. Lower optim.lr, use trainer.precision=fp32, "
            "or set trainer.on_nonfinite=skip"
        )

    # -- the run -------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def request_stop(signum: int, frame: object) -> None:
            self.stop_signal = signum

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    def agreed_stop(self) -> int | None:
        """The stop signal as every rank sees it, so that all ranks stop after the same step."""
        if self.ddp.world_size == 1:
            return self.stop_signal
        flag = torch.tensor(float(self.stop_signal or 0), device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def fit(self) -> Path:
        self.maybe_resume()
        cfg = self.cfg
        if self.ddp.is_main:
            write_text(self.run.config, to_yaml(cfg))
        log = MetricsLog(cfg, self.run, self.clock.step) if self.ddp.is_main else None
        snapshots = self.run.snapshots if self.ddp.is_main else None
        if snapshots is not None:
            snapshots.truncate_after(self.clock.step)
        self.install_signal_handlers()
        self.method.train()
        bar = tqdm(
            total=self.clock.total_steps, initial=self.clock.step, disable=not self.ddp.is_main, dynamic_ncols=True
        )
        images, tick = 0, time.perf_counter()
        mark = tick  # train_s counts from here, up to each step's end; the bookkeeping after a step is left out
        try:
            while self.clock.step < self.clock.total_steps:
                self.sampler.set_position(self.clock.epoch, self.clock.step % self.clock.steps_per_epoch)
                for views, labels in self.loader:
                    record = self.step(views, labels)
                    self.clock = self.clock.at(self.clock.step + 1)
                    self.train_s += time.perf_counter() - mark
                    images += len(labels) * self.ddp.world_size
                    bar.update(1)
                    if self.clock.step % cfg.trainer.log_every == 0 or self.clock.step == self.clock.total_steps:
                        now = time.perf_counter()
                        epoch = (self.clock.step - 1) // self.clock.steps_per_epoch  # the epoch this step belonged to
                        record.update(step=self.clock.step, epoch=epoch, images_per_s=images / (now - tick))
                        if self.probe is not None:
                            record.update(self.probe.read())
                        if self.device.type == "cuda":
                            record["cuda_max_memory_allocated"] = torch.cuda.max_memory_allocated(self.device)
                        images, tick = 0, now
                        bar.set_postfix(
                            {k: f"{record[k]:.4g}" for k in ("loss", "lr", "momentum", "images_per_s") if k in record}
                        )
                        if log is not None:
                            log.write(record)
                    every = cfg.trainer.snapshot_every
                    if snapshots is not None and every and self.clock.step % every == 0:
                        snapshots.save(self.eval_backbone_state(), self.clock.step, self.train_s)
                    saved = self.clock.step % cfg.trainer.checkpoint_every == 0
                    if saved:
                        self.save_checkpoint()
                    stop = self.agreed_stop()
                    if stop is not None:
                        if not saved:  # one write only: a scheduler's grace period may be short
                            self.save_checkpoint()
                        raise Stopped(stop)
                    if self.clock.step >= self.clock.total_steps:
                        break
                    mark = time.perf_counter()
            self.save_checkpoint()
            if self.ddp.is_main:
                atomic_save(self.eval_backbone_state(), self.run.backbone)
        finally:
            bar.close()
            if log is not None:
                log.close()
        return self.run.path


def train(cfg: Config) -> Path:
    """Train ``cfg`` to completion (or resume it); returns the run directory."""
    return Trainer(cfg).fit()
