"""The teaching lab's ablations: ``python benchmarks/ablations.py [key=value ...]``.

Puts five groups of the papers' qualitative claims to the test on Fashion-MNIST, on a CPU (README, "Ablations
that reproduce the papers' claims", says which of them the figures show at this budget):

- dino: DINO without centring collapses to one dimension (teacher entropy -> 0),
  without sharpening to the uniform distribution (entropy -> log K); with both it
  does not; in both collapses the student-teacher KL goes to 0 (DINO §5.3, Figure 7).
- byol: BYOL without the predictor, or with the target equal to the online
  network (momentum 0), collapses; with both it learns (BYOL Table 5).
- batch: SimCLR loses more accuracy than BYOL as the batch shrinks (BYOL Figure 3a).
- simsiam: beside BYOL, SimSiam has no momentum encoder and still learns; without its predictor
  or without the stop-gradient it collapses (SimSiam Table 1a, Figure 2: the std of the normalised
  output goes to 0), which is also why BYOL with momentum 0 still learns.
- vicreg: VICReg without the variance term collapses, without the covariance term its embedding
  keeps fewer effective dimensions (VICReg Table 4; the effective-rank diagnostic).

Every experiment is ``python train.py recipe=... overrides`` in its own
subprocess (run folders under ``runs=``); each backbone is then evaluated
offline with the kNN protocol of ``sslzoo.eval`` (on ``eval.train_limit`` /
``eval.test_limit`` images), and the results folder (``out=``) receives
``ablations.json``, ``ablations.md`` and one PNG per group.

Options: ``only=dino,byol,batch,simsiam,vicreg`` (groups), ``steps=N`` (every experiment's
step budget at its reference batch; the default budgets below fit the whole set
in under an hour on 2 CPU cores), ``reuse=true`` (keep a finished run of the
same command), ``out=DIR``, ``runs=DIR``; ``eval.KEY=...`` goes to the
evaluation protocol (sslzoo/eval/protocol.yaml); ``seed=N`` and any other
dotted key go to every training run (e.g. ``data.num_workers=2``; the default
here is 0, see TRAIN_DEFAULTS). Rerunning with another ``seed=`` (and its own
``runs=``/``out=``) shows how much of a difference is seed noise.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import pretrain_or_reuse  # noqa: E402

from sslzoo.arguments import Option, Parser, asks_for_help  # noqa: E402
from sslzoo.config import available_recipes  # noqa: E402
from sslzoo.errors import UserError, cli_entry  # noqa: E402
from sslzoo.recipes import load_config  # noqa: E402
from sslzoo.rundir import RunDir  # noqa: E402

GROUPS = ("dino", "byol", "batch", "simsiam", "vicreg")
PARSER = Parser(
    "benchmarks/ablations.py",
    {
        "only": Option(list[str], list(GROUPS), "the groups to run"),
        "steps": Option(int | None, None, "every experiment's step budget (default: its own, below)"),
        "reuse": Option(bool, False, "keep a finished run of the same command"),
        "out": Option(str, "benchmarks/results/ablations", "the results folder"),
        "runs": Option(str, "runs/ablations", "the run folders"),
    },
    prefixes={"eval.": "eval"},
    rest="recipe",
    rest_words=("seed",),
)
# Offline kNN on a subset (the full 60k/10k split would cost as much as a training run per experiment).
EVAL_DEFAULTS = {"train_limit": 10000, "test_limit": 5000, "knn.ks": [20]}
# Every run logs every LOG_EVERY steps: curves dense enough to see a collapse happen.
LOG_EVERY = 5

# Step budgets, sized for the whole default set to fit under an hour on 2 cores (all five groups, 17 runs,
# 13.4 minutes measured in one go on the 2-core Intel Xeon sandbox, 21.6 on the 2-core AMD EPYC one, evaluation
# included: benchmarks/results/ablations and README).
# Both DINO collapses show within the first hundred steps (entropy and KL curves); the batch sweep
# keeps the number of images seen fixed: steps x batch = BATCH_STEPS x BATCH_SIZES[0].
DINO_STEPS = 120
BYOL_STEPS = 150
SIMSIAM_STEPS = BYOL_STEPS  # beside BYOL's runs, at the same budget
VICREG_STEPS = BYOL_STEPS
BATCH_SIZES = (128, 32, 8)  # a 16x range, as 4096 -> 256 in BYOL Figure 3a; 128 is the recipes' batch
BATCH_STEPS = BYOL_STEPS  # at the largest batch: the byol ablation's reference run is shared
# On 2 cores, data-loading workers compete with the compute threads: measured 1.8x more images/s with
# none (DINO, batch 32, on the shared 2-core sandbox). Override with data.num_workers=2.
# every group in one precision, fp32, as every committed ablation ran (some fmnist recipes say auto: bf16 on AMX CPUs)
TRAIN_DEFAULTS = {"data.num_workers": 0, "trainer.precision": "fp32"}


@dataclass(frozen=True)
class Experiment:
    name: str  # run folder under runs=
    groups: tuple[str, ...]
    recipe: str
    label: str  # legend label, in the reading group's vocabulary
    overrides: dict[str, Any] = field(default_factory=dict)
    steps: int = 0  # at the reference batch
    batch_size: int | None = None  # None: the recipe's


def experiments() -> list[Experiment]:
    """The default set. DINO "no sharpening" sets the teacher temperature to the student's (tau_t = tau_s):
    the teacher is then no sharper than the student. DINO §5.3 does not give the value it used; the
    official main_dino.py warns that tau_t above 0.07 is unstable (--teacher_temp help), and tau_t = tau_s
    is the smallest change that removes sharpening altogether."""
    tau_s = load_config("dino_fmnist").method.student_temp
    reference = BATCH_SIZES[0]
    out = [
        Experiment("dino", ("dino",), "dino_fmnist", "centring + sharpening (DINO)", steps=DINO_STEPS),
        Experiment(
            "dino_no_centring",
            ("dino",),
            "dino_fmnist",
            "sharpening only (no centring)",
            {"method.center_momentum": 1.0},  # the centre stays 0 (C <- 1 * C)
            DINO_STEPS,
        ),
        Experiment(
            "dino_no_sharpening",
            ("dino",),
            "dino_fmnist",
            f"centring only (no sharpening, τt = τs = {tau_s:g})",
            {"method.teacher_temp": tau_s, "method.warmup_teacher_temp": tau_s},
            DINO_STEPS,
        ),
        Experiment(
            f"byol_b{reference}",
            ("byol", "batch", "simsiam"),
            "byol_fmnist",
            "predictor + EMA target (BYOL)",
            {},
            BYOL_STEPS,
            batch_size=reference,
        ),
        Experiment(
            "byol_no_predictor",
            ("byol",),
            "byol_fmnist",
            "no predictor",
            {"method.use_predictor": False},
            BYOL_STEPS,
            reference,
        ),
        Experiment(
            "byol_momentum0",
            ("byol", "simsiam"),
            "byol_fmnist",
            "target = online (momentum 0, stop-gradient only)",
            # constant momentum 0: the target copies the online network
            {"method.momentum": 0.0, "method.momentum_cosine": False},
            BYOL_STEPS,
            reference,
        ),
        Experiment(
            "simsiam",
            ("simsiam",),
            "simsiam_fmnist",
            "stop-gradient + predictor, no momentum (SimSiam)",
            steps=SIMSIAM_STEPS,
        ),
        Experiment(
            "simsiam_no_predictor",
            ("simsiam",),
            "simsiam_fmnist",
            "SimSiam without predictor",
            {"method.use_predictor": False, "method.fix_pred_lr": False},
            SIMSIAM_STEPS,
        ),
        Experiment(
            "simsiam_no_stop_gradient",
            ("simsiam",),
            "simsiam_fmnist",
            "SimSiam without stop-gradient",
            {"method.stop_gradient": False},
            SIMSIAM_STEPS,
        ),
        Experiment(
            "vicreg", ("vicreg",), "vicreg_fmnist", "variance + invariance + covariance (VICReg)", steps=VICREG_STEPS
        ),
        Experiment(
            "vicreg_no_variance",
            ("vicreg",),
            "vicreg_fmnist",
            "no variance term (μ = 0)",
            {"method.mu_variance": 0.0},
            VICREG_STEPS,
        ),
        Experiment(
            "vicreg_no_covariance",
            ("vicreg",),
            "vicreg_fmnist",
            "no covariance term (ν = 0)",
            {"method.nu_covariance": 0.0},
            VICREG_STEPS,
        ),
    ]
    for method in ("simclr", "byol"):
        for batch in BATCH_SIZES:
            if (method, batch) != ("byol", reference):
                out.append(
                    Experiment(
                        f"{method}_b{batch}",
                        ("batch",),
                        f"{method}_fmnist",
                        method,
                        {},
                        BATCH_STEPS,
                        batch,
                    )
                )
    return out


def budget(experiment: Experiment, steps: int | None) -> int:
    """Optimizer steps of ``experiment``: ``steps`` (or its own budget) at the reference batch, scaled so
    that a run at another batch size sees as many images."""
    base = experiment.steps if steps is None else steps
    if experiment.batch_size is None:
        return base
    return max(1, round(base * BATCH_SIZES[0] / experiment.batch_size))


# --------------------------------------------------------------------------- options


def parse(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(options, overrides for every training run, overrides for the evaluation protocol)."""
    args = PARSER.parse(argv)
    options = args.options
    if not options["only"] or any(group not in GROUPS for group in options["only"]):
        raise UserError(f"only={','.join(options['only'])}: choose groups among {', '.join(GROUPS)}")
    if options["steps"] is not None and options["steps"] < 1:
        raise UserError(f"steps={options['steps']} must be a positive integer")
    return options, args.passed["recipe"], {**EVAL_DEFAULTS, **args.passed["eval"]}


# --------------------------------------------------------------------------- running


def overrides_of(experiment: Experiment, steps: int | None, train: dict[str, Any]) -> dict[str, Any]:
    batch = {"data.batch_size": experiment.batch_size} if experiment.batch_size is not None else {}
    return {
        "resume": "none",
        "logger.wandb": "off",
        "trainer.log_every": LOG_EVERY,
        **TRAIN_DEFAULTS,
        **train,
        **experiment.overrides,
        **batch,
        "trainer.max_steps": budget(experiment, steps),
    }


def last_values(directory: Path) -> dict[str, float]:
    """The last logged value of each diagnostic."""
    from sslzoo.viz.runs import Run

    keys = ("loss", "embed_std", "embed_rank", "teacher_entropy", "kl", "variance", "covariance")
    last: dict[str, float] = {}
    for record in Run.open(directory).metrics:
        last.update({k: record[k] for k in keys if isinstance(record.get(k), (int, float))})
    return last


def run_experiment(experiment: Experiment, options: dict, train: dict, evaluator) -> dict:
    from sslzoo.eval.evaluate import from_run

    directory = Path(options["runs"]) / experiment.name
    overrides = overrides_of(experiment, options["steps"], train)
    entry: dict[str, Any] = {**asdict(experiment), "run_dir": str(directory), "steps": overrides["trainer.max_steps"]}
    if experiment.recipe not in available_recipes():
        print(f"[{experiment.name}] skipped: recipe {experiment.recipe} does not exist", flush=True)
        return {**entry, "status": "skipped", "error": f"recipe {experiment.recipe} does not exist"}
    result, reused = pretrain_or_reuse(experiment.name, experiment.recipe, overrides, directory, options["reuse"])
    entry.update(reused=reused, command=" ".join(result.command[1:]), train_wall_s=result.wall_s, error=result.error)
    if not result.ok:
        return {**entry, "status": "failed"}
    RunDir(directory).checkpoint.unlink(missing_ok=True)  # backbone.pt is what gets evaluated
    subject = from_run(directory)
    knn = evaluator.knn(subject, evaluator.features(subject))
    entry.update(
        status="ok", backbone=subject.backbone, knn_top1=knn["headline"]["knn_top1"], final=last_values(directory)
    )
    print(
        f"[{experiment.name}] {result.wall_s / 60:.1f} min, offline kNN@{knn['headline']['k']} "
        f"{100 * entry['knn_top1']:.2f}%, last logged " + ", ".join(f"{k} {v:.4g}" for k, v in entry["final"].items()),
        flush=True,
    )
    return entry


def random_init_knn(evaluator, entries: list[dict]) -> tuple[dict[str, float], int | None]:
    """kNN of each untrained backbone that the experiments trained, on their data (what a method that
    learned nothing scores), initialised with the runs' seed: {backbone: top-1}; and that seed. A
    run's overrides may change its backbone, so each group is read against its own backbone's floor."""
    from sslzoo.eval.evaluate import from_run, random_init

    floors: dict[str, float] = {}
    seed = None
    for entry in entries:
        if entry["status"] != "ok" or entry["backbone"] in floors:
            continue
        trained = from_run(Path(entry["run_dir"]))
        seed = int(trained.config["seed"])
        subject = random_init(trained.backbone, trained.data, seed)
        floors[trained.backbone] = evaluator.knn(subject, evaluator.features(subject))["headline"]["knn_top1"]
    return floors, seed


def group_floors(results: dict, entries: list[dict]) -> dict[str, float]:
    """{backbone: random-init kNN top-1 (%)} of the backbones that ``entries`` trained."""
    return {name: 100 * results["random_init_knn_top1"][name] for name in sorted({e["backbone"] for e in entries})}


def draw_floors(ax, floors: dict[str, float], with_value: bool) -> None:
    """One dashed line per random-init backbone, named when the group trained more than one."""
    for name, floor in floors.items():
        label = "random-init backbone" + (f" {name}" if len(floors) > 1 else "")
        ax.axhline(floor, color="gray", ls="--", lw=1, label=label + (f" (kNN {floor:.1f}%)" if with_value else ""))


# --------------------------------------------------------------------------- figures


def ok_runs(results: dict, group: str):
    from sslzoo.viz.runs import Run

    entries = [e for e in results["experiments"] if group in e["groups"] and e["status"] == "ok"]
    return entries, [Run.open(e["run_dir"]) for e in entries]


def knn_label(entry: dict) -> str:
    return f"{entry['label']} (kNN {100 * entry['knn_top1']:.1f}%)"


def curves_figure(results: dict, group: str, keys: list[str], title: str, bars: bool):
    """Diagnostic curves of one group, optionally with a kNN bar panel."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from sslzoo.viz.dynamics import draw, legend

    entries, runs = ok_runs(results, group)
    keys = [k for k in keys if any(k in r for run in runs for r in run.metrics)]
    panels = len(keys) + bars
    fig = Figure(figsize=(3.5 * panels, 3.6), layout="constrained")
    axes = list(fig.subplots(1, panels, squeeze=False)[0])
    labels = [knn_label(e) for e in entries]
    for ax, key in zip(axes, keys):
        draw(ax, key, runs, labels)
    if bars:
        ax = axes[-1]
        colours = colormaps["tab10"].colors
        accuracies = [100 * e["knn_top1"] for e in entries]
        ax.bar(range(len(entries)), accuracies, color=colours[: len(entries)])
        floors = group_floors(results, entries)
        span = [*accuracies, *floors.values()]
        ax.set_ylim(min(span) - 2, max(span) + 1)  # the differences are a few points
        draw_floors(ax, floors, with_value=True)
        ax.set_xticks([])
        ax.set_title("offline kNN@20 top-1 (%)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    legend(fig, axes)
    fig.suptitle(title, fontsize=10)
    return fig


def batch_figure(results: dict):
    """kNN top-1 against the batch size, and the drop from the largest batch (BYOL Figure 3a)."""
    from matplotlib.figure import Figure

    entries = [e for e in results["experiments"] if "batch" in e["groups"] and e["status"] == "ok"]
    fig = Figure(figsize=(8.0, 3.4), layout="constrained")
    top1, drop = fig.subplots(1, 2)
    for method, label, colour in (
        ("simclr", "SimCLR (negatives)", "tab:blue"),
        ("byol", "BYOL (no negatives)", "tab:orange"),
    ):
        points = sorted((e["batch_size"], 100 * e["knn_top1"]) for e in entries if e["recipe"] == f"{method}_fmnist")
        if not points:
            continue
        sizes, accs = zip(*points)
        top1.plot(sizes, accs, "o-", color=colour, label=label)
        if sizes[-1] == BATCH_SIZES[0]:
            drop.plot(sizes, [a - accs[-1] for a in accs], "o-", color=colour, label=label)
    draw_floors(top1, group_floors(results, entries), with_value=False)
    for ax, title in ((top1, "offline kNN@20 top-1 (%)"), (drop, f"change from batch {BATCH_SIZES[0]} (% points)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(BATCH_SIZES, [str(b) for b in BATCH_SIZES])
        ax.invert_xaxis()  # the batch shrinks from left to right, as in BYOL Figure 3a
        ax.set_xlabel("batch size (same number of images seen)", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Batch-size sensitivity: negatives (SimCLR) vs. predictor + EMA target (BYOL)", fontsize=10)
    return fig


FIGURES = {
    "dino": (
        "dino_centring_sharpening.png",
        lambda r: curves_figure(
            r, "dino", ["teacher_entropy", "kl", "embed_std", "embed_rank"],
            "DINO: centring and sharpening are both needed (DINO §5.3, Figure 7)", bars=False,
        ),
    ),
    "byol": (
        "byol_predictor_target.png",
        lambda r: curves_figure(
            r, "byol", ["loss", "embed_std", "embed_rank"],
            "BYOL without the predictor, or with the target = the online network (BYOL Table 5: both collapse)",
            bars=True,
        ),
    ),
    "batch": ("batch_size.png", batch_figure),
    "simsiam": (
        "simsiam_stop_gradient_predictor.png",
        lambda r: curves_figure(
            r, "simsiam", ["loss", "embed_std", "embed_rank"],
            "SimSiam beside BYOL: no momentum encoder is needed; without the predictor or the stop-gradient "
            "it collapses (SimSiam Table 1a, Figure 2)",
            bars=True,
        ),
    ),
    "vicreg": (
        "vicreg_variance_covariance.png",
        lambda r: curves_figure(
            r, "vicreg", ["embed_rank", "embed_std", "variance", "covariance"],
            "VICReg without the variance term collapses; without the covariance term it keeps fewer dimensions "
            "(VICReg Table 4)",
            bars=True,
        ),
    ),
}  # fmt: skip


# --------------------------------------------------------------------------- report


def markdown(results: dict) -> str:
    floors = ", ".join(f"{name} {100 * top1:.2f}%" for name, top1 in results["random_init_knn_top1"].items())
    lines = [
        "# Teaching-lab ablations",
        "",
        f"Offline kNN@20 top-1 on {results['eval']['train_limit']} train / {results['eval']['test_limit']} test "
        f"images; random-init backbones: {floors or 'n/a'} "
        f"(seed {results.get('random_init_seed')}). Last logged diagnostics.",
        "",
        "| group | run | backbone | steps | batch | kNN@20 (%) | teacher entropy | KL | embed std | eff. rank "
        "| train (min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(entry: dict, key: str, digits: int) -> str:
        value = entry.get("final", {}).get(key)
        return "—" if value is None else f"{value:.{digits}f}"

    for e in results["experiments"]:
        knn = f"{100 * e['knn_top1']:.2f}" if e["status"] == "ok" else e["status"]
        batch = str(e["batch_size"] or "recipe")
        minutes = f"{e['train_wall_s'] / 60:.1f}" if "train_wall_s" in e else "—"
        lines.append(
            f"| {'/'.join(e['groups'])} | {e['label']} | {e.get('backbone', '—')} | {e['steps']} | {batch} | {knn} | "
            f"{cell(e, 'teacher_entropy', 2)} | {cell(e, 'kl', 3)} | {cell(e, 'embed_std', 4)} | "
            f"{cell(e, 'embed_rank', 1)} | {minutes} |"
        )
    lines += ["", f"Total wall time: {results['total_wall_s'] / 60:.1f} min."]
    reused = [e for e in results["experiments"] if e.get("reused")]
    if reused:
        own = sum(e.get("train_wall_s", 0.0) for e in results["experiments"]) / 60
        lines.append(
            f"{len(reused)} run(s) reused from an earlier invocation (reuse=true); the training times of all "
            f"runs add up to {own:.1f} min."
        )
    lines.append("")
    return "\n".join(lines)


@cli_entry
def main(argv: list[str]) -> int:
    if asks_for_help(argv):
        print(__doc__)
        return 0
    options, train, evaluation = parse(argv)
    from sslzoo.eval.evaluate import Evaluator
    from sslzoo.eval.protocol import load_protocol, to_dict
    from sslzoo.provenance import provenance, provenance_since

    protocol = load_protocol(evaluation)
    evaluator = Evaluator(protocol)
    chosen = [e for e in experiments() if set(e.groups) & set(options["only"])]
    for experiment in chosen:  # a typo in an override fails here, before any run starts
        if experiment.recipe in available_recipes():
            load_config(experiment.recipe, overrides_of(experiment, options["steps"], train))
    # runs= as given: the training subprocesses share this working directory, and the results name no
    # machine's paths when it is relative (the default)
    out = Path(options["out"])
    start, started = time.perf_counter(), provenance()
    entries = [run_experiment(e, options, train, evaluator) for e in chosen]
    results = {
        "argv": argv,
        "options": options,
        "train_overrides": train,
        "eval": {"train_limit": protocol.train_limit, "test_limit": protocol.test_limit, **to_dict(protocol)["knn"]},
        **dict(zip(("random_init_knn_top1", "random_init_seed"), random_init_knn(evaluator, entries))),
        "experiments": entries,
        "provenance": provenance_since(started),
    }
    results["total_wall_s"] = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablations.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "ablations.md").write_text(markdown(results))
    for group in options["only"]:
        name, make = FIGURES[group]
        if any(group in e["groups"] and e["status"] == "ok" for e in entries):
            make(results).savefig(out / name, dpi=130)
            print(f"wrote {out / name}")
    print(markdown(results))
    failed = [e["name"] for e in entries if e["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
