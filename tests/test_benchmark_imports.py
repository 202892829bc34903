"""The benchmark scripts import the sslzoo of their own checkout, whatever else is installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script", ["compare.py", "ablations.py", "throughput.py"])
def test_benchmark_scripts_use_this_checkouts_sslzoo(script: str, tmp_path: Path) -> None:
    other = tmp_path / "sslzoo"  # another copy of the package, ahead of this one on the path
    other.mkdir()
    (other / "__init__.py").write_text("raise ImportError('imported another installed sslzoo')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    command = [sys.executable, str(REPO / "benchmarks" / script), "--help"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"benchmarks/{script}" in done.stdout  # its help, printed after importing sslzoo
