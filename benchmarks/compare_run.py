"""Running the comparison: each plan's runs pre-trained (or reused) in subprocesses, every backbone and
baseline evaluated offline, and each run's kNN curve from its snapshots."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

import compare_results as results
import yaml
from _common import pretrain_or_reuse
from compare_plan import Plan, Settings, run_dir

from sslzoo.eval.protocol import Protocol, to_dict
from sslzoo.provenance import provenance, provenance_since
from sslzoo.rundir import RunDir

if TYPE_CHECKING:  # for the annotations only: this module imports sslzoo.eval.evaluate where it uses it
    from sslzoo.config import RunConfig
    from sslzoo.eval.evaluate import Evaluator, Features, Subject


# --------------------------------------------------------------------------- evaluation


def evaluate(evaluator: Evaluator, subject: Subject, seed: int, entry: dict) -> tuple[dict, dict, Features]:
    """kNN and linear probe into ``entry`` and the subject's run folder; (kNN record, linear record, the
    features they were computed from)."""
    from sslzoo.eval.evaluate import write_record

    features = evaluator.features(subject)
    knn = evaluator.knn(subject, features)
    linear = evaluator.linear(subject, features, seed=evaluator.protocol.seed + seed)
    results.add_evaluation(entry, knn, linear)
    if subject.out_dir is not None:
        folder = RunDir(subject.out_dir)
        write_record(folder.eval_record("knn"), knn, subject, evaluator.protocol)
        write_record(folder.eval_record("linear"), linear, subject, evaluator.protocol)
    return knn, linear, features


def evaluate_lowshot(evaluator: Evaluator, subject: Subject, features: Features, entry: dict) -> None:
    """The optional low-shot columns (``lowshot=true``): ``python -m sslzoo.eval lowshot`` on the features
    already computed."""
    from sslzoo.eval.evaluate import write_record
    from sslzoo.eval.lowshot import lowshot

    record = lowshot(evaluator, subject, features)
    if subject.out_dir is not None:
        write_record(RunDir(subject.out_dir).eval_record("lowshot"), record, subject, evaluator.protocol)
    results.add_lowshot(entry, record)


def evaluate_finetune(evaluator: Evaluator, subject: Subject, entry: dict, reuse: bool) -> None:
    """The optional fine-tuning column (``finetune=true``): ``python -m sslzoo.eval finetune`` on a copy of
    the backbone. With ``reuse`` (a reused run), the run's own record of the same protocol is kept: fine-tuning
    costs minutes per backbone, where the other evaluations take seconds from the features."""
    from sslzoo.eval.evaluate import stored_record, write_record
    from sslzoo.eval.finetune import finetune

    folder = RunDir(subject.out_dir) if subject.out_dir is not None else None
    record = None
    if reuse and folder is not None:
        record = stored_record(folder.eval_record("finetune"), subject, evaluator.protocol, newer_than=folder.backbone)
    kept = record is not None
    if record is None:
        record = finetune(evaluator, subject)
        if folder is not None:
            write_record(folder.eval_record("finetune"), record, subject, evaluator.protocol)
    results.add_finetune(entry, record, kept)
    how = "kept from the reused run's eval_finetune.json" if kept else "fine-tuned"
    print(f"[{entry['name']} seed {entry['seed']}] {how}: top-1 {100 * record['finetune_top1']:.2f}%", flush=True)


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
        points.append(results.curve_point(entry["step"], entry["train_s"] / 60, knn))
    return points


def accuracies(knn: dict, linear: dict) -> str:
    return (
        f"offline kNN@{knn['headline']['k']} {100 * knn['headline']['knn_top1']:.2f}%, "
        f"offline linear {100 * linear['linear_top1']:.2f}%"
    )


# --------------------------------------------------------------------------- runs


def run_method(settings: Settings, plan: Plan, seed: int, evaluator: Evaluator, curve: Evaluator | None) -> dict:
    """Pre-train (or reuse) one method and seed, evaluate it offline and, with ``curve``, each of its snapshots."""
    from sslzoo.eval.evaluate import from_run

    directory = run_dir(settings, plan.method, seed)
    label = f"{plan.method} seed {seed}"
    result, reused = pretrain_or_reuse(label, plan.recipe, plan.overrides[seed], directory, settings.reuse)
    config_file = RunDir(directory).config
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else plan.configs[seed].raw
    entry = results.method_entry(plan, seed, directory, result, reused, config)
    if not result.ok:
        return entry
    final = from_run(directory)
    knn, linear, features = evaluate(evaluator, final, seed, entry)
    if settings.lowshot:
        evaluate_lowshot(evaluator, final, features, entry)
    if settings.finetune:
        evaluate_finetune(evaluator, final, entry, reuse=reused)
    print(
        f"[{label}] pre-train {result.wall_s / 60:.1f} min; {accuracies(knn, linear)} "
        f"(evaluation {entry['eval_s'] / 60:.1f} min)",
        flush=True,
    )
    if curve is not None:
        start = time.perf_counter()
        points = knn_curve(settings, directory, curve, final, features)
        results.add_curve(entry, points, time.perf_counter() - start)
        shown = ", ".join(f"{p['train_minutes']:.1f} min {100 * p['knn_top1']:.2f}%" for p in points)
        print(f"[{label}] subset kNN curve: {shown}", flush=True)
    return entry


def run_baseline(
    name: str, settings: Settings, cfg: RunConfig, seed: int, evaluator: Evaluator, curve: Evaluator | None
) -> dict:
    """Evaluate a baseline offline and, with ``curve``, on the curve's subset."""
    from sslzoo.eval.evaluate import random_init, raw_pixels

    subject = raw_pixels(cfg.data) if name == "raw_pixels" else random_init(settings.backbone, cfg.data, seed)
    entry = results.baseline_entry(name, seed, subject.weights)
    knn, linear, features = evaluate(evaluator, subject, seed, entry)
    print(f"[{name} seed {seed}] {accuracies(knn, linear)}", flush=True)
    if curve is not None:
        results.add_subset_knn(entry, subset_knn(curve, subject, features))
    if settings.lowshot:
        evaluate_lowshot(evaluator, subject, features, entry)
    if settings.finetune and name == "random_init":  # the pixels have no backbone to fine-tune
        evaluate_finetune(evaluator, subject, entry, reuse=False)
    return entry


def compare(settings: Settings, plans: list[Plan], protocol: Protocol, train_overrides: dict, argv: list[str]) -> dict:
    """Every plan's runs and the baselines, pre-trained and evaluated: the results file's content."""
    from sslzoo.eval.evaluate import Evaluator

    evaluator = Evaluator(protocol)
    curve = Evaluator(curve_protocol(settings, protocol)) if settings.curve_points else None
    start, started = time.perf_counter(), provenance()
    cfg = plans[0].configs[settings.seeds[0]]
    runs = [run_method(settings, plan, seed, evaluator, curve) for plan in plans for seed in settings.seeds]
    baselines = results.BASELINES if settings.baselines else ()
    for name in baselines:
        # the pixels do not depend on the seed: one evaluation; the random init is drawn per seed
        seeds = settings.seeds[:1] if name == "raw_pixels" else settings.seeds
        runs += [run_baseline(name, settings, cfg, seed, evaluator, curve) for seed in seeds]
    results.start_curves_at_random_init(runs)
    k = protocol.knn.headline_k
    curve_info = None
    if curve is not None:
        sizes = (len(curve.split(cfg.data, split)) for split in ("train", "test"))
        curve_info = results.curve_info(settings, curve.protocol.knn.headline_k, *sizes)
    return results.document(
        settings,
        cfg,
        to_dict(protocol),
        curve_info,
        results.rows(plans, runs, list(baselines), k),
        runs,
        argv=argv,
        train_overrides=train_overrides,
        provenance=provenance_since(started),
        total_wall_s=time.perf_counter() - start,
    )
