"""The one training loop. It knows no method by name: a method is looked up in the registry and
drives everything method-specific through the Method hooks; what else follows the steps (the online
probe) is a callback the entry point attaches (``sslzoo/callbacks.py``). Process set-up is
``sslzoo/runtime.py``'s, the run's records ``sslzoo/metrics_log.py``'s."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from sslzoo.augment import CroppedViews, CropsAndParams, DeviceViews, MultiCrop
from sslzoo.build import build_method, check_method
from sslzoo.callbacks import Callback
from sslzoo.checkpoint import FORMAT, atomic_save, load_checkpoint
from sslzoo.config import RunConfig
from sslzoo.data import ResumableSampler, SeededViews, data_info, load_dataset
from sslzoo.diagnostics import collapse_metrics
from sslzoo.distributed import sync_batchnorm
from sslzoo.errors import UserError
from sslzoo.methods import Method
from sslzoo.metrics_log import MetricsLog, NonFiniteSteps, saved_config, write_text
from sslzoo.optim import apply_schedules, build_optimizer, clip_gradients, parameter_groups, scaled_lr
from sslzoo.rundir import RunDir
from sslzoo.runtime import (
    Stopped,
    agreed_stop,
    attention_kernel,
    autocast,
    channels_last_resnets,
    compile_backbones,
    ignore_stop_signals,
    init_distributed,
    on_stop_signals,
    peak_rss_bytes,
    precision_dtype,
    precision_name,
    prepare_out_dir,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from sslzoo.schedules import Clock


class Trainer:
    """Builds data, method and optimizer from a config and runs the optimizer steps."""

    def __init__(self, cfg: RunConfig, callbacks: Sequence[Callback] = ()) -> None:
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
        check_method(cfg)
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

        self.method: Method = build_method(cfg).to(self.device)
        if self.ddp.world_size > 1:
            self.method = sync_batchnorm(self.method, self.device)
        self.memory_format = torch.preserve_format  # NHWC gains nothing measurable on CPUs
        if self.device.type == "cuda" and channels_last_resnets(self.method):
            self.memory_format = torch.channels_last
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop sizes: pick the fastest kernels once (main_dino.py)
        self.dtype = precision_dtype(cfg.trainer.precision, self.device)
        attention_kernel(self.method, self.device, self.dtype)
        if cfg.trainer.compile:
            compile_backbones(self.method, self.device)
        self.model: nn.Module = self.method
        if self.ddp.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.method, device_ids=device_ids)
        self.global_batch = cfg.data.batch_size * self.ddp.world_size
        self.peak_lr = scaled_lr(cfg.optim, self.global_batch)
        groups = parameter_groups(
            self.method, cfg.optim.exclude_bias_norm, self.method.lr_scales(), self.method.fixed_lr()
        )
        self.optimizer = build_optimizer(groups, cfg.optim, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.nonfinite = NonFiniteSteps(cfg.trainer.on_nonfinite, self.method, self.run, self.ddp.world_size)
        self.train_s = 0.0  # training seconds so far (data and steps; not start-up or saving), continued on resume
        self.stop_signal: int | None = None
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            callback.attach(self.method, self.device)

    # -- checkpoints ---------------------------------------------------------

    def checkpoint_state(self) -> dict:
        return {
            "format": FORMAT,
            "method": self.cfg.method.name,
            "backbone": self.cfg.model.backbone,
            "step": self.clock.step,
            "epoch": self.clock.epoch,
            "skipped_steps": self.nonfinite.skipped,
            "train_s": self.train_s,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "callbacks": {callback.name: callback.state_dict() for callback in self.callbacks},
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
        self.nonfinite.skipped = state["skipped_steps"]
        self.train_s = state.get("train_s", 0.0)  # absent from checkpoints written before it was recorded
        saved = state.get("callbacks", {})
        for callback in self.callbacks:
            if saved.get(callback.name) is not None:  # else it starts afresh
                callback.load_state_dict(saved[callback.name])
        self.clock = self.clock.at(state["step"])
        if self.ddp.is_main:
            tqdm.write(f"resumed from {path} at step {self.clock.step}")

    # -- one step ------------------------------------------------------------

    def step(self, views: list[torch.Tensor] | CroppedViews, labels: torch.Tensor | None = None) -> dict:
        """One optimizer step on a loader batch of views; returns what gets logged."""
        clock = self.clock
        lr, wd = apply_schedules(self.optimizer, self.cfg.optim, clock, self.peak_lr)
        views = self.device_views(views, self.device, memory_format=self.memory_format)
        buffers = self.nonfinite.snapshot_buffers()
        with autocast(self.device, self.dtype):
            out = self.model(views, clock)
        loss = out.loss.float()
        self.optimizer.zero_grad(set_to_none=True)
        if not self.nonfinite.all_finite(loss):
            return self.nonfinite.handle(loss, clock.step + 1, buffers)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        self.method.before_optimizer_step(clock)
        clip_gradients(self.method, self.cfg.optim)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_optimizer_step(clock)
        for callback in self.callbacks:
            callback.on_step(out, labels)
        record = {"loss": loss.item(), "lr": lr, "wd": wd, **out.logs}
        logged = (clock.step + 1) % self.cfg.trainer.log_every == 0 or clock.step + 1 == clock.total_steps
        if out.embeddings is not None and logged:
            record.update(collapse_metrics(out.embeddings))
        return record

    # -- the run -------------------------------------------------------------

    def request_stop(self, signum: int) -> None:
        self.stop_signal = signum

    def fit(self) -> Path:
        self.maybe_resume()
        cfg = self.cfg
        if self.ddp.is_main:
            write_text(self.run.config, saved_config(cfg, self.callbacks))
        log = MetricsLog(cfg, self.run, self.clock.step) if self.ddp.is_main else None
        snapshots = self.run.snapshots if self.ddp.is_main else None
        if snapshots is not None:
            snapshots.truncate_after(self.clock.step)
        on_stop_signals(self.request_stop)
        if cfg.trainer.precision == "auto" and self.ddp.is_main:
            tqdm.write(f"trainer.precision=auto: {precision_name(self.dtype)} on this {self.device.type}")
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
                        for callback in self.callbacks:
                            record.update(callback.on_log())
                        if self.device.type == "cuda":
                            record["cuda_max_memory_allocated"] = torch.cuda.max_memory_allocated(self.device)
                        if (rss := peak_rss_bytes()) is not None:
                            record["peak_rss_bytes"] = rss
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
                    stop = agreed_stop(self.stop_signal, self.ddp, self.device)
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
