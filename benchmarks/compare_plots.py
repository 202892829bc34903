"""The comparison's figures, drawn from the results file (and each run's metrics log), each PNG carrying
the provenance, settings and every run's config in its text chunks."""

from __future__ import annotations

import json
from pathlib import Path

from compare_results import BASELINE_LABELS, KNN_KEY, LINEAR_KEY, SCHEMA

from sslzoo.rundir import RunDir

PLOT_DPI = 120
BARS_FIGURE = "results.png"
LOSS_FIGURE = "loss_curves.png"
ACCURACY_FIGURE = "accuracy_curves.png"
CURVE_FIGURE = "knn_vs_minutes.png"


def write_figures(results: dict, out: Path) -> list[str]:
    """Every figure into ``out``; returns their file names."""
    plot_bars(results, out / BARS_FIGURE)
    plot_curves(results, "loss", "pre-training loss", "Pre-training loss", out / LOSS_FIGURE)
    plot_curves(
        results,
        "online_linear_top1",
        "online linear probe top-1 (training batches)",
        "Online probe during pre-training (not the offline linear probe)",
        out / ACCURACY_FIGURE,
    )
    names = [BARS_FIGURE, LOSS_FIGURE, ACCURACY_FIGURE]
    if results["curve"] is not None:
        plot_knn_vs_minutes(results, out / CURVE_FIGURE)
        names.append(CURVE_FIGURE)
    return names


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


def new_figure(width: float, height: float):
    """A figure and its axes, drawn without a display."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="tight")
    return fig, fig.subplots()


def save(fig, results: dict, path: Path) -> None:
    fig.savefig(path, dpi=PLOT_DPI, metadata=png_metadata(results))


def method_colours(results: dict) -> list[tuple[str, str]]:
    """Each method's name and line colour, the same in every figure."""
    import matplotlib

    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = [r["name"] for r in results["rows"] if r["kind"] == "method"]
    return [(method, cycle[i % len(cycle)]) for i, method in enumerate(methods)]


def plot_bars(results: dict, path: Path) -> None:
    rows = results["rows"]
    k = results["protocol"]["knn"]["headline_k"]
    fig, ax = new_figure(max(6.0, 1.3 * len(rows)), 4.0)
    width = 0.4
    for offset, key, label in ((-width / 2, KNN_KEY, f"kNN@{k}"), (width / 2, LINEAR_KEY, "linear probe")):
        means = [100 * (r[key]["mean"] or 0.0) for r in rows]
        errors = [100 * (r[key]["std"] or 0.0) for r in rows]  # no bar where there is one seed
        ax.bar([i + offset for i in range(len(rows))], means, width, yerr=errors if any(errors) else None, label=label)
    ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=20)
    ax.set_ylabel("offline top-1 (%)")
    ax.set_title(f"Offline evaluation on {results['dataset']} ({results['settings']['steps']} pre-training steps)")
    ax.legend()
    save(fig, results, path)


def plot_curves(results: dict, key: str, ylabel: str, title: str, path: Path) -> None:
    """``key`` from every run's metrics log against the step, one colour per method."""
    fig, ax = new_figure(7.0, 4.0)
    plotted = 0
    for method, colour in method_colours(results):
        for entry in (e for e in results["runs"] if e["name"] == method and e["status"] == "ok"):
            points = [(m["step"], m[key]) for m in RunDir(entry["run_dir"]).read_metrics() if key in m]
            if points:
                first = entry["seed"] == results["settings"]["seeds"][0]
                ax.plot(*zip(*points), color=colour, label=method if first else None)
                plotted += 1
    if not plotted:
        ax.text(0.5, 0.5, f"no run logged {key}", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend()
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    save(fig, results, path)


def plot_knn_vs_minutes(results: dict, path: Path) -> None:
    """Each method's subset kNN against its training minutes, one line per seed, over the baselines' lines."""
    curve, seeds = results["curve"], results["settings"]["seeds"]
    fig, ax = new_figure(9.0, 4.5)
    per_seed = f" (one line per seed: {', '.join(map(str, seeds))})" if len(seeds) > 1 else ""
    for method, colour in method_colours(results):
        entries = [e for e in results["runs"] if e["name"] == method and e.get("curve")]
        for j, entry in enumerate(entries):
            minutes, knn = zip(*((p["train_minutes"], 100 * p["knn_top1"]) for p in entry["curve"]))
            ax.plot(minutes, knn, marker="o", color=colour, label=method + per_seed if j == 0 else None)
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
    save(fig, results, path)
