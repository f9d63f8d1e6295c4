"""``benchmarks/gpu.py`` without a GPU: one line and exit 0, and no Ray in what it imports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu.py"


def run_script(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python benchmarks/gpu.py ARGS`` (or ``python -c CODE ARGS``) with CUDA hidden."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_without_cuda_prints_one_line_and_exits_0() -> None:
    proc = run_script()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    assert "no CUDA" in lines[0]


def test_what_it_imports_holds_no_ray() -> None:
    proc = run_script("--check-imports")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "benchmarks/gpu.py: imports ok, no Ray"


def test_the_import_check_sees_ray() -> None:
    """The check is not vacuous: with Ray imported first it fails."""
    code = (
        "import sys, runpy; import ray; sys.argv = [sys.argv[0], '--check-imports']; "
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    )
    proc = run_script(code=code)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Ray was imported" in proc.stderr


@pytest.mark.slow
def test_cpu_smoke_runs_every_section_without_ray() -> None:
    proc = run_script("--cpu-smoke")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "ERROR" not in proc.stdout
    for row in (
        "fit: LoRA r16, bf16",
        "fp16 + GradScaler",
        "loss ce + lovasz",
        "argsort",
        "generate",
    ):
        assert row in proc.stdout
    assert "no Ray imported" in proc.stdout
