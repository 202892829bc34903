"""The comparison's results file (``results.json``), the one module that writes its keys: each run's
entry, each method's and baseline's row (mean ± std over seeds) and the document around them. The
report and the figures read it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import Pretrain, crops, mean_std
from compare_plan import Plan

from sslzoo.errors import UserError
from sslzoo.methods import method_class

if TYPE_CHECKING:
    from compare_plan import Settings

    from sslzoo.config import RunConfig

SCHEMA = "sslzoo-compare/1"
RESULTS_FILE = "results.json"
KNN_KEY, LINEAR_KEY = "offline_knn_top1_at_k", "offline_linear_top1"
BASELINES = ("raw_pixels", "random_init")
BASELINE_LABELS = {"raw_pixels": "raw pixels (baseline)", "random_init": "random-init backbone (baseline)"}
LOWSHOT_KINDS = ("knn_top1", "linear_top1")
FINETUNE_KEY = "offline_finetune_top1"


# --------------------------------------------------------------------------- one run's entry


def method_entry(plan: Plan, seed: int, directory: Path, result: Pretrain, reused: bool, config: dict) -> dict:
    """A method's run: its pre-training subprocess and ``config``, the run's resolved config."""
    memory, memory_kind = result.peak_memory
    return {
        "name": plan.method,
        "seed": seed,
        "recipe": plan.recipe,
        "run_dir": str(directory),
        "status": "ok" if result.ok else "failed",
        "reused": reused,
        "command": result.command,
        "config": config,
        "pretrain_wall_s": result.wall_s,
        "images_per_s": result.images_per_s,
        "peak_memory_bytes": memory,
        "peak_memory_kind": memory_kind,
        "error": result.error,
    }


def baseline_entry(name: str, seed: int, weights: Any) -> dict:
    return {"name": name, "seed": seed, "status": "ok", "weights": weights}


def strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "subject"}


def add_evaluation(entry: dict, knn: dict, linear: dict) -> None:
    """The offline kNN and linear records (as ``sslzoo.eval`` writes them, less the subject) and their cost."""
    entry.update(knn=strip(knn), linear=strip(linear), eval_s=knn["extract_s"] + knn["eval_s"] + linear["eval_s"])


def add_lowshot(entry: dict, record: dict) -> None:
    """Each low-shot setting's kNN and linear top-1, averaged over its draws."""
    entry["lowshot"] = {r["setting"]: {kind: r[kind]["mean"] for kind in LOWSHOT_KINDS} for r in record["results"]}


def add_finetune(entry: dict, record: dict, kept: bool) -> None:
    """The fine-tuned top-1, its budget and its cost, and whether the record was kept from the reused run
    (``kept``) rather than fine-tuned now; a run's whole record is its folder's eval_finetune.json."""
    keys = ("finetune_top1", "steps", "batch_size", "train_s", "eval_s")
    entry["finetune"] = {**{key: record[key] for key in keys}, "kept": kept}


def add_curve(entry: dict, points: list[dict], seconds: float) -> None:
    entry.update(curve=points, curve_eval_s=seconds)


def curve_point(step: int, train_minutes: float, knn_top1: float) -> dict:
    return {"step": step, "train_minutes": train_minutes, "knn_top1": knn_top1}


def add_subset_knn(entry: dict, knn_top1: float) -> None:
    """A baseline's kNN on the curve's subset: the floor the curves are drawn over."""
    entry["subset_knn_top1"] = knn_top1


def start_curves_at_random_init(runs: list[dict]) -> None:
    """Every method's curve starts at step 0, 0 minutes, at the random-init backbone of its seed (the baseline);
    a curve that starts there already is left as it is (a merge of runs of which some had the baseline)."""
    floors = {e["seed"]: e["subset_knn_top1"] for e in runs if e["name"] == "random_init"}
    for entry in runs:
        if "curve" in entry and entry["seed"] in floors and entry["curve"][0]["step"] != 0:
            entry["curve"].insert(0, curve_point(0, 0.0, floors[entry["seed"]]))


# --------------------------------------------------------------------------- rows


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
            pretrain_wall_s=mean_std([e["pretrain_wall_s"] for e in ok]),
            images_per_s=mean_std([e["images_per_s"] for e in ok]),
            peak_memory_bytes=mean_std([e["peak_memory_bytes"] for e in ok]),
            peak_memory_kind=ok[0]["peak_memory_kind"] if ok else None,
        )
    curves = [e["curve"] for e in ok if "curve" in e]
    if curves:
        row["curve"] = [
            curve_point(
                points[0]["step"],
                mean_std([p["train_minutes"] for p in points]),
                mean_std([p["knn_top1"] for p in points]),
            )
            for points in zip(*curves)
        ]
    if any("subset_knn_top1" in e for e in ok):
        row["subset_knn_top1"] = mean_std([e["subset_knn_top1"] for e in ok])
    if ok and all("lowshot" in e for e in ok):
        row["lowshot"] = lowshot_row(ok)
    if ok and all("finetune" in e for e in ok):
        row[FINETUNE_KEY] = mean_std([e["finetune"]["finetune_top1"] for e in ok])
        row["finetune_train_s"] = mean_std([e["finetune"]["train_s"] for e in ok])
    return row


def lowshot_row(ok: list[dict]) -> dict:
    """Each low-shot setting's kNN and linear top-1, mean ± std over the seeds."""
    settings = ok[0]["lowshot"]
    return {s: {kind: mean_std([e["lowshot"][s][kind] for e in ok]) for kind in settings[s]} for s in settings}


def beats(row: dict, floor: dict | None) -> dict[str, bool | None]:
    """Whether ``row``'s mean beats ``floor``'s (the random-init backbone) on each protocol."""
    out: dict[str, bool | None] = {}
    for key, short in ((KNN_KEY, "knn"), (LINEAR_KEY, "linear")):
        mine, theirs = row[key]["mean"], (floor or {}).get(key, {}).get("mean")
        out[short] = None if mine is None or theirs is None else mine > theirs
    return out


def rows(plans: list[Plan], runs: list[dict], baselines: list[str], headline_k: int) -> list[dict]:
    """One row per method, then one per baseline; each method says whether it beats the random init."""
    out = [summarise(p.method, "method", [e for e in runs if e["name"] == p.method], p, headline_k) for p in plans]
    out += [summarise(b, "baseline", [e for e in runs if e["name"] == b], None, headline_k) for b in baselines]
    floor = next((r for r in out if r["name"] == "random_init"), None)
    for row in out:
        if row["kind"] == "method":
            row["beats_random_init"] = beats(row, floor)
    return out


# --------------------------------------------------------------------------- the document


def curve_info(settings: Settings, headline_k: int, train_images: int, test_images: int) -> dict:
    """What the curves measure: the points per run, the headline k and the subset's size."""
    return {
        "points": settings.curve_points,
        "k": headline_k,
        "train_images": train_images,
        "test_images": test_images,
        "minutes": "the trainer's training time (snapshots/index.json train_s): data loading and steps, "
        "not start-up or saving",
        "step_0": "the random-init backbone of the run's seed (the random_init baseline)",
    }


def document(
    settings: Settings,
    cfg: RunConfig,
    protocol: dict,
    curve: dict | None,
    rows: list[dict],
    runs: list[dict],
    *,
    argv: list[str],
    train_overrides: dict[str, Any],
    provenance: dict,
    total_wall_s: float,
    merged_from: list[dict] | None = None,
) -> dict:
    """The whole results file; ``merged_from``, for a merge of several (``merge_source``), says whence each run."""
    return {
        **({"merged_from": merged_from} if merged_from is not None else {}),
        "schema": SCHEMA,
        "argv": argv,
        "dataset": cfg.data.name,
        "settings": asdict(settings),
        "train_overrides": train_overrides,
        "protocol": protocol,
        "curve": curve,
        "provenance": provenance,
        "total_wall_s": total_wall_s,
        "rows": rows,
        "runs": runs,
    }


def merge_source(folder: str, document: dict, runs: list[str]) -> dict:
    """One results file a merge read: its command, provenance and time, and the runs taken from it."""
    keys = ("argv", "train_overrides", "provenance", "total_wall_s")
    return {"folder": folder, **{key: document[key] for key in keys}, "runs": runs}


def read(folder: Path) -> dict:
    """A results file written by ``write``; a folder without one, or of another schema, is one line of error."""
    path = folder / RESULTS_FILE
    if not path.is_file():
        raise UserError(f"{folder} holds no {RESULTS_FILE}: give the out= folder of a finished compare.py")
    document = json.loads(path.read_text())
    if document.get("schema") != SCHEMA:
        raise UserError(f"{path} is of schema {document.get('schema')!r}, not {SCHEMA!r}: run that comparison again")
    return document


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
