"""The side-by-side benchmark: ``python benchmarks/compare.py [key=value ...]``.

Pre-trains every method (by default all registered ones, each from its
``<method>_fmnist`` recipe) under one identical budget (optimizer steps, batch
size, backbone, crops where the method allows), each in its own subprocess;
evaluates each frozen backbone offline (kNN and linear probe) next to two
baselines (raw pixels, the random-init backbone); and writes to the results
folder ``results.json``, ``results.md``, ``results.png`` (bars),
``loss_curves.png`` / ``accuracy_curves.png``, and ``knn_vs_minutes.png``: each
method's offline kNN on a fixed subset at each ``1/curve_points`` of the budget
(from snapshots of its evaluated backbone) against its training minutes, over the
raw-pixel and random-init lines. Every file records the git commit, each run's
full config, the seeds, the torch version and the hardware.
Defaults and every option: ``benchmarks/compare.yaml``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Pretrain, finished_run, mean_std, pretrain  # noqa: E402

from sslzoo.arguments import asks_for_help, parse_overrides  # noqa: E402
from sslzoo.config import Config, build, dotted_keys, read_yaml, set_dotted  # noqa: E402
from sslzoo.errors import UserError, cli_entry  # noqa: E402
from sslzoo.eval.protocol import Protocol, load_protocol, to_dict  # noqa: E402
from sslzoo.methods import METHODS, method_class  # noqa: E402
from sslzoo.provenance import provenance, provenance_since  # noqa: E402
from sslzoo.recipes import load_config  # noqa: E402
from sslzoo.rundir import RunDir  # noqa: E402

if TYPE_CHECKING:  # for the annotations only: this script imports sslzoo.eval.evaluate where it uses it
    from sslzoo.eval.evaluate import Evaluator, Features, Subject

SETTINGS_FILE = Path(__file__).resolve().parent / "compare.yaml"
SCHEMA = "sslzoo-compare/1"
EVAL_PREFIX = "eval."
KNN_KEY, LINEAR_KEY = "offline_knn_top1_at_k", "offline_linear_top1"
BASELINES = ("raw_pixels", "random_init")
BASELINE_LABELS = {"raw_pixels": "raw pixels (baseline)", "random_init": "random-init backbone (baseline)"}
PLOT_DPI = 120
BUDGET_KEYS = {  # recipe keys that the budget settings own
    "seed": "seeds",
    "trainer.max_steps": "steps",
    "data.batch_size": "batch_size",
    "model.backbone": "backbone",
    "augment.local_crops": "local_crops",
    "trainer.online_probe": "online_probe",
    "trainer.snapshot_every": "curve_points",
}
CURVE_FIGURE = "knn_vs_minutes.png"


@dataclass
class Settings:
    methods: list[str]
    recipes: list[str] | None
    recipe_suffix: str
    seeds: list[int]
    steps: int
    batch_size: int
    backbone: str
    local_crops: int
    online_probe: bool
    curve_points: int
    curve_train_limit: int | None
    curve_test_limit: int | None
    baselines: bool
    lowshot: bool
    reuse: bool
    out: str
    runs: str


@dataclass
class Plan:
    """One method's recipe and the validated config of each seed."""

    method: str
    recipe: str
    configs: dict[int, Config]
    overrides: dict[int, dict[str, Any]]


# --------------------------------------------------------------------------- settings


def as_list(value: Any) -> Any:
    """``"dino,byol"`` or ``0`` as a list; lists and null pass through."""
    if value is None or isinstance(value, list):
        return value
    return [yaml.safe_load(part.strip()) for part in str(value).split(",") if part.strip()]


def parse(argv: list[str]) -> tuple[Settings, dict[str, Any], dict[str, Any]]:
    """(settings, overrides for every run's recipe, overrides for the evaluation protocol)."""
    tree = read_yaml(SETTINGS_FILE)
    valid = dotted_keys(tree)
    train_overrides, eval_overrides = {}, {}
    for key, value in parse_overrides(argv).items():
        if key.startswith(EVAL_PREFIX):
            eval_overrides[key[len(EVAL_PREFIX) :]] = value
        elif "." in key or key not in tree:
            train_overrides[key] = value
        else:
            set_dotted(tree, key, value, valid)
    for key, setting in BUDGET_KEYS.items():
        if key in train_overrides:
            raise UserError(f"set {key} for every method with {setting}=, not {key}=")
    for key in ("methods", "recipes", "seeds"):
        tree[key] = as_list(tree[key])
    if tree["methods"] == ["all"]:
        tree["methods"] = METHODS.names()
    settings = build(Settings, tree, "")
    if settings.steps <= 0 or settings.batch_size <= 0 or settings.local_crops < 0:
        raise UserError("steps and batch_size must be positive and local_crops 0 or more")
    if not settings.seeds or len(set(settings.seeds)) != len(settings.seeds):
        raise UserError(f"seeds={settings.seeds} must be a non-empty list of distinct integers")
    if settings.curve_points < 0 or settings.steps % max(settings.curve_points, 1):
        raise UserError(
            f"curve_points={settings.curve_points} must be 0 (no curve) or divide steps={settings.steps}: "
            "the curve evaluates each 1/curve_points of the budget"
        )
    if any(n is not None and n <= 0 for n in (settings.curve_train_limit, settings.curve_test_limit)):
        raise UserError("curve_train_limit and curve_test_limit must be positive or null (the whole split)")
    return settings, train_overrides, eval_overrides


def run_dir(settings: Settings, method: str, seed: int) -> Path:
    """As given (relative to the working directory, which the runs share): results name no machine's paths."""
    return Path(settings.runs) / method / f"seed{seed}"


def plan_runs(settings: Settings, train_overrides: dict[str, Any]) -> list[Plan]:
    """Each method's config per seed, validated before any run starts (a typo fails in a second)."""
    if settings.recipes is not None:
        pairs = [(str(load_config(r).method.name), r) for r in settings.recipes]
    else:
        for name in settings.methods:
            method_class(name)  # an unknown name fails here, with the registered ones listed
        pairs = [(m, f"{m}_{settings.recipe_suffix}") for m in settings.methods]
    if len({m for m, _ in pairs}) != len(pairs):
        raise UserError("each method may appear once in methods= / recipes=")
    plans = []
    for method, recipe in pairs:
        plan = Plan(method, recipe, {}, {})
        for seed in settings.seeds:
            overrides = {
                "seed": seed,
                "resume": "none",
                "trainer.max_steps": settings.steps,
                "data.batch_size": settings.batch_size,
                "model.backbone": settings.backbone,
                "trainer.online_probe": settings.online_probe,
                "trainer.snapshot_every": settings.steps // settings.curve_points if settings.curve_points else 0,
                "logger.wandb": "off",
                **({"augment.local_crops": settings.local_crops} if method_class(method).supports_local_crops else {}),
                **train_overrides,
            }
            cfg = load_config(recipe, {**overrides, "trainer.out_dir": str(run_dir(settings, method, seed))})
            method_class(method).check_config(cfg)
            plan.configs[seed], plan.overrides[seed] = cfg, overrides
        plans.append(plan)
    check_same_data(plans)
    return plans


def check_same_data(plans: list[Plan]) -> None:
    datasets = {(p.configs[s].data.name, p.configs[s].data.root) for p in plans for s in p.configs}
    if len(datasets) > 1:
        raise UserError(f"the recipes train on different data {sorted(datasets)}: set data.name= (and data.root=)")


def crops(cfg: Config) -> str:
    a = cfg.augment
    return f"{a.global_crops}x{a.global_size}px" + (f" + {a.local_crops}x{a.local_size}px" if a.local_crops else "")


# --------------------------------------------------------------------------- running


def finished(settings: Settings, directory: Path, recipe: str, overrides: dict[str, Any]) -> Pretrain | None:
    """A previous successful run of the same config in ``directory`` (with ``reuse=true``)."""
    return finished_run(directory, recipe, overrides) if settings.reuse else None


def evaluate_run(evaluator: Evaluator, subject: Subject, seed: int) -> tuple[dict, dict, Features]:
    """(kNN record, linear record, the features they were computed from)."""
    from sslzoo.eval.evaluate import write_record

    features = evaluator.features(subject)
    knn = evaluator.knn(subject, features)
    linear = evaluator.linear(subject, features, seed=evaluator.protocol.seed + seed)
    if subject.out_dir is not None:
        results = RunDir(subject.out_dir)
        write_record(results.eval_record("knn"), knn, subject, evaluator.protocol)
        write_record(results.eval_record("linear"), linear, subject, evaluator.protocol)
    return knn, linear, features


def lowshot_entry(evaluator: Evaluator, subject: Subject, features: Features) -> dict:
    """The optional low-shot columns (``lowshot=true``): ``python -m sslzoo.eval lowshot`` on the features
    already computed; each setting's kNN and linear top-1, averaged over its draws."""
    from sslzoo.eval.evaluate import write_record
    from sslzoo.eval.lowshot import lowshot

    record = lowshot(evaluator, subject, features)
    if subject.out_dir is not None:
        write_record(RunDir(subject.out_dir).eval_record("lowshot"), record, subject, evaluator.protocol)
    return {r["setting"]: {kind: r[kind]["mean"] for kind in ("knn_top1", "linear_top1")} for r in record["results"]}


def lowshot_row(ok: list[dict]) -> dict:
    """Each low-shot setting's kNN and linear top-1, mean ± std over the seeds."""
    settings = ok[0]["lowshot"]
    return {s: {kind: mean_std([e["lowshot"][s][kind] for e in ok]) for kind in settings[s]} for s in settings}


def lowshot_markdown(results: dict) -> list[str]:
    """The low-shot columns as a second table (only with ``lowshot=true``)."""
    rows = [r for r in results["rows"] if "lowshot" in r]
    if not rows:
        return []
    settings = list(rows[0]["lowshot"])
    low = results["protocol"]["lowshot"]
    lines = [
        f"Low-shot (offline, mean over {low['draws']} class-balanced draws of the training labels per setting; "
        "`python -m sslzoo.eval lowshot`): kNN / linear top-1 (%).",
        "",
        "| method | " + " | ".join(f"{s} kNN | {s} linear" for s in settings) + " |",
        "|---|" + "---|---|" * len(settings),
    ]
    for row in rows:
        name = BASELINE_LABELS.get(row["name"], row["name"]) if row["kind"] == "baseline" else row["name"]
        cells = [pct(row["lowshot"][s][kind]) for s in settings for kind in ("knn_top1", "linear_top1")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def smallest(*limits: int | None) -> int | None:
    """The smallest of the image limits given (null: no limit)."""
    present = [n for n in limits if n is not None]
    return min(present) if present else None


def curve_protocol(settings: Settings, protocol: Protocol) -> Protocol:
    """The protocol on the curve's fixed subset: the first images of each split, within the protocol's own limits."""
    return dataclasses.replace(
        protocol,
        train_limit=smallest(settings.curve_train_limit, protocol.train_limit),
        test_limit=smallest(settings.curve_test_limit, protocol.test_limit),
    )


def subset_knn(curve: Evaluator, subject: Subject, features: Features) -> float:
    """The headline kNN on the curve's subset, from ``features`` of the full split (the subset is its first images)."""
    p = curve.protocol
    first = dataclasses.replace(
        features,
        knn_train=features.knn_train[: p.train_limit],
        train_labels=features.train_labels[: p.train_limit],
        knn_test=features.knn_test[: p.test_limit],
        test_labels=features.test_labels[: p.test_limit],
    )
    return curve.knn(subject, first)["headline"]["knn_top1"]


def knn_curve(
    settings: Settings, directory: Path, curve: Evaluator, final: Subject, final_features: Features
) -> list[dict]:
    """The subset kNN of each snapshot of the run, with the training minutes it had taken; the last
    snapshot is the final backbone (``final``), whose full-split features are already computed."""
    from sslzoo.eval.evaluate import from_snapshot

    points = []
    for entry in RunDir(directory).snapshots.read():
        if entry["step"] == settings.steps:
            knn = subset_knn(curve, final, final_features)
        else:
            subject = from_snapshot(directory, entry)
            knn = curve.knn(subject, curve.features(subject))["headline"]["knn_top1"]
        points.append({"step": entry["step"], "train_minutes": entry["train_s"] / 60, "knn_top1": knn})
    return points


def strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "subject"}


def run_method(settings: Settings, plan: Plan, seed: int, evaluator: Evaluator, curve: Evaluator | None) -> dict:
    """Pre-train (or reuse) one method and seed, evaluate it offline and, with ``curve``, each of its snapshots."""
    from sslzoo.eval.evaluate import from_run

    directory = run_dir(settings, plan.method, seed)
    cfg = plan.configs[seed]
    entry: dict[str, Any] = {"name": plan.method, "seed": seed, "recipe": plan.recipe, "run_dir": str(directory)}
    result = finished(settings, directory, plan.recipe, plan.overrides[seed])
    reused = result is not None
    if result is None:
        print(f"[{plan.method} seed {seed}] pre-training {settings.steps} steps -> {directory}", flush=True)
        result = pretrain(plan.recipe, plan.overrides[seed], directory)
    memory, memory_kind = result.peak_memory
    config_file = RunDir(directory).config
    entry.update(
        status="ok" if result.ok else "failed",
        reused=reused,
        command=result.command,
        config=yaml.safe_load(config_file.read_text()) if config_file.is_file() else cfg.raw,
        pretrain_wall_s=result.wall_s,
        images_per_s=result.images_per_s,
        peak_memory_bytes=memory,
        peak_memory_kind=memory_kind,
        error=result.error,
    )
    if not result.ok:
        print(f"[{plan.method} seed {seed}] FAILED: {result.error} (log: {directory / 'train.log'})", flush=True)
        return entry
    final = from_run(directory)
    knn, linear, features = evaluate_run(evaluator, final, seed)
    entry.update(knn=strip(knn), linear=strip(linear), eval_s=knn["extract_s"] + knn["eval_s"] + linear["eval_s"])
    if settings.lowshot:
        entry["lowshot"] = lowshot_entry(evaluator, final, features)
    print(
        f"[{plan.method} seed {seed}] pre-train {result.wall_s / 60:.1f} min; offline kNN@{knn['headline']['k']} "
        f"{100 * knn['headline']['knn_top1']:.2f}%, offline linear {100 * linear['linear_top1']:.2f}% "
        f"(evaluation {entry['eval_s'] / 60:.1f} min)",
        flush=True,
    )
    if curve is not None:
        start = time.perf_counter()
        entry["curve"] = knn_curve(settings, directory, curve, final, features)
        entry["curve_eval_s"] = time.perf_counter() - start
        points = ", ".join(f"{p['train_minutes']:.1f} min {100 * p['knn_top1']:.2f}%" for p in entry["curve"])
        print(f"[{plan.method} seed {seed}] subset kNN curve: {points}", flush=True)
    return entry


def run_baseline(
    name: str, settings: Settings, cfg: Config, seed: int, evaluator: Evaluator, curve: Evaluator | None
) -> dict:
    """Evaluate a baseline offline and, with ``curve``, on the curve's subset."""
    from sslzoo.eval.evaluate import random_init, raw_pixels

    subject = raw_pixels(cfg.data) if name == "raw_pixels" else random_init(settings.backbone, cfg.data, seed)
    knn, linear, features = evaluate_run(evaluator, subject, seed)
    print(
        f"[{name} seed {seed}] offline kNN@{knn['headline']['k']} {100 * knn['headline']['knn_top1']:.2f}%, "
        f"offline linear {100 * linear['linear_top1']:.2f}%",
        flush=True,
    )
    entry = {
        "name": name,
        "seed": seed,
        "status": "ok",
        "weights": subject.weights,
        "knn": strip(knn),
        "linear": strip(linear),
        "eval_s": knn["extract_s"] + knn["eval_s"] + linear["eval_s"],
    }
    if curve is not None:
        entry["subset_knn_top1"] = subset_knn(curve, subject, features)
    if settings.lowshot:
        entry["lowshot"] = lowshot_entry(evaluator, subject, features)
    return entry


def start_curves_at_random_init(runs: list[dict]) -> None:
    """Every method's curve starts at step 0, 0 minutes, at the random-init backbone of its seed (the baseline)."""
    floors = {e["seed"]: e["subset_knn_top1"] for e in runs if e["name"] == "random_init"}
    for entry in runs:
        if "curve" in entry and entry["seed"] in floors:
            entry["curve"].insert(0, {"step": 0, "train_minutes": 0.0, "knn_top1": floors[entry["seed"]]})


# --------------------------------------------------------------------------- summary


def summarise(name: str, kind: str, entries: list[dict], plan: Plan | None, headline_k: int) -> dict:
    ok = [e for e in entries if e["status"] == "ok"]
    row: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "seeds": [e["seed"] for e in entries],
        "failed_seeds": [e["seed"] for e in entries if e["status"] != "ok"],
        KNN_KEY: {"k": headline_k, **mean_std([e["knn"]["knn_top1"][str(headline_k)] for e in ok])},
        LINEAR_KEY: mean_std([e["linear"]["linear_top1"] for e in ok]),
    }
    if plan is not None:
        card = method_class(plan.method).card
        cfg = next(iter(plan.configs.values()))
        row.update(
            recipe=plan.recipe,
            family=card.family,
            target=card.target,
            crops=crops(cfg),
            pretrain_wall_s=mean_std([e["pretrain_wall_s"] for e in entries if e["status"] == "ok"]),
            images_per_s=mean_std([e["images_per_s"] for e in ok]),
            peak_memory_bytes=mean_std([e["peak_memory_bytes"] for e in ok]),
            peak_memory_kind=ok[0]["peak_memory_kind"] if ok else None,
        )
    curves = [e["curve"] for e in ok if "curve" in e]
    if curves:
        row["curve"] = [
            {
                "step": points[0]["step"],
                "train_minutes": mean_std([p["train_minutes"] for p in points]),
                "knn_top1": mean_std([p["knn_top1"] for p in points]),
            }
            for points in zip(*curves)
        ]
    if any("subset_knn_top1" in e for e in ok):
        row["subset_knn_top1"] = mean_std([e["subset_knn_top1"] for e in ok])
    if ok and all("lowshot" in e for e in ok):
        row["lowshot"] = lowshot_row(ok)
    return row


def beats(row: dict, floor: dict | None) -> dict[str, bool | None]:
    """Whether ``row``'s mean beats ``floor``'s (the random-init backbone) on each protocol."""
    out: dict[str, bool | None] = {}
    for key, short in ((KNN_KEY, "knn"), (LINEAR_KEY, "linear")):
        mine, theirs = row[key]["mean"], (floor or {}).get(key, {}).get("mean")
        out[short] = None if mine is None or theirs is None else mine > theirs
    return out


def pct(stat: dict) -> str:
    if stat["mean"] is None:
        return "failed"
    text = f"{100 * stat['mean']:.2f}"
    return text + (f" ± {100 * stat['std']:.2f}" if stat["std"] is not None else "")


def number(stat: dict | None, scale: float, digits: int) -> str:
    if stat is None or stat["mean"] is None:
        return "—"
    text = f"{stat['mean'] / scale:.{digits}f}"
    return text + (f" ± {stat['std'] / scale:.{digits}f}" if stat["std"] is not None else "")


def markdown(results: dict) -> str:
    s, prov, protocol = results["settings"], results["provenance"], results["protocol"]
    k = protocol["knn"]["headline_k"]
    n_seeds = len(s["seeds"])
    spread = f"mean ± std over {n_seeds} seeds ({', '.join(map(str, s['seeds']))})" if n_seeds > 1 else "one seed"
    memory_kinds = {r.get("peak_memory_kind") for r in results["rows"] if r.get("peak_memory_kind")}
    lines = [
        "# sslzoo side-by-side benchmark",
        "",
        f"All accuracies are **offline** top-1 (%) on the {results['dataset']} test split, from frozen backbones: "
        f"weighted **kNN@{k}** (DINO eval_knn.py, T={protocol['knn']['temperature']}) and a **linear probe** "
        f"({protocol['linear']['epochs']} epochs, DINO eval_linear.py). They are not the online probe "
        "(`online_linear_top1`, logged during pre-training on augmented batches; see accuracy_curves.png).",
        "",
        f"Budget, identical for every method: {s['steps']} optimizer steps, batch {s['batch_size']}, backbone "
        f"`{s['backbone']}`, local crops {s['local_crops']} where the method has them; {spread}.",
        "",
        f"| method | family | target policy | crops | kNN@{k} (offline) | linear top-1 (offline) | pre-train wall time "
        f"(min) | images/s | peak memory (GB, {'/'.join(sorted(memory_kinds)) or 'n/a'}) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        if row["kind"] == "baseline":
            label = BASELINE_LABELS[row["name"]]
            cells = [label, "—", "—", "—", pct(row[KNN_KEY]), pct(row[LINEAR_KEY]), "—", "—", "—"]
        else:
            cells = [
                row["name"],
                row["family"],
                row["target"],
                row["crops"],
                pct(row[KNN_KEY]),
                pct(row[LINEAR_KEY]),
                number(row["pretrain_wall_s"], 60, 1),
                number(row["images_per_s"], 1, 0),
                number(row["peak_memory_bytes"], 1e9, 2),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += lowshot_markdown(results)
    lines += curve_markdown(results)
    verdicts = [
        f"{r['name']}: kNN {yes_no(r['beats_random_init']['knn'])}, linear {yes_no(r['beats_random_init']['linear'])}"
        for r in results["rows"]
        if r["kind"] == "method"
    ]
    if any(r["name"] == "random_init" for r in results["rows"]):
        lines += ["Beats the random-init backbone: " + "; ".join(verdicts) + ".", ""]
    failed = [f"{e['name']} seed {e['seed']}: {e['error']}" for e in results["runs"] if e["status"] != "ok"]
    if failed:
        lines += ["**Failed runs**: " + "; ".join(failed), ""]
    hw = prov["hardware"]
    lines += [
        "## Provenance",
        "",
        f"- git commit: `{prov['git_commit']}`" + (" (uncommitted changes)" if prov["git_dirty"] else ""),
        f"- torch {prov['torch_version']}, python {prov['software']['python']}, {prov['software']['platform']}",
        f"- hardware: {hw['cpu']}, {hw['cpu_cores_usable']} usable cores, {hw['torch_threads']} torch threads, "
        f"GPUs: {', '.join(hw['gpus']) or 'none'}",
        f"- created: {prov['created']}; seeds: {', '.join(map(str, s['seeds']))}",
        f"- command: `python benchmarks/compare.py {' '.join(results['argv'])}`",
        "",
        "## Configs",
        "",
    ]
    for entry in results["runs"]:
        if "config" in entry:
            lines += [
                f"<details><summary>{entry['name']} seed {entry['seed']} ({entry['recipe']})</summary>",
                "",
                "```yaml",
                yaml.safe_dump(entry["config"], sort_keys=False).rstrip(),
                "```",
                "</details>",
                "",
            ]
    lines += [
        "<details><summary>evaluation protocol</summary>",
        "",
        "```yaml",
        yaml.safe_dump(protocol, sort_keys=False).rstrip(),
        "```",
        "</details>",
        "",
    ]
    return "\n".join(lines)


def curve_markdown(results: dict) -> list[str]:
    """The curve table: each method's training minutes and subset kNN at each fraction of the budget."""
    curve, steps = results["curve"], results["settings"]["steps"]
    rows = [r for r in results["rows"] if r.get("curve")]
    if curve is None or not rows:
        return []
    k = curve["k"]
    fractions = [str(Fraction(p["step"], steps)) for p in rows[0]["curve"]]
    header = [f"{f} (step {p['step']})" for f, p in zip(fractions, rows[0]["curve"])]
    lines = [
        f"## Offline kNN@{k} against training minutes",
        "",
        f"Offline kNN@{k} (%) on a fixed subset, the first {curve['train_images']} training and "
        f"{curve['test_images']} test images, at each 1/{curve['points']} of the budget ({CURVE_FIGURE}); each cell is "
        "the training minutes so far · the kNN. Training minutes count data loading and steps, not start-up or "
        "saving (less than the pre-train wall time above). Step 0 is the random-init backbone of the run's seed; "
        "the last column is the final backbone of the table above, on the subset (whose smaller kNN memory scores "
        "lower than the full split).",
        "",
        "| method | " + " | ".join(header) + " |",
        "|---|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [f"{p['train_minutes']['mean']:.1f} min · {pct(p['knn_top1'])}" for p in row["curve"]]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    baselines = [r for r in results["rows"] if "subset_knn_top1" in r]
    floors = [f"{BASELINE_LABELS[r['name']]} {pct(r['subset_knn_top1'])}" for r in baselines]
    if floors:
        lines += ["", "On the same subset: " + "; ".join(floors) + "."]
    return [*lines, ""]


def yes_no(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "NO")


# --------------------------------------------------------------------------- figures


def png_metadata(results: dict) -> dict[str, str]:
    """Provenance, settings, seeds and every run's config, stored in the PNG's text chunks."""
    configs = {f"{e['name']}/seed{e['seed']}": e["config"] for e in results["runs"] if "config" in e}
    meta = {
        "schema": SCHEMA,
        "provenance": results["provenance"],
        "settings": results["settings"],
        "protocol": results["protocol"],
        "configs": configs,
    }
    return {"Title": "sslzoo compare", "Description": json.dumps(meta)}


def plot_bars(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    k = results["protocol"]["knn"]["headline_k"]
    names = [r["name"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows)), 4.0))
    width = 0.4
    for offset, key, label in ((-width / 2, KNN_KEY, f"kNN@{k}"), (width / 2, LINEAR_KEY, "linear probe")):
        means = [100 * (r[key]["mean"] or 0.0) for r in rows]
        errors = [100 * (r[key]["std"] or 0.0) for r in rows]  # no bar where there is one seed
        ax.bar([i + offset for i in range(len(rows))], means, width, yerr=errors if any(errors) else None, label=label)
    ax.set_xticks(range(len(rows)), names, rotation=20)
    ax.set_ylabel("offline top-1 (%)")
    ax.set_title(f"Offline evaluation on {results['dataset']} ({results['settings']['steps']} pre-training steps)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI, metadata=png_metadata(results))
    plt.close(fig)


def plot_curves(results: dict, key: str, ylabel: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    plotted = 0
    methods = [r["name"] for r in results["rows"] if r["kind"] == "method"]
    for i, method in enumerate(methods):
        for entry in (e for e in results["runs"] if e["name"] == method and e["status"] == "ok"):
            points = [(m["step"], m[key]) for m in RunDir(entry["run_dir"]).read_metrics() if key in m]
            if points:
                first = entry["seed"] == results["settings"]["seeds"][0]
                ax.plot(*zip(*points), color=colours[i % len(colours)], label=method if first else None)
                plotted += 1
    if not plotted:
        ax.text(0.5, 0.5, f"no run logged {key}", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend()
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI, metadata=png_metadata(results))
    plt.close(fig)


def plot_knn_vs_minutes(results: dict, path: Path) -> None:
    """Each method's subset kNN against its training minutes, one line per seed, over the baselines' lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve, seeds = results["curve"], results["settings"]["seeds"]
    fig, ax = plt.subplots(figsize=(9.0, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    per_seed = f" (one line per seed: {', '.join(map(str, seeds))})" if len(seeds) > 1 else ""
    methods = [r["name"] for r in results["rows"] if r["kind"] == "method"]
    for i, method in enumerate(methods):
        entries = [e for e in results["runs"] if e["name"] == method and e.get("curve")]
        for j, entry in enumerate(entries):
            minutes, knn = zip(*((p["train_minutes"], 100 * p["knn_top1"]) for p in entry["curve"]))
            label = method + per_seed if j == 0 else None
            ax.plot(minutes, knn, marker="o", color=colours[i % len(colours)], label=label)
    for row, style in zip((r for r in results["rows"] if "subset_knn_top1" in r), ("--", ":")):
        stat = row["subset_knn_top1"]
        mean = f", mean of {stat['n']} seeds" if stat["n"] > 1 else ""
        label = f"{BASELINE_LABELS[row['name']]}{mean}: {100 * stat['mean']:.2f}"
        ax.axhline(100 * stat["mean"], color="black", linestyle=style, label=label)
    ax.set_xlabel("training minutes (data loading and steps; start-up and saving left out)")
    ax.set_ylabel(f"offline kNN@{curve['k']} top-1 (%)")
    ax.set_title(
        f"Offline kNN@{curve['k']} on a fixed {curve['train_images']}/{curve['test_images']} subset of "
        f"{results['dataset']} (the first train/test images)\n{results['settings']['steps']} steps of batch "
        f"{results['settings']['batch_size']}, a point at each 1/{curve['points']} of the budget",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: it hides no curve
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI, metadata=png_metadata(results))
    plt.close(fig)


# --------------------------------------------------------------------------- main


def compare(settings: Settings, plans: list[Plan], protocol: Protocol, train_overrides: dict, argv: list[str]) -> dict:
    from sslzoo.eval.evaluate import Evaluator

    evaluator = Evaluator(protocol)
    curve = Evaluator(curve_protocol(settings, protocol)) if settings.curve_points else None
    k = protocol.knn.headline_k
    start, started = time.perf_counter(), provenance()
    cfg = plans[0].configs[settings.seeds[0]]
    runs = [run_method(settings, plan, seed, evaluator, curve) for plan in plans for seed in settings.seeds]
    baselines = []
    if settings.baselines:
        for name in BASELINES:
            # the pixels do not depend on the seed: one evaluation; the random init is drawn per seed
            seeds = settings.seeds[:1] if name == "raw_pixels" else settings.seeds
            entries = [run_baseline(name, settings, cfg, seed, evaluator, curve) for seed in seeds]
            baselines.append(summarise(name, "baseline", entries, None, k))
            runs += entries
    start_curves_at_random_init(runs)
    rows = [summarise(p.method, "method", [e for e in runs if e["name"] == p.method], p, k) for p in plans]
    rows += baselines
    floor = next((r for r in rows if r["name"] == "random_init"), None)
    for row in rows:
        if row["kind"] == "method":
            row["beats_random_init"] = beats(row, floor)
    return {
        "schema": SCHEMA,
        "argv": argv,
        "dataset": plans[0].configs[settings.seeds[0]].data.name,
        "settings": dataclasses.asdict(settings),
        "train_overrides": train_overrides,
        "protocol": to_dict(protocol),
        "curve": None if curve is None else curve_info(settings, curve, cfg),
        "provenance": provenance_since(started),
        "total_wall_s": time.perf_counter() - start,
        "rows": rows,
        "runs": runs,
    }


def curve_info(settings: Settings, curve: Evaluator, cfg: Config) -> dict:
    """What the curves measure: the points per run, the headline k and the subset's size."""
    return {
        "points": settings.curve_points,
        "k": curve.protocol.knn.headline_k,
        "train_images": len(curve.split(cfg.data, "train")),
        "test_images": len(curve.split(cfg.data, "test")),
        "minutes": "the trainer's training time (snapshots/index.json train_s): data loading and steps, "
        "not start-up or saving",
        "step_0": "the random-init backbone of the run's seed (the random_init baseline)",
    }


def write_results(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    plot_bars(results, out / "results.png")
    plot_curves(results, "loss", "pre-training loss", "Pre-training loss", out / "loss_curves.png")
    plot_curves(
        results,
        "online_linear_top1",
        "online linear probe top-1 (training batches)",
        "Online probe during pre-training (not the offline linear probe)",
        out / "accuracy_curves.png",
    )
    if results["curve"] is not None:
        plot_knn_vs_minutes(results, out / CURVE_FIGURE)


@cli_entry
def main(argv: list[str]) -> int:
    if asks_for_help(argv):
        print(__doc__)
        print(SETTINGS_FILE.read_text())
        return 0
    settings, train_overrides, eval_overrides = parse(argv)
    protocol = load_protocol(eval_overrides)
    plans = plan_runs(settings, train_overrides)
    out = Path(settings.out)
    if not out.is_absolute():
        out = Path.cwd() / out
    print(f"comparing {', '.join(p.method for p in plans)} on seeds {settings.seeds}; results -> {out}", flush=True)
    results = compare(settings, plans, protocol, train_overrides, argv)
    write_results(results, out)
    print((out / "results.md").read_text().split("## Provenance")[0].rstrip())
    curve = f", {CURVE_FIGURE}" if results["curve"] is not None else ""
    print(f"\nwrote {out}/results.json, results.md, results.png, loss_curves.png, accuracy_curves.png{curve}")
    failed = [e for e in results["runs"] if e["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
