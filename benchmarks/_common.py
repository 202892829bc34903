"""Pieces shared by the benchmark scripts: isolated pre-training runs and their measurements."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sslzoo.config import RunConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
# The scripts import this module before sslzoo: they then measure the sslzoo of this checkout, as the
# train.py beside them does, not another copy installed in the environment (an editable install of
# another clone would mix two versions of the code in one result).
sys.path.insert(1, str(REPO_ROOT))
TRAIN_SCRIPT = REPO_ROOT / "train.py"
PRETRAIN_FILE = "pretrain.json"  # what pretrain() measured, kept in the run folder
LOG_FILE = "train.log"  # the training subprocess's output, in the run folder


def cli_value(value: Any) -> str:
    """A value as ``train.py`` parses it back (YAML): strings bare, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def train_command(recipe: str, overrides: dict[str, Any]) -> list[str]:
    return [
        sys.executable,
        str(TRAIN_SCRIPT),
        f"recipe={recipe}",
        *(f"{k}={cli_value(v)}" for k, v in overrides.items()),
    ]


@dataclass
class Pretrain:
    """One pre-training subprocess: outcome and cost."""

    recipe: str
    command: list[str]
    returncode: int
    wall_s: float
    peak_rss_bytes: int | None  # the training process's peak resident set (VmHWM, logged by the trainer)
    peak_cuda_bytes: int | None  # torch.cuda.max_memory_allocated, logged by the trainer on GPUs
    images_per_s: float | None  # mean of the trainer's logged throughput, the first (warm-up) window left out
    error: str | None  # the last line of the log when the run failed

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def peak_memory(self) -> tuple[int | None, str]:
        """(bytes, kind): GPU memory when the run used a GPU, else the process's peak RSS."""
        if self.peak_cuda_bytes is not None:
            return self.peak_cuda_bytes, "cuda max_memory_allocated"
        return self.peak_rss_bytes, "peak RSS"


def throughput(metrics: list[dict]) -> float | None:
    rates = [m["images_per_s"] for m in metrics if "images_per_s" in m]
    if len(rates) > 1:
        rates = rates[1:]  # the first window includes start-up
    return sum(rates) / len(rates) if rates else None


def pretrain(recipe: str, overrides: dict[str, Any], run_dir: Path) -> Pretrain:
    """``python train.py recipe=... key=value ...`` in a subprocess writing into ``run_dir``.

    A subprocess isolates memory (its peak is its own) and failures (one crashed
    method does not stop a benchmark). The output goes to ``run_dir/LOG_FILE``.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    command = train_command(recipe, {**overrides, "trainer.out_dir": str(run_dir)})
    log = run_dir / LOG_FILE
    with log.open("w") as handle:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        try:
            returncode = proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
        wall = time.perf_counter() - start
    from sslzoo.rundir import RunDir

    metrics = RunDir(run_dir).read_metrics()
    cuda = [m["cuda_max_memory_allocated"] for m in metrics if "cuda_max_memory_allocated" in m]
    rss = [m["peak_rss_bytes"] for m in metrics if "peak_rss_bytes" in m]
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    error = None if returncode == 0 else (lines[-1] if lines else f"exit status {returncode}")
    # Recorded as typed in the repository (results name no machine's paths): python train.py ...
    shown = ["python", TRAIN_SCRIPT.name, *command[2:]]
    result = Pretrain(
        recipe,
        shown,
        returncode,
        wall,
        max(rss) if rss else None,
        max(cuda) if cuda else None,
        throughput(metrics),
        error,
    )
    (run_dir / PRETRAIN_FILE).write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def load_pretrain(run_dir: Path) -> Pretrain | None:
    path = run_dir / PRETRAIN_FILE
    if not path.is_file():
        return None
    return Pretrain(**json.loads(path.read_text()))


def finished_run(run_dir: Path, recipe: str, overrides: dict[str, Any]) -> Pretrain | None:
    """A successful earlier run in ``run_dir`` whose saved config is what ``recipe`` with ``overrides``
    resolves to now (a recipe edited since the run does not count, even if the command is the same; a key
    added to the code since counts at the value the run trained with, ``sslzoo.config.ADDED``), with every
    evaluation snapshot that config asks for."""
    import yaml

    from sslzoo.cli import attached_callbacks
    from sslzoo.config import with_added_keys
    from sslzoo.metrics_log import saved_config
    from sslzoo.recipes import load_config
    from sslzoo.rundir import RunDir

    previous = load_pretrain(run_dir)
    run = RunDir(run_dir)
    if previous is None or not previous.ok or not run.backbone.is_file() or not run.config.is_file():
        return None
    wanted = load_config(recipe, {**overrides, "trainer.out_dir": str(run_dir)})
    now = yaml.safe_load(saved_config(wanted, attached_callbacks(wanted)))
    same = with_added_keys(run.read_config(), now) == now
    return previous if same and snapshots_complete(run_dir, wanted.trainer.snapshot_every) else None


def pretrain_or_reuse(
    label: str, recipe: str, overrides: dict[str, Any], run_dir: Path, reuse: bool
) -> tuple[Pretrain, bool]:
    """(the run, whether it was reused): with ``reuse``, a finished run of the same config in ``run_dir``
    (:func:`finished_run`), else a fresh :func:`pretrain`; says what it does, and a failure's last line."""
    result = finished_run(run_dir, recipe, overrides) if reuse else None
    if result is not None:
        return result, True
    print(f"[{label}] pre-training {overrides['trainer.max_steps']} steps -> {run_dir}", flush=True)
    result = pretrain(recipe, overrides, run_dir)
    if not result.ok:
        print(f"[{label}] FAILED: {result.error} (log: {run_dir / LOG_FILE})", flush=True)
    return result, False


def snapshots_complete(run_dir: Path, every: int) -> bool:
    """Whether a finished run holds its snapshot of every ``every``-th step up to its last logged step."""
    from sslzoo.rundir import RunDir

    if not every:
        return True
    run = RunDir(run_dir)
    metrics = run.read_metrics()
    snapshots = run.snapshots
    entries = snapshots.read()
    expected = list(range(every, metrics[-1]["step"] + 1, every)) if metrics else []
    return [e["step"] for e in entries] == expected and all((snapshots.folder / e["file"]).is_file() for e in entries)


def mean_std(values: list[float | None]) -> dict[str, float | int | None]:
    """Mean and sample standard deviation (n - 1) of the values present; std is null for one value."""
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(present) / len(present)
    std = math.sqrt(sum((v - mean) ** 2 for v in present) / (len(present) - 1)) if len(present) > 1 else None
    return {"mean": mean, "std": std, "n": len(present)}


def crops(cfg: RunConfig) -> str:
    """A run's views, e.g. ``2x28px + 4x12px``: global crops, then local crops where it has them."""
    a = cfg.augment
    return f"{a.global_crops}x{a.global_size}px" + (f" + {a.local_crops}x{a.local_size}px" if a.local_crops else "")
