"""One command-line parser for every entry point: the same key=value rules and one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sslzoo.arguments import REQUIRED, Option, Parser, command_of, parse_overrides
from sslzoo.cli import main as train_main
from sslzoo.errors import UserError
from sslzoo.eval.__main__ import main as eval_main
from sslzoo.viz.__main__ import main as viz_main

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import ablations  # noqa: E402
import compare  # noqa: E402
import throughput  # noqa: E402

PARSER = Parser(
    "tool",
    {
        "steps": Option(int, REQUIRED, "optimizer steps"),
        "seeds": Option(list[int], [0], "seeds"),
        "limit": Option(int | None, None, "images"),
        "reuse": Option(bool, False, "keep runs"),
    },
    prefixes={"eval.": "eval"},
    rest="recipe",
    rest_words=("seed",),
)


def test_values_are_yaml_but_yes_no_stay_words_and_the_last_value_wins() -> None:
    assert parse_overrides(["a.b=1.0e-3", "c=1", "c=[1, 2]", "d=off", "e=", "f=true", "g=x: y: z"]) == {
        "a.b": 1e-3,
        "c": [1, 2],
        "d": "off",
        "e": "",
        "f": True,
        "g": "x: y: z",  # not YAML: kept as text
    }


def test_options_are_typed_and_the_rest_is_passed_on() -> None:
    args = PARSER.parse(["steps=5", "seeds=0,1,2", "eval.knn.ks=[20]", "optim.lr=0.1", "seed=3"])
    assert args.options == {"steps": 5, "seeds": [0, 1, 2], "limit": None, "reuse": False}
    assert args.passed == {"eval": {"knn.ks": [20]}, "recipe": {"optim.lr": 0.1, "seed": 3}}
    assert PARSER.parse(["steps=1", "seeds=4", "limit=null"]).options["seeds"] == [4]
    first = PARSER.parse(["steps=1"]).options["seeds"]
    first.append(9)
    assert PARSER.parse(["steps=1"]).options["seeds"] == [0]  # a list default is not shared between parses


@pytest.mark.parametrize(
    "argv, message",
    [
        (["steps"], "cannot read argument 'steps': write overrides as key=value"),
        (["stpes=1"], "unknown option 'stpes'; did you mean 'steps'? (tool takes: steps, seeds, limit, reuse, seed,"),
        (["seeds=1"], "tool needs steps=: optimizer steps"),
        (["steps=many"], "steps must be of type int, got 'many'"),
        (["steps=1", "seeds=1,x"], "seeds[1] must be of type int, got 'x'"),
        (["steps=1", "seeds="], "seeds= is empty"),
        (["steps=1", "reuse=no"], "reuse must be of type bool, got 'no'"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UserError) as err:
        PARSER.parse(argv)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_command_names_the_nearest() -> None:
    assert command_of(["knn", "run=x"], ("knn", "linear")) == ("knn", ["run=x"])
    with pytest.raises(UserError, match="unknown command 'lineer'; did you mean 'linear'"):
        command_of(["lineer"], ("knn", "linear"))


ENTRY_POINTS: dict[str, tuple[Callable[[list[str]], int], list[str]]] = {
    "train.py": (train_main, ["recipe=dino_fmnist"]),
    "python -m sslzoo.eval": (eval_main, ["knn"]),
    "python -m sslzoo.viz": (viz_main, ["cards"]),
    "benchmarks/compare.py": (compare.main, []),
    "benchmarks/ablations.py": (ablations.main, []),
    "benchmarks/throughput.py": (throughput.main, ["method=dino"]),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_has_the_same_rules(entry: str, capsys: pytest.CaptureFixture) -> None:
    main, head = ENTRY_POINTS[entry]
    with pytest.raises(SystemExit) as exit_info:
        main([*head, "oops"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "write overrides as key=value" in err and len(err.strip().splitlines()) == 1
    assert main(["help"]) == 0
    assert capsys.readouterr().out.strip()  # the usage
