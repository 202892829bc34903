"""Fault tolerance, tested with real training processes and real signals.

The fault tests run ``python train.py`` in a subprocess on a tiny ImageFolder
cut from the Fashion-MNIST test set (40 images, 5 steps per epoch, so runs cross
epoch boundaries) with a shrunken DINO, and signal, kill or starve it (a full
tmpfs). Runs are single-threaded (``OMP_NUM_THREADS=1``): deterministic, and
fast on a shared 2-core machine. Narrower cases run in-process.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslzoo.checkpoint import FORMAT, atomic_save, load_checkpoint
from sslzoo.data import FMNIST_SYSTEM_DIR, read_idx
from sslzoo.errors import UserError
from sslzoo.methods import method_class
from sslzoo.metrics_log import MetricsLog, NonFiniteLoss
from sslzoo.recipes import load_config
from sslzoo.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
IMAGES = 40
BATCH = 8
STEPS = 12  # 5 steps per epoch: the runs cross two epoch boundaries
TIMEOUT = 240  # seconds for one subprocess, generous for a loaded machine
SMALL_DINO = {
    "method.out_dim": 64,
    "method.proj_hidden_dim": 64,
    "method.bottleneck_dim": 32,
    "augment.local_crops": 2,
    "data.batch_size": BATCH,
}
TINY = [
    "recipe=dino_fmnist",
    "data.name=imagefolder",
    "data.num_workers=0",
    "trainer.device=cpu",
    "trainer.log_every=1",
    "logger.wandb=off",
    *(f"{key}={value}" for key, value in SMALL_DINO.items()),
]


# --------------------------------------------------------------------------- helpers


def fmnist_folder(root: Path, count: int = IMAGES) -> Path:
    """An ImageNet-layout folder (train/CLASS/*.png) of real Fashion-MNIST test images."""
    images = read_idx(FMNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz")[:count]
    labels = read_idx(FMNIST_SYSTEM_DIR / "t10k-labels-idx1-ubyte.gz")[:count]
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / "train" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).convert("RGB").save(folder / f"{i:03d}.png")
    return root


def start(data: Path, out: Path, *overrides: str, **popen: object) -> subprocess.Popen:
    """``python train.py`` on the tiny config, writing into ``out``."""
    args = [*TINY, f"data.root={data}", f"trainer.out_dir={out}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    """Wait for ``proc``; its exit status and its output (stdout then stderr)."""
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"training process timed out; stderr:\n{err[-2000:]}")
    return proc.returncode, out + err


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, poll: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail if ``proc`` exits first."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) too early:\n{proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the run")
        time.sleep(poll)


def records(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]  # a line being written may be torn


def logged_step(out: Path) -> int:
    rows = records(out)
    return rows[-1]["step"] if rows else 0


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def checkpoint(out: Path, method: str = "dino") -> dict:
    """The run's last checkpoint, checked to be ``method`` on its ``*_fmnist`` recipe's backbone."""
    backbone = load_config(f"{method}_fmnist").model.backbone
    return load_checkpoint(out / "checkpoints" / "last.pt", method, backbone)


def temp_files(out: Path) -> list[str]:
    return [name for name in os.listdir(out / "checkpoints") if name.endswith(".tmp")]


def assert_same_run(out: Path, reference: Path) -> None:
    """Identical parameters and optimizer state (bit for bit) and identical logs: losses and every
    schedule (lr, weight decay, momentum, teacher temperature), each step logged once."""
    assert [row["step"] for row in records(out)] == list(range(1, STEPS + 1))
    measured = ("images_per_s", "peak_rss_bytes")  # of the machine, not of the run
    for ours_row, theirs_row in zip(records(out), records(reference)):
        assert {k: v for k, v in ours_row.items() if k not in measured} == {
            k: v for k, v in theirs_row.items() if k not in measured
        }
    ours, theirs = checkpoint(out), checkpoint(reference)
    assert ours["step"] == theirs["step"] == STEPS
    assert ours["model"].keys() == theirs["model"].keys()
    for key, value in theirs["model"].items():
        assert torch.equal(ours["model"][key], value), key
    for ours_state, theirs_state in zip(ours["optimizer"]["state"].values(), theirs["optimizer"]["state"].values()):
        assert all(torch.equal(ours_state[k], v) for k, v in theirs_state.items())


@pytest.fixture(autouse=True)
def one_thread():
    """In-process runs single-threaded too: the machine is shared, and small ops spin on idle threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fmnist_folder(tmp_path_factory.mktemp("fmnist_folder"))


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run that the interrupted ones must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    status, output = finish(start(data, out, f"trainer.max_steps={STEPS}", "trainer.checkpoint_every=1000"))
    assert status == 0, output[-2000:]
    return out


# --------------------------------------------------------------------------- signals and resume


def assert_stopped_cleanly(proc: subprocess.Popen, signum: int, out: Path) -> None:
    """Exit status 128 + signum, no traceback, a checkpoint of the last logged step, no process left behind."""
    status, output = finish(proc)
    assert status == 128 + signum, output[-2000:]
    assert f"stopped by {signal.Signals(signum).name}" in output and "Traceback" not in output
    assert not error_lines(output)
    assert checkpoint(out)["step"] == logged_step(out)
    time.sleep(1.0)
    with pytest.raises(ProcessLookupError):  # no DataLoader worker outlived the trainer
        os.killpg(proc.pid, 0)


def test_ctrl_c_saves_a_checkpoint_and_resume_reproduces_the_uninterrupted_run(
    data: Path, reference: Path, tmp_path: Path
) -> None:
    # checkpoint_every is past the end of the run: the only checkpoint is the one SIGINT writes.
    # DataLoader workers too (the reference has none): the data must not depend on them.
    run = [f"trainer.max_steps={STEPS}", "trainer.checkpoint_every=1000", "data.num_workers=2"]
    proc = start(data, tmp_path, *run, start_new_session=True)
    wait_for(lambda: logged_step(tmp_path) >= 3, proc)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
    assert_stopped_cleanly(proc, signal.SIGINT, tmp_path)
    stopped_at = checkpoint(tmp_path)["step"]
    assert 3 <= stopped_at < STEPS

    status, output = finish(start(data, tmp_path, *run))  # resume=auto is the default
    assert status == 0, output[-2000:]
    assert f"resumed from {tmp_path / 'checkpoints' / 'last.pt'} at step {stopped_at}" in output
    assert_same_run(tmp_path, reference)


def test_sigkill_while_writing_a_checkpoint_keeps_the_last_one_and_resume_reproduces_the_run(
    data: Path, reference: Path, tmp_path: Path
) -> None:
    run = [f"trainer.max_steps={STEPS}", "trainer.checkpoint_every=1"]  # a checkpoint written every step
    last = tmp_path / "checkpoints" / "last.pt"
    for _attempt in range(4):  # each attempt resumes the same run, as a user would
        proc = start(data, tmp_path, *run)
        wait_for(lambda: last.exists() and bool(temp_files(tmp_path)), proc, poll=0.001)
        proc.kill()  # SIGKILL
        finish(proc)
        if temp_files(tmp_path):  # the kill landed while the next checkpoint was being written
            break
    else:
        pytest.fail("never caught the run while it was writing a checkpoint")
    killed = checkpoint(tmp_path)  # the previous complete checkpoint loads
    assert 1 <= killed["step"] < STEPS

    status, output = finish(start(data, tmp_path, *run))
    assert status == 0, output[-2000:]
    assert f"at step {killed['step']}" in output
    assert not temp_files(tmp_path)  # the half-written file of the killed run is cleaned up
    assert_same_run(tmp_path, reference)


def test_sigterm_to_the_whole_process_group_with_dataloader_workers(data: Path, tmp_path: Path) -> None:
    """As a job scheduler stops a job: SIGTERM to the trainer and its DataLoader workers."""
    proc = start(
        data,
        tmp_path,
        "trainer.max_steps=500",
        "trainer.checkpoint_every=1000",
        "data.num_workers=2",
        start_new_session=True,
    )
    wait_for(lambda: logged_step(tmp_path) >= 2, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    assert_stopped_cleanly(proc, signal.SIGTERM, tmp_path)
    assert checkpoint(tmp_path)["step"] >= 2


def test_metrics_log_survives_a_torn_last_line_and_drops_steps_to_be_redone(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 2.0}\n{"step": 3, "loss": 3.0}\n{"step": 4, "lo')
    log = MetricsLog.__new__(MetricsLog)  # only the file handling, no wandb
    log.path = path
    log.truncate_after(2)
    assert path.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 2.0}\n'
    assert not list(tmp_path.glob("*.tmp"))


# --------------------------------------------------------------------------- non-finite losses


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(data: Path, tmp_path: Path) -> None:
    # lr 1e30: step 1 is warm-up (lr 0), step 2 blows the weights up, a later loss is not finite.
    # With DataLoader workers: the error exit must not hang on them.
    run = ["trainer.max_steps=50", "trainer.checkpoint_every=1", "optim.lr=1e30", "data.num_workers=2"]
    proc = start(data, tmp_path, *run)
    status, output = finish(proc)
    assert status == 2 and "Traceback" not in output
    (line,) = error_lines(output)
    step = logged_step(tmp_path) + 1
    assert f"at step {step};" in line and "the last good checkpoint is" in line and "on_nonfinite=skip" in line
    kept = checkpoint(tmp_path)
    assert kept["step"] == step - 1 >= 1
    assert not temp_files(tmp_path)


@pytest.mark.parametrize("recipe", ["dino_fmnist", "byol_fmnist"])  # BYOL: BatchNorm running statistics
def test_skip_option_skips_only_the_non_finite_step(recipe: str, tiny_config, monkeypatch, capsys) -> None:
    small = SMALL_DINO if recipe == "dino_fmnist" else {"method.proj_hidden_dim": 32, "method.pred_hidden_dim": 32}
    cfg = tiny_config(recipe, **small, **{"trainer.max_steps": 3, "trainer.on_nonfinite": "skip"})
    method = method_class(cfg.method.name)
    real_step = method.training_step

    def nan_at_second_step(self, views, clock):
        out = real_step(self, views, clock)
        if clock.step == 1:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(method, "training_step", nan_at_second_step)
    trainer = Trainer(cfg)
    snapshots = []
    real_trainer_step = trainer.step

    def step_and_snapshot(*args):
        record = real_trainer_step(*args)
        snapshots.append({k: v.clone() for k, v in trainer.method.state_dict().items()})
        return record

    trainer.step = step_and_snapshot
    before = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    trainer.fit()
    changed = [any(not torch.equal(a[k], b[k]) for k in a) for a, b in zip([before, *snapshots], snapshots)]
    assert changed == [True, False, True]  # the skipped step left every weight, buffer and the teacher alone
    assert trainer.nonfinite.skipped == 1
    assert checkpoint(Path(cfg.trainer.out_dir), cfg.method.name)["skipped_steps"] == 1
    rows = records(Path(cfg.trainer.out_dir))
    assert [row["step"] for row in rows] == [1, 2, 3] and rows[1]["skipped"] and np.isnan(rows[1]["loss"])
    assert "loss is nan at step 2; step skipped" in capsys.readouterr().out


def test_nan_stop_in_process_raises_a_user_error_naming_the_step(tiny_config, monkeypatch) -> None:
    cfg = tiny_config("dino_fmnist", **SMALL_DINO)
    dino = method_class("dino")
    real_step = dino.training_step

    def inf_at_third_step(self, views, clock):
        out = real_step(self, views, clock)
        if clock.step == 2:
            out.loss = out.loss + float("inf")
        return out

    monkeypatch.setattr(dino, "training_step", inf_at_third_step)
    with pytest.raises(NonFiniteLoss, match=r"loss is inf at step 3; the last good checkpoint is .*last\.pt"):
        Trainer(cfg).fit()
    assert checkpoint(Path(cfg.trainer.out_dir))["step"] == 2  # checkpoint_every=2 in tiny_config


# --------------------------------------------------------------------------- checkpoints


def test_checkpoints_load_weights_only_and_refuse_pickled_code(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "method": "dino", "backbone": "vit", "model": Payload()}, path)
    with pytest.raises(UserError, match="unreadable or not an sslzoo checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_checkpoint_of_another_method_or_backbone_names_both(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    torch.save({"format": FORMAT, "method": "simclr", "backbone": "resnet18", "model": {}}, path)
    with pytest.raises(UserError) as err:
        load_checkpoint(path, "dino", "vit_micro_patch4_28")
    for name in ("simclr", "resnet18", "dino", "vit_micro_patch4_28"):
        assert name in str(err.value)
    load_checkpoint(path, "simclr", "resnet18")  # the matching run loads it


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    atomic_save({"format": FORMAT, "method": "dino", "backbone": "b", "w": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match="unreadable"):
        load_checkpoint(path, "dino", "b")


# --------------------------------------------------------------------------- a full disk


def test_full_disk_during_checkpointing_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    atomic_save({"step": 1, "w": torch.zeros(10)}, path)
    real_save = torch.save

    def save_until_full(obj, file, *args, **kwargs):
        file.write(b"partial bytes")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save_until_full)
    with pytest.raises(UserError, match="No space left on device.*previous file there is kept"):
        atomic_save({"step": 2, "w": torch.ones(10)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_stale_temporary_files_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".backbone.pt.abc123.tmp"  # another file's writer: left alone
    other.write_bytes(b"x")
    atomic_save({"step": 1}, tmp_path / "last.pt")
    assert sorted(os.listdir(tmp_path)) == [".backbone.pt.abc123.tmp", "last.pt"]


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 64 MiB tmpfs (needs root); skipped where the sandbox cannot mount."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); the monkeypatched test covers it")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> None:
    """Write zeros into ``folder`` until the file system is full."""
    with open(folder / "filler", "wb", buffering=0) as handle:
        chunk = bytes(1 << 20)
        try:
            while True:
                handle.write(chunk)
        except OSError as err:
            assert err.errno == errno.ENOSPC
        try:  # the last partial page
            while True:
                handle.write(bytes(4096))
        except OSError:
            pass


def test_disk_filling_up_during_a_real_run(data: Path, small_disk: Path) -> None:
    out = small_disk / "run"
    last = out / "checkpoints" / "last.pt"
    # log_every past the end: the checkpoints are the only writes once the run is going
    proc = start(data, out, "trainer.max_steps=500", "trainer.checkpoint_every=1", "trainer.log_every=1000")
    wait_for(last.exists, proc)
    fill(small_disk)
    status, output = finish(proc)
    assert status == 2 and "Traceback" not in output, output[-2000:]
    (line,) = error_lines(output)
    assert "No space left on device" in line and "previous file there is kept" in line
    assert checkpoint(out)["step"] >= 1
    assert not temp_files(out)


# --------------------------------------------------------------------------- corrupt data


def truncated_jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[:200])


def test_corrupt_image_is_skipped_and_counted(tiny_config, tmp_path: Path) -> None:
    root = fmnist_folder(tmp_path / "data", count=15)
    bad = root / "train" / "class9" / "broken.jpg"
    truncated_jpeg(bad)
    folder = {"data.name": "imagefolder", "data.root": str(root), "data.on_corrupt": "skip"}
    cfg = tiny_config("dino_fmnist", **{**SMALL_DINO, **folder, "data.batch_size": 16, "trainer.max_steps": 1})
    trainer = Trainer(cfg)
    with pytest.warns(UserWarning, match=r"skipping corrupt image .*broken\.jpg \(1 skipped so far\)"):
        trainer.fit()  # one batch of all 16 images
    folder = trainer.loader.dataset.base
    assert folder.corrupt == {next(i for i, (path, _) in enumerate(folder.folder.samples) if path == str(bad))}


def test_corrupt_image_with_on_corrupt_error_is_one_line_even_from_a_worker(tmp_path: Path) -> None:
    root = fmnist_folder(tmp_path, count=16)
    truncated_jpeg(root / "train" / "class0" / "broken.jpg")
    proc = start(
        root,
        tmp_path / "run",
        "data.on_corrupt=error",
        "data.num_workers=2",
        "data.batch_size=17",
        "trainer.max_steps=1",
    )
    status, output = finish(proc)
    assert status == 2 and "Traceback" not in output, output[-3000:]
    assert output.strip().splitlines()[-1].startswith("error: corrupt image ")
    (line,) = error_lines(output)
    assert "broken.jpg" in line and "data.on_corrupt=skip" in line
