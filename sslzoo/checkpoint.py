"""Atomic, safely loadable checkpoints.

A checkpoint is written to a temporary file in the same folder, flushed to
disk, then renamed over the old one: a crash (even SIGKILL) or a full disk at
any moment leaves the previous complete checkpoint in place. Checkpoints hold
only tensors and plain Python values, so they load with ``weights_only=True``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from sslzoo.errors import UserError

FORMAT = "sslzoo-checkpoint/1"


def os_error(err: BaseException) -> OSError | None:
    """The OSError behind ``err``: torch.save reports a failed write (a full disk) as a
    RuntimeError ("unexpected pos") whose context is the file object's OSError."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically; on failure the old file is untouched."""
    atomic_write(path, lambda file: torch.save(obj, file))


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """``write`` a temporary file beside ``path``, then rename it to ``path``; on failure the old file is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer that was killed (SIGKILL)
        stale.unlink(missing_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        cause = os_error(err)
        if cause is not None:
            raise UserError(f"could not write {path} ({cause.strerror}); the previous file there is kept") from None
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_checkpoint(path: Path, method: str | None = None, backbone: str | None = None) -> dict:
    """Load a checkpoint with ``weights_only=True``, checking it was made by ``method`` on ``backbone``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
        raise UserError(f"checkpoint {path} is unreadable or not an sslzoo checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not an sslzoo checkpoint")
    if method is not None and (state["method"], state["backbone"]) != (method, backbone):
        raise UserError(
            f"checkpoint {path} was trained with method {state['method']} on {state['backbone']}, "
            f"but this run is {method} on {backbone}; use another trainer.out_dir or resume=none"
        )
    return state
