"""The process a training run lives in: process group, device, precision, RNG, stop signals and
``torch.compile``. The loop (``sslzoo/trainer.py``) sets these up through this module and knows
nothing of ``torchrun``'s environment, signal masks or compilers."""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from sslzoo.backbones import Backbone
from sslzoo.errors import UserError
from sslzoo.rundir import RunDir

PRECISION = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# --------------------------------------------------------------------------- process group and device


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


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 in hardware: an Ampere or newer GPU, or a CPU with AMX tiles
    (Intel Xeon from Sapphire Rapids on). On the 2-core AMX sandbox bf16 autocast ran DINO's Fashion-MNIST
    step 1.35 times as fast as fp32 (README, "bf16 on CPUs with AMX"); CPUs without AMX are not measured
    and keep fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.cpu._is_amx_tile_supported()


def precision_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``trainer.precision`` as the autocast dtype, refused where the device lacks it; ``auto`` is bf16
    where the device computes it natively (:func:`native_bf16`), fp32 elsewhere."""
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    dtype = PRECISION[precision]
    if dtype == torch.bfloat16 and device.type == "cuda" and not native_bf16(device):
        raise UserError("trainer.precision=bf16 needs an Ampere or newer GPU; use trainer.precision=fp16 here")
    return dtype


def precision_name(dtype: torch.dtype) -> str:
    """The ``trainer.precision`` value of an autocast dtype (what ``auto`` resolved to)."""
    return next(name for name, known in PRECISION.items() if known == dtype)


def attention_kernel(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Pick the attention kernel of every timm attention layer in ``model`` for this device and dtype.

    Under bf16 on a CPU the explicit softmax(q k^T) v replaces the fused ``scaled_dot_product_attention``,
    whose bf16 backward on CPUs is slow (torch 2.14; a profile of iBOT's step found it among the largest
    ops in bf16, among the cheapest in fp32): bf16 over fp32 then speeds SimCLR's Fashion-MNIST step 1.72
    times instead of 1.11, DINO's 1.61 instead of 1.35 (README, "bf16 on CPUs with AMX"). Elsewhere timm's
    default (fused) stays: in fp32 on the CPU the two kernels tied (a one-off A/B of DINO's and SimCLR's steps).
    """
    fused = not (device.type == "cpu" and dtype == torch.bfloat16)
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """Mixed precision for the forward (nothing under fp32)."""
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def prepare_out_dir(run: RunDir) -> None:
    """Create the run folder and check that it is writable, before any work is done."""
    path = run.path
    try:
        run.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to trainer.out_dir={path} ({err.strerror}); choose a writable folder") from None


# --------------------------------------------------------------------------- random state


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


# --------------------------------------------------------------------------- stop signals


class Stopped(Exception):
    """SIGTERM / SIGINT arrived; a checkpoint was saved."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def on_stop_signals(request_stop: Callable[[int], None]) -> None:
    """Call ``request_stop(signum)`` on SIGTERM and SIGINT instead of dying: the loop stops after its step."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, frame: request_stop(received))


def agreed_stop(signum: int | None, ddp: Distributed, device: torch.device) -> int | None:
    """The stop signal as every rank sees it, so that all ranks stop after the same step."""
    if ddp.world_size == 1:
        return signum
    flag = torch.tensor(float(signum or 0), device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


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


# --------------------------------------------------------------------------- memory layout and compilation


def peak_rss_bytes() -> int | None:
    """This process's peak resident set since it started (``VmHWM``, Linux; None elsewhere). Not
    ``getrusage``'s ``ru_maxrss``: after ``exec`` that keeps the peak of the process it replaced, so a run
    started by a large benchmark process would report the benchmark's memory."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    kib = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return int(kib) * 1024 if kib is not None else None


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
