"""The throughput benchmark runs end to end on synthetic data and writes its JSON and table (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.autograd import DeviceType

from sslzoo.data import SyntheticImages
from sslzoo.recipes import load_config
from sslzoo.runtime import precision_dtype, precision_name

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import throughput  # noqa: E402


def test_synthetic_images_are_fixed_imagenet_shaped_noise() -> None:
    data = SyntheticImages("pretrain")
    image, label = data[7]
    assert image.shape == (3, 256, 256) and image.dtype == torch.uint8 and label == 7
    assert torch.equal(image, data[7][0]) and not torch.equal(image, data[8][0])
    assert not torch.equal(image, SyntheticImages("test")[7][0])
    assert len(data) == 1_281_167


def test_benchmark_writes_model_loader_lightly_and_profile_figures(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    command = [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "method=dino", "data=synthetic"]
    command += ["batch=4", "steps=1", "warmup=1", "workers=0", "device=cpu", f"out={out}"]
    command += ["method.out_dim=256", "method.proj_hidden_dim=256", "method.bottleneck_dim=64"]
    command += ["augment.local_crops=4"]  # multi-crop, as the ImageNet recipes (dino_fmnist has none)
    command += ["profile=3"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = json.loads(out.read_text())
    recipe = load_config("dino_fmnist")
    crops = f"2x{recipe.augment.global_size}px + 4x12px"
    assert record["data"] == "synthetic" and record["crops"] == crops and record["batch_per_device"] == 4
    for key in ("model_images_per_s", "loader_images_per_s", "end_to_end_images_per_s", "sslzoo_over_lightly"):
        assert record[key] > 0, key
    assert record["lightly"]["images_per_s"] > 0
    costs = record["loader_cpu_ms_per_image"]  # both photometric paths, side by side
    assert set(costs) == {"per_image", "batched"} and all(ms > 0 for ms in costs.values())
    assert record["photometric"] == "batched"
    assert record["bottleneck"] in ("loader", "model")
    assert "git_commit" in record["provenance"] and record["provenance"]["torch_version"] == torch.__version__
    assert record["model_images_per_s"] == 4 / record["model_step_s_median"]
    table = out.with_suffix(".md").read_text()
    ran = precision_name(precision_dtype(recipe.trainer.precision, torch.device("cpu")))  # auto: bf16 with AMX
    assert record["precision"] == ran and f"| dino | {recipe.model.backbone} | {crops} | 4 | {ran} |" in table
    assert "loader CPU ms/img, batched" in table
    profile = record["profile"]  # profile=3: the three operators with the most self time per step
    operators = profile["operators"]
    assert profile["time"] == "cpu" and profile["steps"] == 1 and len(operators) == 3
    shares = [op["share"] for op in operators]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1
    assert all(op["self_ms_per_step"] > 0 and op["calls_per_step"] >= 1 for op in operators)
    assert all(op["self_ms_per_step"] <= profile["self_ms_per_step"] for op in operators)
    assert "## Top operators (`profile=N`)" in table and f"| `{operators[0]['name']}` |" in table
    assert done.stderr.index("timed steps") < done.stderr.index("profiled steps")  # its overhead stays out


def event(key: str, device: DeviceType, cpu_us: float, gpu_us: float, annotation: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        key=key,
        device_type=device,
        is_user_annotation=annotation,
        self_cpu_time_total=cpu_us,
        self_device_time_total=gpu_us,
        count=2,
    )


def test_profile_counts_each_operator_once_on_gpus() -> None:
    """A kernel's time is the operator's self device time too: only operators are ranked, annotations left out."""
    events = [
        event("aten::mm", DeviceType.CPU, 30.0, 600.0),
        event("sm90_gemm_kernel", DeviceType.CUDA, 0.0, 600.0),
        event("aten::softmax", DeviceType.CPU, 10.0, 200.0),
        event("step", DeviceType.CPU, 5.0, 800.0, annotation=True),
    ]
    gpu = throughput.operator_times(events, gpu=True, steps=2, top=5)
    assert [op["name"] for op in gpu["operators"]] == ["aten::mm", "aten::softmax"]
    assert [op["share"] for op in gpu["operators"]] == [0.75, 0.25]
    assert gpu["self_ms_per_step"] == 0.4 and gpu["operators"][0]["calls_per_step"] == 1
    cpu = throughput.operator_times(events, gpu=False, steps=1, top=1)
    assert cpu["time"] == "cpu" and [(op["name"], op["share"]) for op in cpu["operators"]] == [("aten::mm", 0.75)]


def test_profile_tables_head_each_record_by_its_date() -> None:
    """Two profiled records of one method (``append=true``) get two headings, each naming its record's date."""
    profile = {"time": "cpu", "self_ms_per_step": 5.0, "steps": 2, "operators": []}
    records = [
        {"method": "dino", "precision": "bf16", "profile": profile, "date": date}
        for date in ("2026-12-01T10:00:00+00:00", "2026-12-02T10:00:00+00:00")
    ]
    headings = [line for line in throughput.profile_tables(records).splitlines() if line.startswith("### ")]
    assert len(headings) == 2 and len(set(headings)) == 2
    assert all(record["date"] in heading for record, heading in zip(records, headings))
