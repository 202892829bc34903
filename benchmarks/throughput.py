"""Training throughput (images/s) and peak memory of the real training step.

    python benchmarks/throughput.py method=dino [recipe=NAME] [key=value ...]

For each method it builds the real :class:`sslzoo.trainer.Trainer` from the
recipe (``{method}_{suite}``, or ``recipe=``) and measures, warm-up steps
excluded:

- ``model``: ``Trainer.step`` on batches already produced (pinned when on a
  GPU; the host-to-device copy is part of the step), median over ``steps``;
- ``loader``: the DataLoader alone (augmentations in its workers);
- ``end_to_end``: loader and step together, as ``Trainer.fit`` runs them;

and says which of loader and model is the bottleneck. Images are source
images (a batch of B images is B per step, whatever the number of crops).
With ``method=dino`` it also runs, on the same backbone, head sizes, batch and
crops, a step built from lightly's blocks as lightly's example builds it
(``benchmarks/lightly_dino_step.py``) and reports sslzoo / lightly.

Arguments (key=value): ``method`` (comma list, or ``all``), ``recipe`` (one
method only), ``suite`` (fmnist | imagenet: ``{method}_vits16`` else
``{method}_r50``), ``steps`` (measured, default 20 on GPU / 5 on CPU),
``warmup`` (default 5 / 2), ``loader`` (true: also measure the loader and the
end-to-end rate), ``lightly`` (true: the lightly DINO reference),
``out`` (JSON path; a Markdown table is written next to it), ``append`` (add to
the JSON instead of replacing it), ``profile`` (N > 0: after the timed steps,
``steps`` more of sslzoo's step under ``torch.profiler``, and the N operators
with the most self time per step go into the record and a table of their own).
Shorthands: ``backbone`` ``batch`` ``precision`` ``compile`` ``device``
``workers`` ``data`` (a dataset name; ``synthetic`` needs no dataset); any
other dotted key overrides the recipe.

    # CPU, Fashion-MNIST
    python benchmarks/throughput.py method=dino
    # GPU, DINO ViT-S/16, 2x224 + 8x96 crops, batch 64, bf16, no dataset needed
    python benchmarks/throughput.py method=dino recipe=dino_vits16 data=synthetic
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from _common import crops

from sslzoo.arguments import REQUIRED, Option, Parser, asks_for_help
from sslzoo.augment import CroppedViews, CropsAndParams, MultiCrop
from sslzoo.config import RECIPES_DIR, RunConfig
from sslzoo.data import SeededViews, data_info, load_dataset, sample_seed
from sslzoo.errors import UserError, cli_entry
from sslzoo.methods import METHODS
from sslzoo.provenance import cpu_model, provenance
from sslzoo.recipes import load_config
from sslzoo.runtime import precision_name

RESULTS = Path(__file__).resolve().parent / "results"
SHORTHANDS = {
    "backbone": "model.backbone",
    "batch": "data.batch_size",
    "precision": "trainer.precision",
    "compile": "trainer.compile",
    "device": "trainer.device",
    "workers": "data.num_workers",
    "data": "data.name",
}
PARSER = Parser(
    "benchmarks/throughput.py",
    {
        "method": Option(list[str], REQUIRED, "the method(s): dino, dino,simclr or all"),
        "recipe": Option(str | None, None, "one method's recipe (default: {method}_{suite})"),
        "suite": Option(str, "fmnist", "fmnist | imagenet"),
        "steps": Option(int | None, None, "measured steps (default 20 on GPU / 5 on CPU)"),
        "warmup": Option(int | None, None, "warm-up steps (default 5 / 2)"),
        "loader": Option(bool, True, "also the loader and the end-to-end rate"),
        "lightly": Option(bool, True, "the lightly DINO reference"),
        "out": Option(str | None, None, "the JSON path"),
        "append": Option(bool, False, "add to the JSON instead of replacing it"),
        "profile": Option(int, 0, "N > 0: the N operators with the most self time per step (torch.profiler)"),
    },
    rest="recipe",  # the shorthands and any dotted recipe key
)
MIB = 2**20
LOADER_PROBE_IMAGES = 200  # images timed per photometric path (one thread)


# --------------------------------------------------------------------------- arguments


def recipe_for(method: str, suite: str) -> str:
    names = [f"{method}_fmnist"] if suite == "fmnist" else [f"{method}_vits16", f"{method}_r50"]
    for name in names:
        if (RECIPES_DIR / f"{name}.yaml").exists():
            return name
    raise UserError(f"no {suite} recipe for {method} (looked for {', '.join(names)}); pass recipe=NAME")


def parse_args(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(benchmark options, recipe overrides)."""
    args = PARSER.parse(argv)
    bench = {key: value for key, value in args.options.items() if value is not None}  # unset: the defaults below
    overrides = {SHORTHANDS.get(key, key): value for key, value in args.passed["recipe"].items()}
    methods = METHODS.names() if bench["method"] == ["all"] else bench["method"]
    if "recipe" in bench and len(methods) > 1:
        raise UserError("recipe= names one recipe: use it with a single method")
    bench["methods"] = methods
    return bench, overrides


# --------------------------------------------------------------------------- measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def peak_memory_mib(device: torch.device, baseline: int) -> float:
    """Peak GPU memory allocated since the last reset, above ``baseline`` bytes; on CPU the process's peak RSS,
    a high-water mark that no reset lowers: with several methods it covers every method measured before."""
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) - baseline) / MIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def pinned(views: list[torch.Tensor] | CroppedViews) -> list[torch.Tensor] | CroppedViews:
    if isinstance(views, CroppedViews):
        return CroppedViews(*(pinned(part) for part in views))
    return [v.pin_memory() for v in views]


def take_batches(loader: torch.utils.data.DataLoader, count: int, pin: bool) -> list[list[torch.Tensor] | CroppedViews]:
    batches = []
    for views, _labels in loader:
        batches.append(pinned(views) if pin else views)
        if len(batches) == count:
            return batches
    raise UserError("the dataset has too few batches for the benchmark: lower batch= or steps=")


def measure_loader(trainer, warmup: int, steps: int, step: Callable | None) -> float:
    """Images/s of the loader alone (``step`` None) or of loader + step; the first ``warmup`` batches excluded."""
    trainer.sampler.set_position(0, 0)
    batch = trainer.cfg.data.batch_size
    start = 0.0
    for index, (views, _labels) in enumerate(trainer.loader):
        if step is not None:
            step(views)
        if index == warmup - 1:
            synchronize(trainer.device)
            start = time.perf_counter()
        if index == warmup + steps - 1:
            synchronize(trainer.device)
            return steps * batch / (time.perf_counter() - start)
    raise UserError("the dataset has too few batches for the benchmark: lower batch= or steps=")


def top_operators(run_steps: Callable[[], object], device: torch.device, steps: int, top: int) -> dict[str, Any]:
    """The ``top`` operators by self time (device time on GPUs) over ``steps`` profiled steps, per step."""
    from torch.profiler import ProfilerActivity, profile

    gpu = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])) as prof:
        run_steps()
    return operator_times(prof.key_averages(), gpu, steps, top)


def operator_times(events: list[Any], gpu: bool, steps: int, top: int) -> dict[str, Any]:
    """Operators (aten::..., not user annotations) ranked by self time. On GPUs the operators' own
    ``self_device_time_total`` (their kernels' time): the kernels' entries would count it a second time."""
    from torch.autograd import DeviceType

    time_key = "self_device_time_total" if gpu else "self_cpu_time_total"
    operators = [
        e for e in events if e.device_type == DeviceType.CPU and not e.is_user_annotation and getattr(e, time_key) > 0
    ]
    operators.sort(key=lambda e: getattr(e, time_key), reverse=True)
    total = sum(getattr(e, time_key) for e in operators)
    return {
        "time": "device" if gpu else "cpu",
        "steps": steps,
        "self_ms_per_step": total / 1e3 / steps,
        "operators": [
            {
                "name": e.key,
                "self_ms_per_step": getattr(e, time_key) / 1e3 / steps,
                "share": getattr(e, time_key) / total,
                "calls_per_step": e.count / steps,
            }
            for e in operators[:top]
        ],
    }


def bench_method(method: str, bench: dict[str, Any], overrides: dict[str, Any], out_dir: str) -> dict[str, Any]:
    from sslzoo.trainer import Trainer

    recipe = str(bench.get("recipe") or recipe_for(method, str(bench.get("suite", "fmnist"))))
    cfg: RunConfig = load_config(recipe, {**overrides, "trainer.out_dir": out_dir, "resume": "none"})
    if cfg.method.name != method:
        raise UserError(f"recipe {recipe} trains {cfg.method.name}, not {method}")
    gpu = cfg.trainer.device != "cpu" and torch.cuda.is_available()
    steps = int(bench.get("steps", 20 if gpu else 5))
    warmup = max(1, int(bench.get("warmup", 5 if gpu else 2)))
    with_loader = bool(bench.get("loader", True))
    with_lightly = bool(bench.get("lightly", True)) and method == "dino"

    started = time.perf_counter()

    def say(phase: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {method}: {phase}", file=sys.stderr, flush=True)

    say(f"building {recipe} ({cfg.model.backbone}, batch {cfg.data.batch_size}, {crops(cfg)})")
    memory_before = reset_peak(torch.device("cuda")) if gpu else 0
    trainer = Trainer(cfg)
    device = trainer.device
    batches = take_batches(trainer.loader, min(2, warmup + steps), pin=device.type == "cuda")

    def sslzoo_step(views: list[torch.Tensor]) -> None:
        trainer.step(views)
        trainer.clock = trainer.clock.at(trainer.clock.step + 1)

    def run(step: Callable, count: int, offset: int = 0) -> list[float]:
        return [timed(lambda i=i: step(batches[(offset + i) % len(batches)]), device) for i in range(count)]

    say("warm-up")
    run(sslzoo_step, warmup)
    memory = peak_memory_mib(device, memory_before)  # model, optimizer state and the warm-up steps
    setup_s = time.perf_counter() - started

    reference, lightly_memory = None, None
    if with_lightly:
        from lightly_dino_step import LightlyDINOStep

        lightly_before = reset_peak(device)  # sslzoo's model stays resident: counted out on GPUs

        def lightly_step(views: list[torch.Tensor]) -> None:
            reference.step(trainer.device_views(views, device), epoch=0)

        say("lightly reference: building, warm-up")
        reference = LightlyDINOStep(cfg, device, trainer.dtype)
        run(lightly_step, warmup)
        if device.type == "cuda":
            lightly_memory = peak_memory_mib(device, lightly_before)

    # The timed steps: sslzoo's and lightly's alternate, so that a change in the machine's load hits both.
    say(f"{steps} timed steps")
    sslzoo_times, lightly_times = [], []
    for i in range(steps):
        sslzoo_times += run(sslzoo_step, 1, offset=i)
        if reference is not None:
            lightly_times += run(lightly_step, 1, offset=i)

    batch = cfg.data.batch_size
    model_step = statistics.median(sslzoo_times)
    record: dict[str, Any] = {
        "method": method,
        "recipe": recipe,
        "backbone": cfg.model.backbone,
        "crops": crops(cfg),
        "batch_per_device": batch,
        "precision": precision_name(trainer.dtype),  # what trainer.precision=auto resolved to
        "compile": cfg.trainer.compile,
        "photometric": cfg.augment.photometric,
        "data": cfg.data.name,
        "num_workers": cfg.data.num_workers,
        "device": device.type,
        "hardware": hardware(device),
        "steps": steps,
        "warmup": warmup,
        "model_step_s_median": model_step,
        "model_images_per_s": batch / model_step,
        "peak_memory_mib": memory,
        "memory_kind": "max CUDA memory allocated" if device.type == "cuda" else "process peak RSS so far",
        "setup_s": setup_s,
    }
    if reference is not None:
        reference_step = statistics.median(lightly_times)
        record["lightly"] = {
            "step_s_median": reference_step,
            "images_per_s": batch / reference_step,
            "peak_memory_mib": lightly_memory,
        }
        record["sslzoo_over_lightly"] = reference_step / model_step
    if bench["profile"] > 0:  # after the timed steps: the profiler's overhead stays out of them
        say(f"{steps} profiled steps")
        record["profile"] = top_operators(lambda: run(sslzoo_step, steps), device, steps, bench["profile"])
    if with_loader:
        say("loader CPU time per image, each photometric path")
        record["loader_cpu_ms_per_image"] = loader_cpu_ms(cfg, LOADER_PROBE_IMAGES)
        say("loader alone, then loader + step")
        record["loader_images_per_s"] = measure_loader(trainer, warmup, steps, None)
        record["end_to_end_images_per_s"] = measure_loader(trainer, warmup, steps, sslzoo_step)
        record["bottleneck"] = "loader" if record["loader_images_per_s"] < record["model_images_per_s"] else "model"
    record["provenance"] = provenance()  # git commit, package versions, hardware, time
    return record


def loader_cpu_ms(cfg: RunConfig, count: int) -> dict[str, float]:
    """CPU milliseconds of a loader worker's work per source image (read, crops, and the photometric stage
    on the ``per_image`` path), on one thread in this process, for both values of ``augment.photometric``;
    collation and the copy between processes are not included. 1000 / ms is images/s per worker."""
    info = data_info(cfg.data)
    base = load_dataset(cfg.data, "pretrain")
    paths = {
        "per_image": MultiCrop(cfg.augment, info.channels, list(info.mean), list(info.std)),
        "batched": CropsAndParams(cfg.augment, info.channels),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        costs = {}
        for name, transform in paths.items():
            views = SeededViews(base, transform)
            start = time.process_time()
            for index in range(count):
                views[index, sample_seed(cfg.seed, 0, index)]
            costs[name] = 1e3 * (time.process_time() - start) / count
        return costs
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- output


COLUMNS = [
    ("method", "method", "{}"),
    ("backbone", "backbone", "{}"),
    ("crops", "crops", "{}"),
    ("batch", "batch_per_device", "{}"),
    ("precision", "precision", "{}"),
    ("compile", "compile", "{}"),
    ("model img/s", "model_images_per_s", "rate"),
    ("peak MiB", "peak_memory_mib", "{:.0f}"),
    ("photometric", "photometric", "{}"),
    ("loader CPU ms/img, per_image", "loader_cpu_ms_per_image.per_image", "{:.2f}"),
    ("loader CPU ms/img, batched", "loader_cpu_ms_per_image.batched", "{:.2f}"),
    ("loader img/s", "loader_images_per_s", "rate"),
    ("end-to-end img/s", "end_to_end_images_per_s", "rate"),
    ("bottleneck", "bottleneck", "{}"),
    ("lightly img/s", "lightly.images_per_s", "rate"),
    ("sslzoo / lightly", "sslzoo_over_lightly", "{:.2f}"),
    ("hardware", "hardware", "{}"),
    ("error", "error", "{}"),
]


def cell(record: dict[str, Any], key: str, fmt: str) -> str:
    value: Any = record
    for part in key.split("."):  # dotted keys reach into nested records
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return "-"
    if fmt == "rate":  # three significant digits, without an exponent
        return f"{value:.0f}" if value >= 100 else f"{value:.3g}"
    return fmt.format(value)


def table(records: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(name for name, _, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r, key, fmt) for _, key, fmt in COLUMNS) + " |" for r in records]
    return "\n".join(lines)


def profile_tables(records: list[dict[str, Any]]) -> str:
    """One table per profiled record: its top operators by self time per step, headed by its date, which tells
    apart the records of one method that ``append=true`` gathers."""
    sections = []
    for r in (r for r in records if "profile" in r):
        prof = r["profile"]
        lines = [
            f"### {r['method']} ({r['precision']}, {prof['time']} self time, {prof['self_ms_per_step']:.1f} ms per "
            f"step over {prof['steps']} profiled steps, {r['date']})",
            "",
            "| operator | self ms per step | share | calls per step |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{op['name']}` | {op['self_ms_per_step']:.2f} | {op['share']:.1%} | {op['calls_per_step']:g} |"
            for op in prof["operators"]
        ]
        sections.append("\n".join(lines))
    return "\n\n## Top operators (`profile=N`)\n\n" + "\n\n".join(sections) + "\n" if sections else ""


def write_results(records: list[dict[str, Any]], out: Path, append: bool) -> list[dict[str, Any]]:
    if append and out.exists():
        records = json.loads(out.read_text()) + records
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2) + "\n")
    memory = (
        "peak MiB: max CUDA memory allocated on GPUs; on CPUs the process's peak RSS so far, which with "
        "several methods in one command includes the methods measured before (one method per command "
        "gives each its own)"
    )
    out.with_suffix(".md").write_text(
        f"# Training throughput\n\nWritten by `python benchmarks/throughput.py` ({out.name}); "
        f"images/s count source images per second; {memory}.\n\n{table(records)}\n{profile_tables(records)}"
    )
    return records


@cli_entry
def main(argv: list[str]) -> int:
    if not argv or asks_for_help(argv):
        print(__doc__)
        return 0
    bench, overrides = parse_args(argv)
    records = []
    with tempfile.TemporaryDirectory(prefix="sslzoo-throughput-") as out_dir:
        for method in bench["methods"]:
            try:
                record = bench_method(method, bench, overrides, out_dir)
            except Exception as err:  # noqa: BLE001 - with several methods, one failure must not lose the others
                if len(bench["methods"]) == 1:
                    raise
                record = {"method": method, "error": f"{type(err).__name__}: {err}"}
                print(f"{method}: failed: {record['error']}", file=sys.stderr, flush=True)
            record["command"] = "python benchmarks/throughput.py " + " ".join(argv)
            record["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            records.append(record)
            gc.collect()  # the method's trainer and loader workers go before the next method's are built
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            print(table([record]).splitlines()[-1], flush=True)
    kind = "gpu" if any(r.get("device") == "cuda" for r in records) else "cpu"
    out = Path(bench.get("out", RESULTS / f"throughput_{kind}.json"))
    everything = write_results(records, out, bool(bench.get("append", False)))
    print(f"\n{table(everything)}\n\nwritten: {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    main()
