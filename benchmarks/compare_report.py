"""The comparison's report: ``results.md``, written from the results file alone."""

from __future__ import annotations

from fractions import Fraction

import yaml
from compare_plots import CURVE_FIGURE
from compare_results import BASELINE_LABELS, FINETUNE_KEY, KNN_KEY, LINEAR_KEY, LOWSHOT_KINDS


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
        cells = [pct(row["lowshot"][s][kind]) for s in settings for kind in LOWSHOT_KINDS]
        lines.append(f"| {label(row)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def mean_at(row: dict, *keys: str) -> float | None:
    """The mean of the statistic at ``row[keys[0]][keys[1]]...``, or None where the row has none."""
    for key in keys:
        row = row.get(key) or {}
    return row.get("mean")


def ranks(rows: list[dict], *keys: str) -> dict[str, int]:
    """Each method's rank (1: best) by the mean at ``keys``; methods without one are left out."""
    scored = [(mean_at(r, *keys), r["name"]) for r in rows if r["kind"] == "method"]
    present = sorted(((m, name) for m, name in scored if m is not None), key=lambda pair: -pair[0])
    return {name: i for i, (_, name) in enumerate(present, start=1)}


def finetune_markdown(results: dict) -> list[str]:
    """The fine-tuning column as a third table (only with ``finetune=true``), beside each method's rank under the
    linear probe, the first low-shot setting's linear probe (with ``lowshot=true``) and fine-tuning."""
    rows = [r for r in results["rows"] if FINETUNE_KEY in r]
    runs = [e["finetune"] for e in results["runs"] if "finetune" in e]
    if not rows or not runs:
        return []
    orders = {"linear probe": ranks(results["rows"], LINEAR_KEY)}
    low = next((r["lowshot"] for r in results["rows"] if "lowshot" in r), None)
    if low:
        first = next(iter(low))
        orders[f"{first} linear"] = ranks(results["rows"], "lowshot", first, "linear_top1")
    orders["fine-tuning"] = ranks(results["rows"], FINETUNE_KEY)
    lines = [
        f"Fine-tuning (offline, `python -m sslzoo.eval finetune`: the whole backbone and a linear classifier trained "
        f"with the labels for {runs[0]['steps']} steps of {runs[0]['batch_size']}, then top-1 (%) on the test split; "
        "`finetune` in the evaluation protocol below), and each method's rank (1: best) under each protocol. The "
        "random-init row is supervised training from scratch under the same budget; the pixels have no backbone.",
        "",
        "| method | fine-tuned top-1 | fine-tuning (min) | " + " | ".join(f"rank: {o}" for o in orders) + " |",
        "|---|---|---|" + "---|" * len(orders),
    ]
    for row in results["rows"]:
        tuned = [pct(row[FINETUNE_KEY]), number(row["finetune_train_s"], 60, 1)] if FINETUNE_KEY in row else ["—", "—"]
        places = [str(order.get(row["name"], "—")) if row["kind"] == "method" else "—" for order in orders.values()]
        lines.append(f"| {label(row)} | " + " | ".join([*tuned, *places]) + " |")
    kept = sorted({f"{e['name']} seed {e['seed']}" for e in results["runs"] if e.get("finetune", {}).get("kept")})
    if kept:
        note = "Kept from the reused runs' own eval_finetune.json (same backbone and protocol): "
        lines += ["", note + ", ".join(kept) + "."]
    return [*lines, ""]


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
    """The whole report: the main table, the optional low-shot and curve tables, the verdicts, then
    provenance and every run's config."""
    lines = [*main_table(results), *lowshot_markdown(results), *finetune_markdown(results)]
    lines += [*curve_markdown(results), *verdicts(results)]
    lines += [*provenance_markdown(results), "## Configs", ""]
    for entry in results["runs"]:
        if "config" in entry:
            lines += details(f"{entry['name']} seed {entry['seed']} ({entry['recipe']})", entry["config"])
    lines += details("evaluation protocol", results["protocol"])
    return "\n".join(lines)


def label(row: dict) -> str:
    return BASELINE_LABELS[row["name"]] if row["kind"] == "baseline" else row["name"]


def main_table(results: dict) -> list[str]:
    s, protocol = results["settings"], results["protocol"]
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
        "| method | family | target policy (the paper's; each run's schedules are in its config below) | crops "
        f"| kNN@{k} (offline) | linear top-1 (offline) | pre-train wall time (min) | images/s "
        f"| peak memory (GB, {'/'.join(sorted(memory_kinds)) or 'n/a'}) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        accuracy = [pct(row[KNN_KEY]), pct(row[LINEAR_KEY])]
        if row["kind"] == "baseline":
            cells = [label(row), "—", "—", "—", *accuracy, "—", "—", "—"]
        else:
            cells = [row["name"], row["family"], row["target"], row["crops"], *accuracy]
            cells += [
                number(row["pretrain_wall_s"], 60, 1),
                number(row["images_per_s"], 1, 0),
                number(row["peak_memory_bytes"], 1e9, 2),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def verdicts(results: dict) -> list[str]:
    """Whether each method beats the random-init backbone, and the runs that failed."""
    lines = []
    if any(r["name"] == "random_init" for r in results["rows"]):
        beats = [
            f"{r['name']}: kNN {yes_no(r['beats_random_init']['knn'])}, "
            f"linear {yes_no(r['beats_random_init']['linear'])}"
            for r in results["rows"]
            if r["kind"] == "method"
        ]
        lines += ["Beats the random-init backbone: " + "; ".join(beats) + ".", ""]
    failed = [f"{e['name']} seed {e['seed']}: {e['error']}" for e in results["runs"] if e["status"] != "ok"]
    if failed:
        lines += ["**Failed runs**: " + "; ".join(failed), ""]
    return lines


def provenance_markdown(results: dict) -> list[str]:
    prov, seeds = results["provenance"], results["settings"]["seeds"]
    hw = prov["hardware"]
    return [
        "## Provenance",
        "",
        f"- git commit: `{prov['git_commit']}`" + (" (uncommitted changes)" if prov["git_dirty"] else ""),
        f"- torch {prov['torch_version']}, python {prov['software']['python']}, {prov['software']['platform']}",
        f"- hardware: {hw['cpu']}, {hw['cpu_cores_usable']} usable cores, {hw['torch_threads']} torch threads, "
        f"GPUs: {', '.join(hw['gpus']) or 'none'}",
        f"- created: {prov['created']}; seeds: {', '.join(map(str, seeds))}",
        f"- command: `python benchmarks/compare.py {' '.join(results['argv'])}`",
        *merged_markdown(results),
        "",
    ]


def merged_markdown(results: dict) -> list[str]:
    """For a merge of several results files (``compare_merge.py``): each one's command, commit and runs."""
    lines = []
    sources = results.get("merged_from", [])
    machines = sorted({source["provenance"]["hardware"]["cpu"] for source in sources})
    if len(machines) > 1:
        lines.append(
            f"- **the merged runs ran on different CPUs** ({', '.join(machines)}): their minutes and images/s "
            "are each machine's, not comparable across sources"
        )
    for source in sources:
        prov = source["provenance"]
        dirty = " (uncommitted changes)" if prov["git_dirty"] else ""
        taken = ", ".join(source["runs"]) or "none (later folders replaced them)"
        lines.append(
            f"- merged from `{source['folder']}`: commit `{prov['git_commit']}`{dirty}, created {prov['created']}, "
            f"command `python benchmarks/compare.py {' '.join(source['argv'])}`, "
            f"{source['total_wall_s'] / 60:.0f} min; runs: {taken}"
        )
    return lines


def details(summary: str, data: dict) -> list[str]:
    """``data`` as YAML in a folded block."""
    text = yaml.safe_dump(data, sort_keys=False).rstrip()
    return [f"<details><summary>{summary}</summary>", "", "```yaml", text, "```", "</details>", ""]


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
