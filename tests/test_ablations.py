"""benchmarks/ablations.py: what each ablation switches off, the budgets, and a tiny end-to-end run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sslzoo.build import build_method
from sslzoo.recipes import load_config
from sslzoo.schedules import Clock

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import ablations  # noqa: E402


def experiment(name: str) -> ablations.Experiment:
    return next(e for e in ablations.experiments() if e.name == name)


def config_of(name: str, steps: int = 10):
    e = experiment(name)
    return load_config(e.recipe, ablations.overrides_of(e, steps, {"trainer.device": "cpu"}))


def test_dino_ablations_switch_off_centring_or_sharpening() -> None:
    both, no_centring, no_sharpening = (config_of(n).method for n in ("dino", "dino_no_centring", "dino_no_sharpening"))
    assert both.center_momentum < 1 and both.teacher_temp < both.student_temp  # centring and sharpening on
    assert no_centring.center_momentum == 1.0  # C <- C: the centre stays 0
    assert no_centring.teacher_temp == both.teacher_temp
    assert no_sharpening.teacher_temp == no_sharpening.warmup_teacher_temp == no_sharpening.student_temp
    assert no_sharpening.center_momentum == both.center_momentum


def test_byol_ablations_drop_the_predictor_or_make_the_target_the_online_network() -> None:
    from torch import nn

    no_predictor = build_method(config_of("byol_no_predictor"))
    assert isinstance(no_predictor.predictor, nn.Identity)
    momentum0 = build_method(config_of("byol_momentum0", steps=10))
    assert all(momentum0.momentum(Clock(step, 10, 5, 10)) == 0.0 for step in range(10))
    reference = build_method(config_of(f"byol_b{ablations.BATCH_SIZES[0]}", steps=10))
    assert not isinstance(reference.predictor, nn.Identity) and reference.momentum(Clock(0, 10, 5, 10)) > 0.9


def test_simsiam_ablations_sit_beside_byol_and_drop_the_predictor_or_the_stop_gradient() -> None:
    import torch

    group = {e.name for e in ablations.experiments() if "simsiam" in e.groups}
    assert group == {"simsiam", "simsiam_no_predictor", "simsiam_no_stop_gradient", "byol_b128", "byol_momentum0"}
    views = [torch.randn(8, 1, 28, 28) for _ in range(2)]
    methods, projector_grads = {}, {}
    for name in ("simsiam", "simsiam_no_predictor", "simsiam_no_stop_gradient"):
        torch.manual_seed(0)
        methods[name] = method = build_method(config_of(name)).train()
        assert not any("target" in n for n, _ in method.named_modules()), name  # no momentum encoder in any
        method.training_step(views, Clock(0, 10, 5, 10)).loss.backward()
        projector_grads[name] = torch.cat([p.grad.flatten() for p in method.f.head.parameters()])
    assert methods["simsiam"].h is not None and methods["simsiam_no_predictor"].h is None
    assert methods["simsiam"].D.stop_gradient and not methods["simsiam_no_stop_gradient"].D.stop_gradient
    # same weights and views: without the stop-gradient the projector also receives D's gradient through z
    assert not torch.allclose(projector_grads["simsiam"], projector_grads["simsiam_no_stop_gradient"])


def test_vicreg_ablations_zero_the_variance_or_the_covariance_coefficient() -> None:
    full, no_variance, no_covariance = (
        config_of(n).method for n in ("vicreg", "vicreg_no_variance", "vicreg_no_covariance")
    )
    assert full.mu_variance > 0 and full.nu_covariance > 0
    assert no_variance.mu_variance == 0 and no_variance.nu_covariance == full.nu_covariance
    assert no_covariance.nu_covariance == 0 and no_covariance.mu_variance == full.mu_variance


def test_a_tiny_vicreg_ablation_logs_the_terms_and_the_effective_rank(tmp_path: Path) -> None:
    out, runs = tmp_path / "out", tmp_path / "runs"
    command = [sys.executable, str(BENCHMARKS / "ablations.py"), "only=vicreg", "steps=2", f"out={out}", f"runs={runs}"]
    command += ["data.batch_size=16", "trainer.device=cpu", "trainer.log_every=1", "eval.device=cpu"]
    command += ["eval.train_limit=200", "eval.test_limit=100", "method.proj_hidden_dim=64", "method.out_dim=64"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    entries = {e["name"]: e for e in json.loads((out / "ablations.json").read_text())["experiments"]}
    assert set(entries) == {"vicreg", "vicreg_no_variance", "vicreg_no_covariance"}
    for entry in entries.values():
        assert entry["status"] == "ok" and entry["steps"] == 2
        assert {"embed_rank", "embed_std", "variance", "covariance"} <= set(entry["final"])
    assert (out / "vicreg_variance_covariance.png").stat().st_size > 1000


def test_the_batch_sweep_sees_the_same_number_of_images_at_every_batch_size() -> None:
    sweep = [e for e in ablations.experiments() if "batch" in e.groups]
    assert {(e.recipe, e.batch_size) for e in sweep} == {
        (f"{m}_fmnist", b) for m in ("simclr", "byol") for b in ablations.BATCH_SIZES
    }
    for steps in (None, 3):
        images = {ablations.budget(e, steps) * e.batch_size for e in sweep}
        assert images == {(steps or ablations.BATCH_STEPS) * ablations.BATCH_SIZES[0]}


def test_seed_and_dotted_keys_go_to_every_training_run() -> None:
    options, train, evaluation = ablations.parse(["seed=3", "data.num_workers=2", "eval.test_limit=50"])
    assert train == {"seed": 3, "data.num_workers": 2} and evaluation["test_limit"] == 50
    e = experiment("simclr_b8")
    config = load_config(e.recipe, ablations.overrides_of(e, 10, train))
    assert config.seed == 3 and config.data.num_workers == 2 and config.data.batch_size == 8


def test_bad_options_fail_before_any_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for argv, message in (
        (["only=dinno"], "choose groups among dino, byol, batch, simsiam, vicreg"),
        (["steps=0"], "steps=0 must be a positive integer"),
        (["stpes=3"], "unknown option 'stpes'"),
        ([f"runs={tmp_path}", "only=dino", "method.centre_momentum=1"], "unknown key 'method.centre_momentum'"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            ablations.main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_tiny_dino_ablation_writes_json_markdown_and_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # relative out= and runs=, from another working directory: the results name no machine's paths
    out, runs = tmp_path / "out", tmp_path / "runs"
    command = [sys.executable, str(BENCHMARKS / "ablations.py"), "only=dino", "steps=2", "out=out", "runs=runs"]
    command += ["data.batch_size=16", "trainer.device=cpu", "trainer.log_every=1", "eval.device=cpu"]
    command += ["eval.train_limit=200", "eval.test_limit=100", "seed=1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert str(tmp_path) not in (out / "ablations.json").read_text()
    results = json.loads((out / "ablations.json").read_text())
    entries = {e["name"]: e for e in results["experiments"]}
    assert set(entries) == {"dino", "dino_no_centring", "dino_no_sharpening"}
    for entry in entries.values():
        assert entry["status"] == "ok" and entry["steps"] == 2
        assert 0 <= entry["knn_top1"] <= 1
        assert {"teacher_entropy", "kl", "embed_std", "embed_rank"} <= set(entry["final"])
        assert (runs / entry["name"] / "backbone.pt").is_file()
        assert "trainer.max_steps=2" in entry["command"]
    # one floor per backbone the runs trained (dino_fmnist's), initialised with the runs' seed
    floors = results["random_init_knn_top1"]
    assert set(floors) == {e["backbone"] for e in entries.values()} == {load_config("dino_fmnist").model.backbone}
    assert all(0 <= top1 <= 1 for top1 in floors.values()) and results["random_init_seed"] == 1
    assert (out / "dino_centring_sharpening.png").stat().st_size > 1000
    assert "| dino |" in (out / "ablations.md").read_text()
    # reuse=true keeps the finished runs, reports their own training time and says so in the table
    again = subprocess.run(command + ["reuse=true"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    reran = {e["name"]: e for e in json.loads((out / "ablations.json").read_text())["experiments"]}
    assert all(e["reused"] and e["train_wall_s"] == entries[e["name"]]["train_wall_s"] for e in reran.values())
    assert "3 run(s) reused from an earlier invocation" in (out / "ablations.md").read_text()
    # a run is reused only while its saved config is what the recipe and overrides resolve to now
    from _common import finished_run

    dino = next(e for e in ablations.experiments() if e.name == "dino")
    train = {"data.batch_size": 16, "trainer.device": "cpu", "trainer.log_every": 1, "seed": 1}
    overrides = ablations.overrides_of(dino, 2, train)
    monkeypatch.chdir(tmp_path)  # where the runs were made: their saved out_dir is relative to it
    assert finished_run(Path("runs/dino"), dino.recipe, overrides) is not None
    assert finished_run(Path("runs/dino"), dino.recipe, {**overrides, "method.teacher_temp": 0.05}) is None
