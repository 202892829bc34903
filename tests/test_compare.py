"""benchmarks/compare.py: end to end on a tiny budget with every registered method (the files
and their schema, not the accuracy), its settings parsing, statistics and failure handling; the
trainer's evaluation snapshots its kNN-against-minutes curves come from."""

from __future__ import annotations

import copy
import json
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from PIL import Image

import sslzoo.trainer
from sslzoo.checkpoint import atomic_save, load_checkpoint
from sslzoo.errors import UserError
from sslzoo.eval.evaluate import Evaluator, from_checkpoint, from_run, from_snapshot
from sslzoo.eval.protocol import load_protocol
from sslzoo.methods import METHODS, method_class
from sslzoo.rundir import RunDir
from sslzoo.trainer import Stopped, Trainer

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPT = BENCHMARKS / "compare.py"
FILES = ("results.json", "results.md", "results.png", "loss_curves.png", "accuracy_curves.png", "knn_vs_minutes.png")
sys.path.insert(0, str(BENCHMARKS))

import _common as common  # noqa: E402
import compare  # noqa: E402
import compare_plan  # noqa: E402
import compare_report  # noqa: E402
import compare_results  # noqa: E402
from compare_results import FINETUNE_KEY, KNN_KEY, LINEAR_KEY, SCHEMA, lowshot_row  # noqa: E402

TINY = [
    "steps=2",
    "batch_size=8",
    "local_crops=1",
    "data.num_workers=0",
    "trainer.device=cpu",
    "trainer.log_every=1",
    "eval.train_limit=200",
    "eval.test_limit=100",
    "eval.linear.epochs=2",
    "eval.knn.ks=[5,20]",
    "curve_points=2",  # snapshots at steps 1 and 2
    "curve_train_limit=100",
    "curve_test_limit=50",
]
CURVE_STEPS = [0, 1, 2]  # step 0: the random-init backbone
SUBSET = {"train_limit": 100, "test_limit": 50, "knn.ks": [5, 20]}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("compare")
    out, runs = base / "results", base / "runs"
    argv = [sys.executable, str(SCRIPT), *TINY, "methods=all", f"out={out}", f"runs={runs}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


def test_compare_writes_every_file_with_the_schema(results: tuple[Path, dict]) -> None:
    out, data = results
    assert all((out / name).is_file() for name in FILES)
    methods = METHODS.names()
    assert data["schema"] == SCHEMA
    assert [r["name"] for r in data["rows"]] == [*methods, "raw_pixels", "random_init"]
    for row in data["rows"]:
        for key in (KNN_KEY, LINEAR_KEY):
            assert 0.0 <= row[key]["mean"] <= 1.0 and row[key]["n"] == 1 and row[key]["std"] is None
        assert row[KNN_KEY]["k"] == 20
        if row["kind"] == "method":
            card = method_class(row["name"]).card
            assert (row["family"], row["target"]) == (card.family, card.target)
            assert row["pretrain_wall_s"]["mean"] > 0 and row["images_per_s"]["mean"] > 0
            assert row["peak_memory_bytes"]["mean"] > 0 and row["peak_memory_kind"] == "peak RSS"
            assert set(row["beats_random_init"]) == {"knn", "linear"}


def test_every_method_gets_the_same_budget(results: tuple[Path, dict]) -> None:
    _, data = results
    runs = [r for r in data["runs"] if r["name"] in METHODS.names()]
    assert sorted(r["name"] for r in runs) == METHODS.names()
    for run in runs:
        cfg = run["config"]  # the run's own config.yaml
        assert (cfg["trainer"]["max_steps"], cfg["data"]["batch_size"]) == (2, 8)
        assert cfg["model"]["backbone"] == "vit_deepstem_micro_28" and cfg["seed"] == 0
        assert cfg["trainer"]["online_probe"] is True and cfg["trainer"]["precision"] == "auto"  # compare.yaml's
        assert cfg["augment"]["local_crops"] == (1 if method_class(run["name"]).supports_local_crops else 0)
        assert cfg["augment"]["global_crops"] == (method_class(run["name"]).global_crops or 2)  # MAE: 1
        knn = json.loads((Path(run["run_dir"]) / "eval_knn.json").read_text())
        assert knn["evaluation"] == "offline" and knn["knn_top1"] == run["knn"]["knn_top1"]


def test_provenance_says_when_the_code_changed_while_a_benchmark_ran() -> None:
    from sslzoo.provenance import provenance, provenance_since

    started = provenance()
    assert provenance_since(started) == started
    edited = {**started, "git_commit": "0" * 40}
    assert provenance_since(edited)["code_version_at_end"]["git_commit"] == started["git_commit"]


def test_every_result_file_records_provenance_and_configs(results: tuple[Path, dict]) -> None:
    out, data = results
    prov = data["provenance"]
    assert prov["torch_version"] == torch.__version__ and prov["hardware"]["cpu_cores"] >= 1
    assert len(prov["git_commit"] or "") == 40
    md = (out / "results.md").read_text()
    assert prov["git_commit"] in md and torch.__version__ in md and "offline" in md
    assert "raw pixels (baseline)" in md and "random-init backbone (baseline)" in md
    assert all(f"| {m} |" in md and f"{m} seed 0" in md for m in METHODS.names())  # table row and its config
    for name in ("results.png", "loss_curves.png", "accuracy_curves.png", "knn_vs_minutes.png"):
        meta = json.loads(Image.open(out / name).text["Description"])
        assert meta["provenance"]["git_commit"] == prov["git_commit"]
        assert meta["settings"]["seeds"] == [0]
        assert set(meta["configs"]) == {f"{m}/seed0" for m in METHODS.names()}


def test_every_run_has_a_knn_curve_against_training_minutes(results: tuple[Path, dict]) -> None:
    """Each method's curve: the random-init point, then each snapshot's subset kNN at increasing minutes,
    the same numbers as evaluating the snapshots and the final backbone on the subset directly."""
    out, data = results
    assert {k: data["curve"][k] for k in ("points", "k", "train_images", "test_images")} == {
        "points": 2, "k": 20, "train_images": 100, "test_images": 50,
    }  # fmt: skip
    floors = {e["name"]: e["subset_knn_top1"] for e in data["runs"] if "subset_knn_top1" in e}
    assert set(floors) == {"raw_pixels", "random_init"}
    subset = Evaluator(load_protocol(SUBSET))
    for entry in (e for e in data["runs"] if e["name"] in METHODS.names()):
        curve = entry["curve"]
        assert [p["step"] for p in curve] == CURVE_STEPS
        minutes = [p["train_minutes"] for p in curve]
        assert minutes[0] == 0.0 and all(a < b for a, b in zip(minutes, minutes[1:]))
        assert curve[0]["knn_top1"] == floors["random_init"]
        run = Path(entry["run_dir"])
        middle, final = from_snapshot(run, RunDir(run).snapshots.read()[0]), from_run(run)
        for point, subject in ((curve[1], middle), (curve[2], final)):
            assert point["knn_top1"] == subset.knn(subject, subset.features(subject))["headline"]["knn_top1"]
        row = next(r for r in data["rows"] if r["name"] == entry["name"])
        assert [p["step"] for p in row["curve"]] == CURVE_STEPS
        assert row["curve"][-1]["knn_top1"]["mean"] == curve[-1]["knn_top1"]
    md = (out / "results.md").read_text()
    assert "## Offline kNN@20 against training minutes" in md and "| 1/2 (step 1) |" in md
    assert all(f"| {m} | 0.0 min · " in md for m in METHODS.names())


def copied_run(data: dict, method: str, runs: Path) -> Path:
    """The fixture's run of ``method`` copied to ``runs/<method>/seed0``, its config pointing at the copy."""
    entry = next(e for e in data["runs"] if e["name"] == method)
    copy = runs / method / "seed0"
    shutil.copytree(entry["run_dir"], copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["trainer"]["out_dir"] = str(copy)
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    return copy


def test_a_run_is_reused_only_with_every_snapshot(results: tuple[Path, dict], tmp_path: Path) -> None:
    copy = copied_run(results[1], "simclr", tmp_path / "runs")
    settings, train, _ = compare.parse([*TINY, "methods=simclr", "reuse=true", f"runs={tmp_path / 'runs'}"])
    plan = compare_plan.plan_runs(settings, train)[0]
    assert common.finished_run(copy, plan.recipe, plan.overrides[0]) is not None
    (copy / "snapshots" / "backbone_step000001.pt").unlink()
    assert common.finished_run(copy, plan.recipe, plan.overrides[0]) is None


def test_precision_is_one_setting_for_every_method() -> None:
    settings, train, _ = compare.parse([*TINY, "methods=dino,simclr", "precision=auto"])
    plans = compare_plan.plan_runs(settings, train)
    assert {cfg.trainer.precision for plan in plans for cfg in plan.configs.values()} == {"auto"}
    with pytest.raises(UserError, match="set trainer.precision for every method with precision="):
        compare.parse([*TINY, "trainer.precision=bf16"])


def edit_saved_config(run: Path, edit: Callable[[dict], object]) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    edit(config)
    (run / "config.yaml").write_text(yaml.safe_dump(config))


def saved_before_added_keys(config: dict) -> None:
    """``config`` as if saved before ``optim.lr_decay`` and ``method.momentum_end`` existed."""
    del config["optim"]["lr_decay"]
    config["method"].pop("momentum_end", None)


def test_a_run_saved_before_a_key_existed_is_reused_only_where_it_trained_as_now(
    results: tuple[Path, dict], tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    # a SimCLR run whose lr decayed by its cosine, what a config without the key trained with, asked for as such;
    # dino_fmnist holds lr and momentum, which runs saved before the keys did not
    for method, cosine in (("simclr", True), ("dino", False)):
        run = copied_run(results[1], method, runs)
        extra = ["optim.lr_decay=cosine"] if cosine else []
        if cosine:
            edit_saved_config(run, lambda config: config["optim"].update(lr_decay="cosine"))
        settings, train, _ = compare.parse([*TINY, f"methods={method}", f"runs={runs}", *extra])
        plan = compare_plan.plan_runs(settings, train)[0]
        assert common.finished_run(run, plan.recipe, plan.overrides[0]) is not None  # as saved today
        edit_saved_config(run, saved_before_added_keys)
        assert (common.finished_run(run, plan.recipe, plan.overrides[0]) is not None) is cosine
    settings, train, _ = compare.parse([*TINY, "methods=simclr", f"runs={runs}"])  # simclr_fmnist: no cosine
    plan = compare_plan.plan_runs(settings, train)[0]
    assert common.finished_run(runs / "simclr" / "seed0", plan.recipe, plan.overrides[0]) is None


# --------------------------------------------------------------------------- trainer snapshots

STEP_S, SAVE_S = 1.0, 100.0  # on the fake clock: a training step, a save


def fit(cfg, now: list[float], stop_after: int | None = None) -> None:
    """Train ``cfg`` with steps that take STEP_S on the fake clock ``now``; SIGTERM after step ``stop_after``."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    trainer = Trainer(cfg)
    step = trainer.step

    def timed_step(views, labels=None):
        now[0] += STEP_S
        if trainer.clock.step + 1 == stop_after:
            trainer.stop_signal = signal.SIGTERM
        return step(views, labels)

    trainer.step = timed_step
    try:
        if stop_after is None:
            trainer.fit()
        else:
            with pytest.raises(Stopped):
                trainer.fit()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def assert_same_tensors(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], v) for k, v in theirs.items())


def test_snapshots_keep_the_evaluated_backbone_and_the_training_time(tiny_config, monkeypatch) -> None:
    """trainer.snapshot_every: DINO's teacher backbone every N steps, with training seconds that leave saving
    out and continue from the checkpoint on resume (on a fake clock: steps take 1 s, every save 100 s)."""
    now = [0.0]
    monkeypatch.setattr(sslzoo.trainer, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    real_save = torch.save

    def slow_save(*args, **kwargs) -> None:
        now[0] += SAVE_S
        real_save(*args, **kwargs)

    monkeypatch.setattr(torch, "save", slow_save)
    small = {
        "method.out_dim": 256,
        "method.proj_hidden_dim": 256,
        "trainer.checkpoint_every": 1,
        "trainer.snapshot_every": 2,
    }
    cfg = tiny_config("dino_fmnist", **small, **{"trainer.max_steps": 4})
    run = Path(cfg.trainer.out_dir)
    snapshots = RunDir(run).snapshots
    last = run / "checkpoints" / "last.pt"

    fit(cfg, now, stop_after=2)
    assert snapshots.read() == [{"step": 2, "train_s": 2 * STEP_S, "file": "backbone_step000002.pt"}]
    state = load_checkpoint(last)
    assert state["train_s"] == 2 * STEP_S
    teacher = from_checkpoint(last).model.state_dict()  # method.eval_backbone(): DINO's teacher
    assert_same_tensors(torch.load(snapshots.folder / "backbone_step000002.pt", weights_only=True), teacher)

    atomic_save({**state, "train_s": 1000.0}, last)  # the time the resumed run continues from
    fit(tiny_config("dino_fmnist", **small, **{"trainer.max_steps": 4, "resume": "auto"}), now)
    entries = snapshots.read()
    assert [(e["step"], e["train_s"]) for e in entries] == [(2, 2 * STEP_S), (4, 1000.0 + 2 * STEP_S)]
    final = torch.load(snapshots.folder / entries[1]["file"], weights_only=True)
    assert_same_tensors(final, torch.load(run / "backbone.pt", weights_only=True))

    fit(tiny_config("dino_fmnist", **small, **{"trainer.max_steps": 2}), now)
    assert [e["step"] for e in snapshots.read()] == [2]  # a fresh run (resume=none) forgets the old snapshots
    assert sorted(p.name for p in snapshots.folder.glob("*.pt")) == ["backbone_step000002.pt"]


# --------------------------------------------------------------------------- pieces


def test_settings_split_into_budget_recipe_and_protocol_overrides() -> None:
    settings, train, evaluation = compare.parse(["methods=dino", "seeds=0,1,2", "optim.lr=0.1", "eval.knn.ks=[20]"])
    assert settings.methods == ["dino"] and settings.seeds == [0, 1, 2]
    assert train == {"optim.lr": 0.1} and evaluation == {"knn.ks": [20]}
    default = compare.parse([])[0]
    assert default.methods == ["dino", "byol", "simclr", "mocov3", "ibot"] and default.steps == 3000  # issue 15's five
    assert compare.parse(["methods=all"])[0].methods == METHODS.names()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["methods=dinoo"], "did you mean 'dino'"),
        (["steps=0"], "must be positive"),
        (["seeds=1,1"], "distinct"),
        (["methods=dino", "optim.lrr=1"], "did you mean 'optim.lr'"),  # caught before any run starts
        (["eval.knn.headline_k=7"], "headline_k"),
        (["trainer.max_steps=5"], "with steps="),  # the budget is set once, for every method
        (["trainer.snapshot_every=3"], "with curve_points="),
        (["steps=7", "curve_points=5"], "divide steps=7"),
        (["curve_test_limit=0"], "positive or null"),
    ],
)
def test_bad_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        compare.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1


def test_lowshot_columns_are_optional_and_summarised_over_seeds() -> None:
    assert compare.parse([])[0].lowshot is False
    assert compare.parse(["lowshot=true"])[0].lowshot is True
    seeds = [{"lowshot": {"1-shot": {"knn_top1": a, "linear_top1": b}}} for a, b in ((0.5, 0.6), (0.7, 0.8))]
    row = lowshot_row(seeds)
    assert row["1-shot"]["knn_top1"]["mean"] == pytest.approx(0.6)
    results = {"rows": [{"name": "dino", "kind": "method", "lowshot": row}], "protocol": {"lowshot": {"draws": 3}}}
    table = compare_report.lowshot_markdown(results)
    assert "| method | 1-shot kNN | 1-shot linear |" in table and table[4].startswith("| dino | 60.00 ± 14.14")
    assert compare_report.lowshot_markdown({"rows": [{"name": "dino", "kind": "method"}]}) == []


def test_finetune_ranks_each_method_under_each_protocol() -> None:
    assert compare.parse([])[0].finetune is False and compare.parse(["finetune=true"])[0].finetune is True

    def row(name: str, kind: str, linear: float, low: float | None, tuned: float | None) -> dict:
        out = {"name": name, "kind": kind, LINEAR_KEY: {"mean": linear, "std": None}}
        if low is not None:
            out["lowshot"] = {"1%": {"linear_top1": {"mean": low, "std": None}}}
        if tuned is not None:
            out |= {FINETUNE_KEY: {"mean": tuned, "std": None}, "finetune_train_s": {"mean": 60.0, "std": None}}
        return out

    rows = [
        row("a", "method", 0.7, 0.5, 0.9),
        row("b", "method", 0.8, 0.4, 0.85),
        row("c", "method", 0.6, 0.6, 0.8),
        row("raw_pixels", "baseline", 0.9, 0.7, None),
        row("random_init", "baseline", 0.5, 0.3, 0.95),
    ]
    runs = [{"finetune": {"steps": 300, "batch_size": 256}}]
    table = compare_report.finetune_markdown({"rows": rows, "runs": runs})
    assert "300 steps of 256" in table[0]
    assert (
        "| method | fine-tuned top-1 | fine-tuning (min) | rank: linear probe | rank: 1% linear | rank: fine-tuning |"
        in table
    )
    body = {line.split(" | ")[0][2:]: line for line in table if line.startswith("| ") and "---" not in line}
    assert body["a"].endswith("| 90.00 | 1.0 | 2 | 2 | 1 |")  # ranks among the methods only
    assert body["b"].endswith("| 85.00 | 1.0 | 1 | 3 | 2 |") and body["c"].endswith("| 80.00 | 1.0 | 3 | 1 | 3 |")
    assert body["raw pixels (baseline)"].endswith("| — | — | — | — | — |")
    assert body["random-init backbone (baseline)"].endswith("| 95.00 | 1.0 | — | — | — |")
    assert compare_report.finetune_markdown({"rows": rows[3:4], "runs": []}) == []


def test_finetune_of_reused_runs_writes_the_table(results: tuple[Path, dict], tmp_path: Path) -> None:
    copy = copied_run(results[1], "simclr", tmp_path / "runs")
    out = tmp_path / "results"
    extra = ["methods=simclr", "reuse=true", "finetune=true", "eval.finetune.budget=2", f"out={out}"]
    argv = [sys.executable, str(SCRIPT), *TINY, *extra, f"runs={tmp_path / 'runs'}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tuned = json.loads((out / "results.json").read_text())
    run = next(e for e in tuned["runs"] if e["name"] == "simclr")
    assert run["reused"] and run["finetune"]["steps"] == 2 and 0 <= run["finetune"]["finetune_top1"] <= 1
    record = json.loads(RunDir(copy).eval_record("finetune").read_text())
    assert record["finetune_top1"] == run["finetune"]["finetune_top1"]
    by_name = {r["name"]: r for r in tuned["rows"]}
    assert FINETUNE_KEY in by_name["random_init"] and FINETUNE_KEY not in by_name["raw_pixels"]
    assert "| rank: fine-tuning |" in (out / "results.md").read_text()
    assert not run["finetune"]["kept"]

    # run again: the reused run's record of the same protocol is kept; another protocol fine-tunes anew
    written = RunDir(copy).eval_record("finetune").stat().st_mtime_ns
    for budget, kept in ((2, True), (3, False)):
        again = [*argv[:-1], f"eval.finetune.budget={budget}", argv[-1]]
        done = subprocess.run(again, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        run = next(e for e in json.loads((out / "results.json").read_text())["runs"] if e["name"] == "simclr")
        assert run["finetune"]["kept"] is kept and run["finetune"]["steps"] == budget
        assert (RunDir(copy).eval_record("finetune").stat().st_mtime_ns == written) is kept
        assert ("Kept from the reused runs" in (out / "results.md").read_text()) is kept


def as_seed(data: dict, seed: int, shift: float) -> dict:
    """The fixture's results as if run on ``seed``, every accuracy ``shift`` higher."""
    other = copy.deepcopy(data)
    for entry in other["runs"]:
        entry["seed"] = seed
        if "config" in entry:
            entry["config"]["seed"] = seed
            entry["config"]["trainer"]["out_dir"] = f"runs/{entry['name']}/seed{seed}"
        entry["knn"]["knn_top1"] = {k: v + shift for k, v in entry["knn"]["knn_top1"].items()}
        entry["linear"]["linear_top1"] += shift
    other["settings"]["seeds"] = [seed]
    return other


def merged(folders: list[Path], out: Path, capsys: pytest.CaptureFixture) -> tuple[int, dict | None, str]:
    """(exit status, the merged results or None, stderr) of ``compare.py merge=...``."""
    try:
        status = compare.main([f"merge={','.join(map(str, folders))}", f"out={out}"])
    except SystemExit as exit_info:
        status = exit_info.code
    written = out / compare_results.RESULTS_FILE
    return status, json.loads(written.read_text()) if status == 0 else None, capsys.readouterr().err


def test_merge_summarises_seeds_run_apart_as_one_comparison(
    results: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, data = results
    seed0, seed1, simclr = tmp_path / "seed0", tmp_path / "seed1", tmp_path / "simclr_again"
    saved = copy.deepcopy(data)  # MAE's seed 0 asked for the cosine; its seed 1 was saved before the key existed
    next(e for e in saved["runs"] if e["name"] == "mae")["config"]["optim"]["lr_decay"] = "cosine"
    compare_results.write(saved, seed0)
    moved = as_seed(data, 1, 0.1)
    del next(e for e in moved["runs"] if e["name"] == "mae")["config"]["optim"]["lr_decay"]
    moved["provenance"]["hardware"]["cpu"] = "another CPU"
    for entry in moved["runs"]:  # curves as a folder without the random init writes them (baselines=false)
        if "curve" in entry:
            entry["curve"] = entry["curve"][1:]
    compare_results.write(moved, seed1)
    again = as_seed(data, 1, 0.2)
    again["runs"] = [e for e in again["runs"] if e["name"] == "simclr"]
    compare_results.write(again, simclr)

    status, out, _ = merged([seed0, seed1, simclr], tmp_path / "merged", capsys)
    assert status == 0 and out["settings"]["seeds"] == [0, 1]
    rows = {r["name"]: r for r in out["rows"]}
    assert list(rows) == [*METHODS.names(), "raw_pixels", "random_init"]
    for name, row in rows.items():
        first = next(e for e in data["runs"] if e["name"] == name)["linear"]["linear_top1"]
        if name == "raw_pixels":  # evaluated once, at the first seed, as compare.py does
            assert row[LINEAR_KEY]["n"] == 1 and row[LINEAR_KEY]["mean"] == pytest.approx(first)
            continue
        shift = 0.2 if name == "simclr" else 0.1  # the later folder's run of the same seed replaces the earlier
        assert row[LINEAR_KEY]["n"] == 2 and row[LINEAR_KEY]["mean"] == pytest.approx(first + shift / 2)
        assert row[KNN_KEY]["std"] == pytest.approx(statistics.stdev([0.0, shift]))
    for row in out["rows"]:  # every seed's curve starts at its random init, whichever folder evaluated it
        if row["kind"] == "method":
            assert [p["step"] for p in row["curve"]] == CURVE_STEPS and row["curve"][0]["knn_top1"]["n"] == 2
    assert [s["folder"] for s in out["merged_from"]] == [str(seed0), str(seed1), str(simclr)]
    assert out["merged_from"][2]["runs"] == ["simclr seed 1"]
    assert "simclr seed 1" not in out["merged_from"][1]["runs"]
    report = (tmp_path / "merged" / "results.md").read_text()
    assert f"merged from `{seed1}`" in report and "ran on different CPUs" in report
    compare_results.write(again, tmp_path / "simclr_once_more")  # replaces every run of the folder before it
    status, out, _ = merged([simclr, tmp_path / "simclr_once_more"], tmp_path / "replaced", capsys)
    assert status == 0 and out["merged_from"][0]["runs"] == []
    assert "runs: none (later folders replaced them)" in (tmp_path / "replaced" / "results.md").read_text()

    # seeds of another recipe, or another budget, are not one comparison: refused in one line
    lr = as_seed(data, 2, 0.0)
    next(e for e in lr["runs"] if e["name"] == "dino")["config"]["optim"]["lr"] *= 2
    steps = as_seed(data, 2, 0.0)
    steps["settings"]["steps"] += 1
    probe = as_seed(data, 2, 0.0)
    probe["protocol"]["linear"]["epochs"] += 1
    before = as_seed(data, 2, 0.0)  # saved before optim.lr_decay existed: it decayed, seed 0 held its lr
    del next(e for e in before["runs"] if e["name"] == "byol")["config"]["optim"]["lr_decay"]
    refusals = (
        (lr, ("dino's seeds 0 ", "differ in optim.lr")),
        (before, ("byol's seeds 0 ", "differ in optim.lr_decay")),
        (steps, ("their steps differs",)),
        (probe, ("their evaluation protocol differs ({'linear.epochs': 2}",)),
    )
    for bad, messages in refusals:
        compare_results.write(bad, tmp_path / "bad")
        status, out, err = merged([seed0, tmp_path / "bad"], tmp_path / "refused", capsys)
        assert status == 2 and out is None and not (tmp_path / "refused").exists()
        assert err.startswith("error:") and len(err.strip().splitlines()) == 1
        assert all(message in err for message in messages)
    status, _, err = merged([seed0, tmp_path / "nothing"], tmp_path / "refused", capsys)
    assert status == 2 and "holds no results.json" in err


def test_mean_and_sample_std_over_seeds() -> None:
    values = [0.81, 0.84, 0.8]
    stat = common.mean_std([*values, None])  # a failed seed is left out
    assert stat["n"] == 3 and stat["mean"] == pytest.approx(statistics.mean(values))
    assert stat["std"] == pytest.approx(statistics.stdev(values))
    assert compare_report.pct(stat) == f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"
    assert common.mean_std([0.5])["std"] is None and compare_report.pct(common.mean_std([0.5])) == "50.00"
    assert compare_report.pct(common.mean_std([None])) == "failed"


def test_a_failing_run_is_recorded_not_fatal(tmp_path: Path) -> None:
    """A run that fails (here: a batch larger than the dataset) returns its error line and exit status."""
    result = common.pretrain("dino_fmnist", {"data.batch_size": 10**6, "data.num_workers": 0}, tmp_path / "run")
    assert not result.ok and result.returncode == 2
    assert result.error.startswith("error:") and "data.batch_size" in result.error
    assert common.load_pretrain(tmp_path / "run") == result
