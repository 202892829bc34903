"""benchmarks/compare.py: end to end on a tiny budget with every registered method (the files
and their schema, not the accuracy), its settings parsing, statistics and failure handling."""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from sslzoo.methods import METHODS, method_class

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "compare.py"
FILES = ("results.json", "results.md", "results.png", "loss_curves.png", "accuracy_curves.png")


def load_compare():
    spec = importlib.util.spec_from_file_location("compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


compare = load_compare()
common = sys.modules["_common"]

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
]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("compare")
    out, runs = base / "results", base / "runs"
    argv = [sys.executable, str(SCRIPT), *TINY, f"out={out}", f"runs={runs}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


def test_compare_writes_every_file_with_the_schema(results: tuple[Path, dict]) -> None:
    out, data = results
    assert all((out / name).is_file() for name in FILES)
    methods = METHODS.names()
    assert data["schema"] == compare.SCHEMA
    assert [r["name"] for r in data["rows"]] == [*methods, "raw_pixels", "random_init"]
    for row in data["rows"]:
        for key in (compare.KNN_KEY, compare.LINEAR_KEY):
            assert 0.0 <= row[key]["mean"] <= 1.0 and row[key]["n"] == 1 and row[key]["std"] is None
        assert row[compare.KNN_KEY]["k"] == 20
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
        assert cfg["model"]["backbone"] == "vit_micro_patch4_28" and cfg["seed"] == 0
        assert cfg["trainer"]["online_probe"] is True
        assert cfg["augment"]["local_crops"] == (1 if method_class(run["name"]).supports_local_crops else 0)
        assert cfg["augment"]["global_crops"] == 2
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
    for name in ("results.png", "loss_curves.png", "accuracy_curves.png"):
        meta = json.loads(Image.open(out / name).text["Description"])
        assert meta["provenance"]["git_commit"] == prov["git_commit"]
        assert meta["settings"]["seeds"] == [0]
        assert set(meta["configs"]) == {f"{m}/seed0" for m in METHODS.names()}


# --------------------------------------------------------------------------- pieces


def test_settings_split_into_budget_recipe_and_protocol_overrides() -> None:
    settings, train, evaluation = compare.parse(["methods=dino", "seeds=0,1,2", "optim.lr=0.1", "eval.knn.ks=[20]"])
    assert settings.methods == ["dino"] and settings.seeds == [0, 1, 2]
    assert train == {"optim.lr": 0.1} and evaluation == {"knn.ks": [20]}
    assert compare.parse([])[0].methods == METHODS.names()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["methods=dinoo"], "did you mean 'dino'"),
        (["steps=0"], "must be positive"),
        (["seeds=1,1"], "distinct"),
        (["methods=dino", "optim.lrr=1"], "did you mean 'optim.lr'"),  # caught before any run starts
        (["eval.knn.headline_k=7"], "headline_k"),
        (["trainer.max_steps=5"], "with steps="),  # the budget is set once, for every method
    ],
)
def test_bad_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        compare.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1


def test_mean_and_sample_std_over_seeds() -> None:
    values = [0.81, 0.84, 0.8]
    stat = common.mean_std([*values, None])  # a failed seed is left out
    assert stat["n"] == 3 and stat["mean"] == pytest.approx(statistics.mean(values))
    assert stat["std"] == pytest.approx(statistics.stdev(values))
    assert compare.pct(stat) == f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"
    assert common.mean_std([0.5])["std"] is None and compare.pct(common.mean_std([0.5])) == "50.00"
    assert compare.pct(common.mean_std([None])) == "failed"


def test_a_failing_run_is_recorded_not_fatal(tmp_path: Path) -> None:
    """A run that fails (here: a batch larger than the dataset) returns its error line and exit status."""
    result = common.pretrain("dino_fmnist", {"data.batch_size": 10**6, "data.num_workers": 0}, tmp_path / "run")
    assert not result.ok and result.returncode == 2
    assert result.error.startswith("error:") and "data.batch_size" in result.error
    assert common.load_pretrain(tmp_path / "run") == result
