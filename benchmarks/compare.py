"""The side-by-side benchmark: ``python benchmarks/compare.py [key=value ...]``.

Pre-trains every method (by default DINO, BYOL, SimCLR, MoCo v3 and iBOT; ``methods=all``
every registered one; each from its ``<method>_fmnist`` recipe) under one identical budget (optimizer steps, batch
size, backbone, crops where the method allows), each in its own subprocess;
evaluates each frozen backbone offline (kNN and linear probe) next to two
baselines (raw pixels, the random-init backbone); and writes to the results
folder ``results.json``, ``results.md``, ``results.png`` (bars),
``loss_curves.png`` / ``accuracy_curves.png``, and ``knn_vs_minutes.png``: each
method's offline kNN on a fixed subset at each ``1/curve_points`` of the budget
(from snapshots of its evaluated backbone) against its training minutes, over the
raw-pixel and random-init lines. Every file records the git commit, each run's
full config, the seeds, the torch version and the hardware. ``merge=DIR,DIR``
instead merges earlier results folders into one (``compare_merge.py``).
Defaults and every option: ``benchmarks/compare.yaml``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare_results  # noqa: E402
from compare_merge import merge  # noqa: E402
from compare_plan import SETTINGS_FILE, Settings, plan_runs, split_overrides  # noqa: E402
from compare_plots import write_figures  # noqa: E402
from compare_report import markdown  # noqa: E402
from compare_run import compare  # noqa: E402

from sslzoo.arguments import asks_for_help, parse_overrides  # noqa: E402
from sslzoo.errors import UserError, cli_entry  # noqa: E402
from sslzoo.eval.protocol import load_protocol  # noqa: E402

REPORT_FILE = "results.md"


def parse(argv: list[str]) -> tuple[Settings, dict, dict]:
    """(settings, overrides for every run's recipe, overrides for the evaluation protocol)."""
    return split_overrides(parse_overrides(argv))


def write_results(results: dict, out: Path) -> list[str]:
    """The results file, the report and the figures into ``out``; returns their file names."""
    compare_results.write(results, out)
    (out / REPORT_FILE).write_text(markdown(results))
    return [compare_results.RESULTS_FILE, REPORT_FILE, *write_figures(results, out)]


@cli_entry
def main(argv: list[str]) -> int:
    if asks_for_help(argv):
        print(__doc__)
        print(SETTINGS_FILE.read_text())
        return 0
    settings, train_overrides, eval_overrides = parse(argv)
    out = Path(settings.out)
    if not out.is_absolute():
        out = Path.cwd() / out
    if settings.merge is not None:
        if train_overrides or eval_overrides:
            given = ", ".join([*train_overrides, *(f"eval.{key}" for key in eval_overrides)])
            raise UserError(f"merge= trains and evaluates nothing: drop {given} (each run's config is its own)")
        results = merge([Path(folder) for folder in settings.merge], Path(settings.out), argv)
    else:
        protocol = load_protocol(eval_overrides)
        plans = plan_runs(settings, train_overrides)
        print(f"comparing {', '.join(p.method for p in plans)} on seeds {settings.seeds}; results -> {out}", flush=True)
        results = compare(settings, plans, protocol, train_overrides, argv)
    written = write_results(results, out)
    print((out / REPORT_FILE).read_text().split("## Provenance")[0].rstrip())
    print(f"\nwrote {out}/{', '.join(written)}")
    failed = [e for e in results["runs"] if e["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
