"""Where a result came from: code version, software, hardware (for every result file)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "torchvision", "timm", "lightly", "numpy")


def git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def code_version() -> dict:
    """The git commit and whether the working tree had uncommitted changes (read-only git calls)."""
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(status) if status is not None else None}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def hardware() -> dict:
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "cpu": cpu_model(),
        "cpu_amx": torch.cpu._is_amx_tile_supported(),  # where trainer.precision=auto runs bf16 (runtime.native_bf16)
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": memory_bytes(),
        "gpus": gpus,
        "cuda": torch.version.cuda if gpus else None,
    }


def software() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["torch"] = torch.__version__
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions}


def provenance() -> dict:
    """Code version, software, hardware and the time, for a result file."""
    return {
        **code_version(),
        "torch_version": torch.__version__,
        "software": software(),
        "hardware": hardware(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def provenance_since(start: dict) -> dict:
    """The provenance taken when a long benchmark started, plus the code version at its end where it
    differs (the code was edited or committed while the benchmark ran)."""
    now = code_version()
    changed = any(now[key] != start[key] for key in now)
    return {**start, **({"code_version_at_end": now} if changed else {})}
