"""Several comparisons' results merged into one (``python benchmarks/compare.py merge=DIR,DIR``): e.g. the
seeds of one budget run on different days, so that three seeds need not train again when one exists.

The merged file holds what one comparison over all their seeds would: every method's runs (a method's
run of the same seed in a later folder replaces an earlier one's), the random-init backbone of each seed,
the raw pixels evaluated once (at the first seed, as ``compare.py`` does). Its rows are recomputed from
those runs; a curve without its step 0 (from a folder run with ``baselines=false``) starts at the
random-init backbone of its seed where another folder evaluated it. Folders whose budget, dataset or
evaluation protocol differ are refused, and so is a method whose runs differ in config other than the
seed and the run folder: the seeds must be of one recipe. The minutes are each run's own: runs made on
different machines are merged as they are."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import compare_results as results
from compare_plan import SETTINGS_FILE, Plan, Settings

from sslzoo.config import read_yaml, with_added_keys
from sslzoo.errors import UserError
from sslzoo.provenance import provenance
from sslzoo.recipes import validate_saved

SAME_SETTINGS = (  # the budget and the curve: what makes runs comparable
    "steps",
    "batch_size",
    "backbone",
    "local_crops",
    "online_probe",
    "curve_points",
    "curve_train_limit",
    "curve_test_limit",
)
PER_RUN_KEYS = {"seed", "trainer.out_dir"}  # the only config keys in which a method's seeds may differ


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_comparable(documents: dict[str, dict]) -> None:
    """Every folder of one dataset, protocol and budget; else one line naming the first difference."""
    (first, reference), *others = documents.items()
    for folder, document in others:
        pairs = [("dataset", reference["dataset"], document["dataset"])]
        pairs += [("evaluation protocol", reference["protocol"], document["protocol"])]
        pairs += [(key, reference["settings"].get(key), document["settings"].get(key)) for key in SAME_SETTINGS]
        for what, ours, theirs in pairs:
            if isinstance(ours, dict) and isinstance(theirs, dict):
                ours, theirs = flatten(ours), flatten(theirs)
                keys = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
                ours, theirs = ({k: side.get(k) for k in keys} for side in (ours, theirs))
            if ours != theirs:
                raise UserError(f"cannot merge {first} and {folder}: their {what} differs ({ours} against {theirs})")


def collect_runs(documents: dict[str, dict]) -> tuple[list[dict], dict[tuple[str, int], str]]:
    """Every run once per (name, seed), a later folder's replacing an earlier one's, and the folder of each."""
    runs: dict[tuple[str, int], dict] = {}
    source: dict[tuple[str, int], str] = {}
    for folder, document in documents.items():
        for entry in document["runs"]:
            key = (entry["name"], entry["seed"])
            if key in runs:
                print(f"{entry['name']} seed {entry['seed']}: {folder} replaces {source[key]}", flush=True)
            runs[key], source[key] = entry, folder
    pixels = sorted(seed for name, seed in runs if name == "raw_pixels")
    for seed in pixels[1:]:  # the pixels do not depend on the seed: one evaluation, as compare.py
        del runs["raw_pixels", seed], source["raw_pixels", seed]
    return list(runs.values()), source


def plans_of(runs: list[dict], source: dict[tuple[str, int], str]) -> list[Plan]:
    """Each method's plan from its runs' saved configs, which must differ in nothing but the seed and run folder."""
    plans: dict[str, Plan] = {}
    reference: dict[str, tuple[dict, int]] = {}
    for entry in runs:
        if "config" not in entry:
            continue
        name, seed = entry["name"], entry["seed"]
        if name not in plans:
            plans[name], reference[name] = Plan(name, entry["recipe"], {}, {}), (entry["config"], seed)
        tree, first_seed = reference[name]
        # a seed saved before a key was added counts at the value it trained with (sslzoo.config.ADDED)
        first, config = (
            {k: v for k, v in flatten(with_added_keys(saved, other)).items() if k not in PER_RUN_KEYS}
            for saved, other in ((tree, entry["config"]), (entry["config"], tree))
        )
        differ = sorted(k for k in first.keys() | config.keys() if first.get(k) != config.get(k))
        if differ:
            raise UserError(
                f"cannot merge {name}'s seeds {first_seed} ({source[name, first_seed]}) and {seed} "
                f"({source[name, seed]}): their configs differ in {', '.join(differ)}"
            )
        # the saved config.yaml, less the callbacks' settings that it records beside the run's config
        plans[name].configs[seed] = validate_saved({k: v for k, v in entry["config"].items() if k != "callbacks"})
    return list(plans.values())


def merge(folders: list[Path], out: Path, argv: list[str]) -> dict:
    """The results files in ``folders`` as one results file's content, in order (a later run replaces an earlier)."""
    if len(folders) < 2:
        raise UserError(f"merge= needs two results folders or more, got {len(folders)}")
    documents = {str(folder): results.read(folder) for folder in folders}
    check_comparable(documents)
    runs, source = collect_runs(documents)
    plans = plans_of(runs, source)
    if not plans:
        raise UserError(f"{', '.join(documents)} hold no method's run: nothing to merge")
    results.start_curves_at_random_init(runs)  # runs of a folder without the baselines, from another's
    order = [p.method for p in plans] + list(results.BASELINES)
    runs.sort(key=lambda e: (order.index(e["name"]), e["seed"]))
    first = next(iter(documents.values()))
    shared = {  # the recipe overrides every folder passed (each run's config holds its own)
        key: value
        for key, value in first["train_overrides"].items()
        if all(d["train_overrides"].get(key) == value for d in documents.values())
    }
    seeds = sorted({e["seed"] for e in runs})
    merged = {"methods": [p.method for p in plans], "recipes": None, "seeds": seeds, "out": str(out)}
    defaults = read_yaml(SETTINGS_FILE)  # for a key that an older results file lacks
    saved = {f.name: first["settings"].get(f.name, defaults[f.name]) for f in dataclasses.fields(Settings)}
    settings = Settings(**{**saved, **merged, "merge": [str(f) for f in folders]})
    baselines = [name for name in results.BASELINES if any(e["name"] == name for e in runs)]
    headline_k = first["protocol"]["knn"]["headline_k"]
    taken = {
        folder: [f"{name} seed {seed}" for (name, seed), at in source.items() if at == folder] for folder in documents
    }
    return results.document(
        settings,
        next(iter(plans[0].configs.values())),
        first["protocol"],
        first["curve"],
        results.rows(plans, runs, baselines, headline_k),
        runs,
        argv=argv,
        train_overrides=shared,
        provenance=provenance(),
        total_wall_s=sum(d["total_wall_s"] for d in documents.values()),
        merged_from=[results.merge_source(folder, d, taken[folder]) for folder, d in documents.items()],
    )
