"""Training dynamics from ``metrics.jsonl``: one panel per logged quantity, one line per run.

The collapse diagnostics (logged by the loop for every method, see
``sslzoo.diagnostics``) and, for DINO and iBOT, the teacher entropy and the
student-teacher KL: H(P_t, P_s) = h(P_t) + KL(P_t || P_s), and KL -> 0 means
the student matches a constant teacher, i.e. collapse (DINO §5.3, Figure 7).
"""

from __future__ import annotations

import math

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from sslzoo.errors import UserError
from sslzoo.viz.runs import Run

TITLES = {
    "loss": "training loss",
    "lr": "learning rate",
    "momentum": "EMA momentum m (teacher/target)",
    "teacher_temp": "teacher temperature $\\tau_t$",
    "embed_std": "std of L2-normalised embeddings\n(0 = collapsed to a point)",
    "embed_rank": "effective rank of embeddings\n(1 = one direction)",
    "teacher_entropy": "teacher entropy $h(P_t)$",
    "kl": "$KL(P_t \\,\\|\\, P_s)$ (0 = collapse)",
}
DEFAULT_KEYS = list(TITLES)
PANELS_PER_ROW = 4


def series(run: Run, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` in the run's finite records."""
    points = [
        (r["step"], float(r[key]))
        for r in run.metrics
        if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
    ]
    return [s for s, _ in points], [v for _, v in points]


def numeric_keys(run: Run) -> list[str]:
    skip = {"step", "epoch", "skipped"}
    return sorted({k for r in run.metrics for k, v in r.items() if k not in skip and isinstance(v, (int, float))})


def choose_keys(runs: list[Run], keys: list[str] | None) -> list[str]:
    """The requested keys (``all``: every numeric key), or the default keys any run logged."""
    logged = sorted({k for run in runs for k in numeric_keys(run)})
    if keys == ["all"]:
        return logged
    if keys is None:
        chosen = [k for k in DEFAULT_KEYS if k in logged]
        return chosen or logged
    missing = [k for k in keys if k not in logged]
    if missing:
        raise UserError(f"no run logged {', '.join(missing)}; logged keys: {', '.join(logged)}")
    return keys


def draw(ax: Axes, key: str, runs: list[Run], labels: list[str]) -> None:
    """One panel: ``key`` against the step for every run that logged it."""
    colours = colormaps["tab10"].colors
    for index, (run, label) in enumerate(zip(runs, labels)):
        steps, values = series(run, key)
        if steps:
            ax.plot(steps, values, color=colours[index % len(colours)], label=label, lw=1.5)
    if key == "teacher_entropy":
        # the entropy of the uniform distribution over the K prototypes: collapse to uniform reaches it
        for k in sorted({run.config["method"]["out_dim"] for run in runs if "out_dim" in run.config["method"]}):
            ax.axhline(
                math.log(k), color="gray", ls="--", lw=1, label=f"uniform over K = {k}: log K = {math.log(k):.2f}"
            )
            ax.set_ylim(top=1.08 * math.log(k))
    if key in ("teacher_entropy", "kl", "embed_std"):
        ax.axhline(0, color="gray", lw=0.5)
    ax.set_title(TITLES.get(key, key), fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def dynamics_figure(runs: list[Run], labels: list[str], keys: list[str] | None) -> Figure:
    keys = choose_keys(runs, keys)
    cols = min(PANELS_PER_ROW, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(3.4 * cols, 2.7 * rows + 0.5), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax, key in zip(axes, keys):
        draw(ax, key, runs, labels)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    legend(fig, axes)
    return fig


def legend(fig: Figure, axes: list[Axes]) -> None:
    """One legend below the panels, with each run once."""
    entries = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(name, handle)
    fig.legend(
        list(entries.values()),
        list(entries),
        loc="outside lower center",
        ncols=min(len(entries), 3),
        fontsize=8,
        frameon=False,
    )
