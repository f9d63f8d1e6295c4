"""`lossearch score` end to end through the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lossearch.metrics import MATH_METRICS

LOSSEARCH = Path(sys.executable).parent / "lossearch"
pytestmark = pytest.mark.skipif(not LOSSEARCH.is_file(), reason="console script not installed")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LOSSEARCH), "score", *args], capture_output=True, text=True, timeout=120
    )


def write(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_score_math_task(tmp_path):
    ref = "<<48/2=24>>\n<<48+24=72>>\n#### 72"
    rows = [
        {"prediction": "<<48/2=24>>\n<<48+24=72>>\n#### 72", "reference": ref},
        {"prediction": "<<48/2=24>>\n<<24+48=73>>\n#### 73", "reference": ref},
        {"prediction": "I do not know", "reference": ref},
        {"prediction": "<<2*48=96>>\n#### 96", "reference": ref},  # wrong operator
        {"prediction": "<<2/48=0.04>>\n#### 0.04", "reference": ref},  # inverted operands
    ]
    result = run(write(tmp_path / "p.jsonl", rows), "--task", "gsm8k")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) == {"exact_match", *MATH_METRICS}
    assert out["exact_match"] == pytest.approx(1 / 5)
    assert out["formula_recall"] == pytest.approx((1 + 0.5) / 5)
    assert out["missing_steps"] == pytest.approx((0 + 1 + 2 + 2 + 2) / 5)
    assert out["wrong_operators"] == pytest.approx(1 / 5)
    assert out["inverted_operands"] == pytest.approx(1 / 5)


def test_score_choice_and_jsonl_tasks(tmp_path):
    rows = [{"prediction": "B", "reference": "B"}, {"prediction": "c) x", "reference": "D"}]
    result = run(write(tmp_path / "c.jsonl", rows), "--task", "openbookqa")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"exact_match": 0.5}
    rows = [{"prediction": "so x = 1,000", "reference": "x = 1000"}]
    path = write(tmp_path / "j.jsonl", rows)
    plain = run(path, "--task", "jsonl")
    assert json.loads(plain.stdout) == {"exact_match": 0.0}
    pattern = run(path, "--task", "jsonl", "--answer-pattern", r"= (\S+)")
    assert json.loads(pattern.stdout) == {"exact_match": 1.0}


@pytest.mark.parametrize(
    "case,message",
    [
        ("unknown_task", "unknown task 'nope'"),
        ("missing_file", "file not found"),
        ("no_reference", "line 2: needs a string field 'reference'"),
        ("not_json", "line 1: not valid JSON"),
        ("empty", "no predictions to score"),
        ("reference_without_answer", "reference has no '#### answer'"),
    ],
)
def test_score_bad_input_exits_2_with_one_line(tmp_path, case, message):
    good = {"prediction": "#### 1", "reference": "#### 1"}
    files = {
        "unknown_task": [good],
        "no_reference": [good, {"prediction": "#### 1"}],
        "not_json": ["{oops"],
        "empty": [],
        "reference_without_answer": [{"prediction": "#### 1", "reference": "1"}],
    }
    path = str(tmp_path / "absent.jsonl")
    if case in files:
        path = write(tmp_path / f"{case}.jsonl", files[case])
    result = run(path, "--task", "nope" if case == "unknown_task" else "gsm8k")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
