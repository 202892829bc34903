"""Low-shot evaluation (sslzoo.eval.lowshot): class-balanced draws, the record, one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import one_line_error

import sslzoo.eval.evaluate
from sslzoo.backbones import build_model
from sslzoo.errors import UserError
from sslzoo.eval.__main__ import main as eval_main
from sslzoo.eval.lowshot import balanced_draw, per_class_counts, subset_protocol
from sslzoo.eval.protocol import load_protocol

LABELS = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)


def test_fractions_take_the_same_share_of_every_class() -> None:
    assert per_class_counts(LABELS, "fraction", 0.1) == {0: 5, 1: 3, 2: 2}
    assert per_class_counts(LABELS, "fraction", 0.01) == {0: 1, 1: 1, 2: 1}  # at least one image per class
    assert per_class_counts(LABELS, "fraction", 1.0) == {0: 50, 1: 30, 2: 20}
    assert per_class_counts(LABELS, "shots", 5) == {0: 5, 1: 5, 2: 5}
    with pytest.raises(UserError, match="exceeds the 20 training images of the smallest class"):
        per_class_counts(LABELS, "shots", 21)


def test_draws_are_balanced_fixed_by_their_seed_and_differ_between_seeds() -> None:
    counts = per_class_counts(LABELS, "shots", 4)
    first = balanced_draw(LABELS, counts, seed=0)
    assert torch.equal(first, balanced_draw(LABELS, counts, seed=0))
    assert not torch.equal(first, balanced_draw(LABELS, counts, seed=1))
    assert LABELS[first].bincount().tolist() == [4, 4, 4] and len(first.unique()) == 12


def test_the_probe_takes_its_step_budget_on_any_subset() -> None:
    p = load_protocol()
    low = p.lowshot.linear
    tiny = subset_protocol(p.linear, low, 10)  # one batch per epoch
    assert tiny.batch_size == 10 and tiny.epochs == low.steps and tiny.lr == low.lr and tiny.lr_scaling == "none"
    large = subset_protocol(p.linear, low, 6000)
    assert large.batch_size == low.batch_size and large.epochs * -(-6000 // low.batch_size) >= low.steps


# --------------------------------------------------------------------------- the command line

VIT = "vit_micro_patch4_28"
QUICK = ["train_limit=400", "test_limit=60", "lowshot.linear.steps=5"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "backbone.pth"
    torch.save(build_model(VIT, in_chans=1).state_dict(), path)
    return path


def test_lowshot_cli_writes_mean_and_std_from_one_extraction(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    calls = []
    extract = sslzoo.eval.evaluate.extract
    monkeypatch.setattr(sslzoo.eval.evaluate, "extract", lambda *a, **k: calls.append(1) or extract(*a, **k))
    argv = ["lowshot", f"ckpt={weights}", f"backbone={VIT}", "data.name=fmnist", f"out={tmp_path}"]
    assert eval_main([*argv, "fractions=0.05", "shots=1,2", "draws=3", *QUICK]) == 0
    assert len(calls) == 2  # the train and test splits, once, for every setting and draw
    record = json.loads((tmp_path / "eval_lowshot.json").read_text())
    assert (record["evaluation"], record["protocol"], record["draws"]) == ("offline", "low-shot", 3)
    assert [r["setting"] for r in record["results"]] == ["5%", "1-shot", "2-shot"]
    five, one, two = record["results"]
    assert (one["train_images"], two["train_images"], one["knn_k"]) == (10, 20, 10)
    assert 15 <= five["train_images"] <= 25  # 5% of each class of the first 400 images
    for r in record["results"]:
        for key in ("knn_top1", "linear_top1"):
            draws = r[key]["draws"]
            assert len(draws) == 3 and all(0 <= v <= 1 for v in draws)
            assert r[key]["mean"] == pytest.approx(sum(draws) / 3)
    assert record["protocol_settings"]["lowshot"]["shots"] == [1, 2]
    assert "1-shot" in capsys.readouterr().out
    again = tmp_path / "again"
    assert eval_main([*argv[:-1], f"out={again}", "fractions=0.05", "shots=1,2", "draws=3", *QUICK]) == 0
    assert json.loads((again / "eval_lowshot.json").read_text())["results"] == record["results"]  # fixed seeds


@pytest.mark.parametrize(
    "args, text",
    [
        (["fractions=0"], "fractions: 0 is outside (0, 1]"),
        (["fractions=0.1,1.5"], "fractions: 1.5 is outside (0, 1]"),
        (["shots=0"], "shots: 0 is not positive"),
        (["shots=1,-2"], "shots: -2 is not positive"),
        (["draws=0"], "draws=0 must be a positive integer"),
        (["shots=500"], "exceeds the"),
        (["fractions=a"], "must be of type float"),
    ],
)
def test_lowshot_bad_input_is_one_line(
    weights: Path, args: list[str], text: str, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    argv = ["lowshot", f"ckpt={weights}", f"backbone={VIT}", "data.name=fmnist", f"out={tmp_path}", *QUICK, *args]
    assert text in one_line_error(eval_main, argv, capsys)


def test_lowshot_options_belong_to_lowshot(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        eval_main(["knn", "run=.", "shots=1"])
    assert "shots= is an option of lowshot" in capsys.readouterr().err
