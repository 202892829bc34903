"""Bad input to ``python train.py`` is answered with one clear line and exit status 2, never a traceback.

Most cases call the command-line entry point in this process (the same code
path as ``train.py``); ``test_real_processes_print_one_line`` checks a few of
them as real processes.
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sslzoo.data
from sslzoo.checkpoint import FORMAT
from sslzoo.cli import main
from sslzoo.config import available_recipes
from sslzoo.recipes import load_config

REPO = Path(__file__).resolve().parents[1]
RECIPE = "recipe=dino_fmnist"


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """``cli(*args)`` runs ``train.py`` in-process on a tiny CPU config writing into
    tmp_path; asserts exit status 2 and a single ``error:`` line, which it returns."""

    def run(*args: str) -> str:
        small = [f"trainer.out_dir={tmp_path / 'run'}", "trainer.device=cpu", "data.num_workers=0", "resume=none"]
        with pytest.raises(SystemExit) as stop:
            main([*small, *args] if any(a.startswith("recipe=") for a in args) else list(args))
        assert stop.value.code == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
        return lines[0]

    return run


# --------------------------------------------------------------------------- recipes


def test_unknown_recipe_lists_the_available_ones(cli) -> None:
    line = cli("recipe=dino_fmnst")
    assert "unknown recipe 'dino_fmnst'" in line and "did you mean 'dino_fmnist'" in line
    assert all(name in line for name in available_recipes())


def test_missing_recipe_file_and_missing_recipe(cli, tmp_path: Path) -> None:
    assert "does not exist" in cli(f"recipe={tmp_path / 'nope.yaml'}")
    assert "name a recipe" in cli("optim.lr=0.1")
    assert "write overrides as key=value" in cli(RECIPE, "max_steps")


def test_recipe_whose_yaml_does_not_parse_names_file_and_line(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("inherit: dino_fmnist\nmethod:\n  out_dim: 64: 3\n")
    assert cli(f"recipe={bad}").startswith(f"error: {bad}:3: the YAML does not parse")
    child = tmp_path / "child.yaml"  # the broken file is named even when inherited
    child.write_text(f"inherit: {bad}\n")
    assert f"{bad}:3:" in cli(f"recipe={child}")


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("optim.lrr=0.1", "optim.lr"),
        ("trainer.max_step=5", "trainer.max_steps"),
        ("data.batchsize=8", "data.batch_size"),
        ("method.out_dimm=64", "method.out_dim"),
        ("sed=1", "seed"),
    ],
)
def test_misspelled_override_suggests_the_nearest_key(cli, override: str, suggestion: str) -> None:
    key = override.partition("=")[0]
    assert f"unknown key '{key}'; did you mean '{suggestion}'?" in cli(RECIPE, override)


@pytest.mark.parametrize(
    ("section", "suggestion"),
    [
        ("trainer:\n  chekpoint_every: 5\n", "trainer.checkpoint_every"),
        ("method:\n  student_tmp: 0.1\n", "method.student_temp"),
    ],
)
def test_misspelled_key_in_a_recipe_file_suggests_the_nearest_key(
    cli, tmp_path: Path, section: str, suggestion: str
) -> None:
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(f"inherit: dino_fmnist\n{section}")
    assert f"did you mean '{suggestion}'?" in cli(f"recipe={recipe}")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=abc", "data.batch_size must be of type int, got 'abc'"),
        ("data.batch_size=2.5", "data.batch_size must be of type int, got 2.5"),
        ("trainer.compile=maybe", "trainer.compile must be of type bool"),
        ("augment.global_scale=0.5", "augment.global_scale must be a list"),
        ("method.student_temp=hot", "method.student_temp must be of type float"),
        ("optim.lr=inf", "optim.lr must be a finite number"),
        ("data=3", "data must be a mapping"),
    ],
)
def test_value_of_the_wrong_type(cli, override: str, message: str) -> None:
    assert message in cli(RECIPE, override)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=0", "data.batch_size must be a positive integer"),
        ("optim.lr=-1", "optim.lr must be positive"),
        ("augment.flip_p=1.5", "augment probabilities must lie in [0, 1]"),
        ("augment.global_scale=[0.5,0.1]", "augment.global_scale must be [min, max]"),
        ("trainer.checkpoint_every=0", "trainer.checkpoint_every must be a positive integer"),
        ("trainer.snapshot_every=-1", "trainer.snapshot_every must be 0 (off) or a positive integer"),
        ("trainer.device=gpu", "trainer.device='gpu' is not allowed; choose one of auto, cpu, cuda"),
        ("data.on_corrupt=ignore", "choose one of skip, error"),
        ("method.name=dyno", "unknown method 'dyno' (did you mean 'dino'?)"),
        ("resume=/no/such/last.pt", "resume=/no/such/last.pt is neither auto, none nor an existing checkpoint"),
    ],
)
def test_value_out_of_range_or_choices(cli, override: str, message: str) -> None:
    assert message in cli(RECIPE, override)


# --------------------------------------------------------------------------- data


def test_imagefolder_missing_or_empty(cli, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert f"data.root={missing} is not a folder" in cli(RECIPE, "data.name=imagefolder", f"data.root={missing}")
    no_classes = tmp_path / "no_classes"
    (no_classes / "train").mkdir(parents=True)
    assert "no images in" in cli(RECIPE, "data.name=imagefolder", f"data.root={no_classes}")
    empty_classes = tmp_path / "empty_classes"
    (empty_classes / "train" / "cat").mkdir(parents=True)
    assert "no images in" in cli(RECIPE, "data.name=imagefolder", f"data.root={empty_classes}")


def write_idx(path: Path, array: torch.Tensor) -> None:
    """An uncompressed unsigned-byte IDX file."""
    header = struct.pack(">HBB", 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    path.write_bytes(header + array.to(torch.uint8).numpy().tobytes())


def test_fmnist_missing_without_download(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sslzoo.data, "FMNIST_SYSTEM_DIR", tmp_path / "not_installed")
    line = cli(RECIPE, f"data.root={tmp_path}", "data.download=false")
    assert "Fashion-MNIST not found" in line and "data.download=true" in line


def test_fmnist_empty(cli, tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", torch.zeros(0, 28, 28))
    write_idx(tmp_path / "train-labels-idx1-ubyte", torch.zeros(0))
    assert "disagree or are empty" in cli(RECIPE, f"data.root={tmp_path}")


def test_fmnist_corrupt_files_name_the_file(cli, tmp_path: Path) -> None:
    # data.root is searched before the system copy, so these files shadow it
    system = sslzoo.data.FMNIST_SYSTEM_DIR
    images = tmp_path / "train-images-idx3-ubyte.gz"
    os.symlink(system / "train-labels-idx1-ubyte.gz", tmp_path / "train-labels-idx1-ubyte.gz")
    whole = (system / "train-images-idx3-ubyte.gz").read_bytes()
    images.write_bytes(whole[: len(whole) // 2])  # a truncated download
    assert f"{images} is corrupt" in cli(RECIPE, f"data.root={tmp_path}")
    images.write_bytes(gzip.compress(b"<html>not found</html>"))  # a web page saved as the file
    assert f"{images} is corrupt" in cli(RECIPE, f"data.root={tmp_path}")


def test_fewer_images_than_one_batch(cli, tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", torch.zeros(5, 28, 28))
    write_idx(tmp_path / "train-labels-idx1-ubyte", torch.zeros(5))
    assert "fewer than one batch: lower data.batch_size" in cli(RECIPE, f"data.root={tmp_path}")


# --------------------------------------------------------------------------- output and checkpoints


def test_output_directory_that_cannot_be_written(cli, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "run"
    assert f"cannot write to trainer.out_dir={out}" in cli(RECIPE, f"trainer.out_dir={out}")


def test_output_directory_on_a_read_only_file_system(cli, tmp_path: Path) -> None:
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:  # root ignores file permissions: only a read-only mount makes a real case
        pytest.skip(f"cannot mount a read-only tmpfs here ({done.stderr.decode().strip()})")
    try:
        line = cli(RECIPE, f"trainer.out_dir={mount / 'run'}")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    assert "Read-only file system" in line and "choose a writable folder" in line


def test_resuming_a_checkpoint_of_another_method_and_backbone(cli, tmp_path: Path) -> None:
    other = tmp_path / "simclr.pt"
    torch.save({"format": FORMAT, "method": "simclr", "backbone": "resnet18", "model": {}}, other)
    line = cli(RECIPE, "method.out_dim=64", "augment.local_crops=0", f"resume={other}")
    backbone = load_config("dino_fmnist").model.backbone
    assert "trained with method simclr on resnet18" in line and f"this run is dino on {backbone}" in line


def test_real_processes_print_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cases = {
        "recipe=dino_fmnst": "error: unknown recipe 'dino_fmnst'",
        "optim.lr=-1": "error: optim.lr must be positive",
        f"trainer.out_dir={blocker / 'run'}": "error: cannot write to trainer.out_dir",
    }
    for arg, start in cases.items():
        args = [arg] if arg.startswith("recipe=") else [RECIPE, arg]
        done = subprocess.run(
            [sys.executable, str(REPO / "train.py"), *args, "trainer.device=cpu", "data.num_workers=0"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(start), done.stderr
