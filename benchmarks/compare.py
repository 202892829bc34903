"""The side-by-side benchmark: ``python benchmarks/compare.py [key=value ...]``.

Pre-trains every method (by default all registered ones, each from its
``<method>_fmnist`` recipe) under one identical budget (optimizer steps, batch
size, backbone, crops where the method allows), each in its own subprocess;
evaluates each frozen backbone offline (kNN and linear probe) next to two
baselines (raw pixels, the random-init backbone); and writes to the results
folder ``results.json``, ``results.md``, ``results.png`` (bars), and
``loss_curves.png`` / ``accuracy_curves.png``. Every file records the git
commit, each run's full config, the seeds, the torch version and the hardware.
Defaults and every option: ``benchmarks/compare.yaml``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Pretrain, finished_run, mean_std, pretrain, read_metrics  # noqa: E402

from sslzoo.config import Config, build, dotted_keys, load_config, parse_overrides, read_yaml, set_dotted  # noqa: E402
from sslzoo.errors import UserError, cli_entry  # noqa: E402
from sslzoo.eval.protocol import Protocol, load_protocol, to_dict  # noqa: E402
from sslzoo.methods import METHODS, method_class  # noqa: E402
from sslzoo.provenance import provenance, provenance_since  # noqa: E402

SETTINGS_FILE = Path(__file__).resolve().parent / "compare.yaml"
SCHEMA = "sslzoo-compare/1"
EVAL_PREFIX = "eval."
KNN_KEY, LINEAR_KEY = "offline_knn_top1_at_k", "offline_linear_top1"
BASELINES = ("raw_pixels", "random_init")
PLOT_DPI = 120
BUDGET_KEYS = {  # recipe keys that the budget settings own
    "seed": "seeds",
    "trainer.max_steps": "steps",
    "data.batch_size": "batch_size",
    "model.backbone": "backbone",
    "augment.local_crops": "local_crops",
    "trainer.online_probe": "online_probe",
}


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
    baselines: bool
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
    return settings, train_overrides, eval_overrides


def run_dir(settings: Settings, method: str, seed: int) -> Path:
    return Path(settings.runs).absolute() / method / f"seed{seed}"


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


def evaluate_run(evaluator, subject, seed: int) -> tuple[dict, dict]:
    from sslzoo.eval.evaluate import KNN_FILE, LINEAR_FILE, write_record

    features = evaluator.features(subject)
    knn = evaluator.knn(subject, features)
    linear = evaluator.linear(subject, features, seed=evaluator.protocol.seed + seed)
    if subject.out_dir is not None:
        write_record(subject.out_dir / KNN_FILE, knn, subject, evaluator.protocol)
        write_record(subject.out_dir / LINEAR_FILE, linear, subject, evaluator.protocol)
    return knn, linear


def strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "subject"}


def run_method(settings: Settings, plan: Plan, seed: int, evaluator) -> dict:
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
    config_file = directory / "config.yaml"
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
    knn, linear = evaluate_run(evaluator, from_run(directory), seed)
    entry.update(knn=strip(knn), linear=strip(linear), eval_s=knn["extract_s"] + knn["eval_s"] + linear["eval_s"])
    print(
        f"[{plan.method} seed {seed}] pre-train {result.wall_s / 60:.1f} min; offline kNN@{knn['headline']['k']} "
        f"{100 * knn['headline']['knn_top1']:.2f}%, offline linear {100 * linear['linear_top1']:.2f}% "
        f"(evaluation {entry['eval_s'] / 60:.1f} min)",
        flush=True,
    )
    return entry


def run_baseline(name: str, settings: Settings, cfg: Config, seed: int, evaluator) -> dict:
    from sslzoo.eval.evaluate import random_init, raw_pixels

    subject = raw_pixels(cfg.data) if name == "raw_pixels" else random_init(settings.backbone, cfg.data, seed)
    knn, linear = evaluate_run(evaluator, subject, seed)
    print(
        f"[{name} seed {seed}] offline kNN@{knn['headline']['k']} {100 * knn['headline']['knn_top1']:.2f}%, "
        f"offline linear {100 * linear['linear_top1']:.2f}%",
        flush=True,
    )
    return {
        "name": name,
        "seed": seed,
        "status": "ok",
        "weights": subject.weights,
        "knn": strip(knn),
        "linear": strip(linear),
        "eval_s": knn["extract_s"] + knn["eval_s"] + linear["eval_s"],
    }


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
            label = {"raw_pixels": "raw pixels (baseline)", "random_init": "random-init backbone (baseline)"}
            cells = [label[row["name"]], "—", "—", "—", pct(row[KNN_KEY]), pct(row[LINEAR_KEY]), "—", "—", "—"]
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
            points = [(m["step"], m[key]) for m in read_metrics(Path(entry["run_dir"])) if key in m]
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


# --------------------------------------------------------------------------- main


def compare(settings: Settings, plans: list[Plan], protocol: Protocol, train_overrides: dict, argv: list[str]) -> dict:
    from sslzoo.eval.evaluate import Evaluator

    evaluator = Evaluator(protocol)
    k = protocol.knn.headline_k
    start, started = time.perf_counter(), provenance()
    runs = [run_method(settings, plan, seed, evaluator) for plan in plans for seed in settings.seeds]
    rows = [summarise(p.method, "method", [e for e in runs if e["name"] == p.method], p, k) for p in plans]
    if settings.baselines:
        cfg = plans[0].configs[settings.seeds[0]]
        for name in BASELINES:
            # the pixels do not depend on the seed: one evaluation; the random init is drawn per seed
            seeds = settings.seeds[:1] if name == "raw_pixels" else settings.seeds
            entries = [run_baseline(name, settings, cfg, seed, evaluator) for seed in seeds]
            runs += entries
            rows.append(summarise(name, "baseline", entries, None, k))
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
        "provenance": provenance_since(started),
        "total_wall_s": time.perf_counter() - start,
        "rows": rows,
        "runs": runs,
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


@cli_entry
def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help", "help"):
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
    print(f"\nwrote {out}/results.json, results.md, results.png, loss_curves.png, accuracy_curves.png")
    failed = [e for e in results["runs"] if e["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
