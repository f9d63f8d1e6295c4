"""The loss parameter models (lossearch.losses.params) and their one-line errors (param_text)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from lossearch.errors import LossearchError
from lossearch.losses import LOSSES, normalize_spec
from lossearch.losses.param_text import accepted, value_range
from lossearch.losses.params import FocalParams, LossParams, with_weight

DOCS = Path(__file__).resolve().parents[1] / "docs" / "losses.md"


@pytest.mark.parametrize(
    ("component", "message"),
    [
        ({"focal": {"weight": 1, "gamma": -1}}, "loss 'focal': gamma must be >= 0, got -1"),
        ({"focal": {"weight": 1, "gamma": "-1"}}, "loss 'focal': gamma must be >= 0, got '-1'"),
        ({"focal": {"weight": 1, "gamma": True}}, "loss 'focal': gamma must be a number, got True"),
        (
            {"focal": {"weight": 1, "gamma": "nan"}},
            "loss 'focal': gamma must be a number, got 'nan'",
        ),
        ({"focal": {"weight": 1, "gamma": [1]}}, "loss 'focal': gamma must be a number, got [1]"),
        (
            {"focal": {"weight": 1, "alpha": "x"}},
            "loss 'focal': alpha must be null or a number, got 'x'",
        ),
        ({"focal": {"weight": 1, "alpha": 1.5}}, "loss 'focal': alpha must be in [0, 1], got 1.5"),
        (
            {"focal": {"weight": 1, "alpha": -0.0001}},
            "loss 'focal': alpha must be in [0, 1], got -0.0001",
        ),
        (
            {"focal": {"weight": 1, "gama": 1}},
            "loss 'focal': unknown parameter 'gama' (allowed: weight, gamma, alpha)",
        ),
        (
            {"ce": {"weight": 1, 3: 1}},
            "loss 'ce': unknown parameter '3' (allowed: weight, label_smoothing)",
        ),
        (
            {"ce": {"weight": 1, "label_smoothing": 1}},
            "loss 'ce': label_smoothing must be in [0, 1), got 1",
        ),
        (
            {"prob_power": {"weight": 1, "alpha": 0.0}},
            "loss 'prob_power': alpha must be > 0, got 0.0",
        ),
        (
            {"poly1": {"weight": 1, "epsilon": -1.5}},
            "loss 'poly1': epsilon must be >= -1, got -1.5",
        ),
        (
            {"poly1": {"weight": 1, "epsilon": "1e400"}},
            "loss 'poly1': epsilon must be a number, got '1e400'",
        ),
        ({"gdice": {"weight": 1, "batch": 1}}, "loss 'gdice': batch must be true or false, got 1"),
        (
            {"gdice": {"weight": 1, "batch": "no"}},
            "loss 'gdice': batch must be true or false, got 'no'",
        ),
        (
            {"gdice": {"weight": 1, "variant": "orig"}},
            "loss 'gdice': variant must be one of 'standard', 'paper', got 'orig'",
        ),
        (
            {"tversky": {"weight": 1, "classes": None}},
            "loss 'tversky': classes must be one of 'present', 'all', got None",
        ),
        (
            {"dft": {"weight": 1, "alpha": 1}},
            "loss 'dft': unknown parameter 'alpha' (allowed: weight)",
        ),
        ({"ce": "inf"}, "loss 'ce': weight must be a number, got 'inf'"),
        ({"ce": False}, "loss 'ce': weight must be a number, got False"),
        ({"ce": 10**400}, f"loss 'ce': weight must be a number, got {10**400}"),
        ({"ce": -1e-9}, "loss 'ce': weight must be >= 0, got -1e-09"),
        # which error is told: the weight, then an unknown name, then the first bad value
        ({"focal": {"gama": 1, "gamma": -1}}, "loss 'focal': missing 'weight'"),
        ({"focal": {"weight": -1, "gama": 1}}, "loss 'focal': weight must be >= 0, got -1"),
        (
            {"focal": {"weight": 1, "alpha": 5, "gamma": -1, "gama": 1}},
            "loss 'focal': unknown parameter 'gama' (allowed: weight, gamma, alpha)",
        ),
        (
            {"focal": {"weight": 1, "alpha": 5, "gamma": -1}},
            "loss 'focal': gamma must be >= 0, got -1",
        ),
    ],
)
def test_bad_parameter_is_one_exact_line(component: dict[str, Any], message: str) -> None:
    with pytest.raises(LossearchError) as info:
        normalize_spec(component)
    assert str(info.value) == message


def test_check_params_fills_defaults_and_names_the_loss() -> None:
    assert LOSSES["focal"].check_params({"alpha": "0.25"}) == {"gamma": 2.0, "alpha": 0.25}
    with pytest.raises(
        LossearchError,
        match=r"^loss 'focal': unknown parameter 'weight' \(allowed: gamma, alpha\)$",
    ):
        LOSSES["focal"].check_params({"weight": 1})


def test_numbers_come_out_as_floats_and_the_weight_first() -> None:
    spec = normalize_spec({"focal": {"alpha": "1e-5", "gamma": 3, "weight": "1"}})
    assert spec["focal"] == {"weight": 1.0, "gamma": 3.0, "alpha": 1e-5}
    assert list(spec["focal"]) == ["weight", "gamma", "alpha"]
    assert all(type(v) is float for v in spec["focal"].values())
    assert list(with_weight(LossParams).model_fields) == ["weight"]
    assert with_weight(FocalParams) is with_weight(FocalParams)


@pytest.mark.parametrize("name", list(LOSSES))
def test_model_is_the_entry_points_keyword_arguments(name: str) -> None:
    """Each model holds exactly what ``from_log_probs`` takes, with the same defaults."""
    info = LOSSES[name]
    sig = inspect.signature(info.from_log_probs).parameters
    taken = {k: p.default for k, p in sig.items() if k not in {"log_probs", "target", "seq_ids"}}
    assert info.defaults() == taken
    assert list(info.defaults()) == list(info.params.model_fields)
    assert info.params.model_config["extra"] == "forbid"


def _docs_row(name: str) -> str:
    rows = [line for line in DOCS.read_text().splitlines() if line.startswith(f"| `{name}` |")]
    assert len(rows) == 1, name
    return re.split(r"(?<!\\)\|", rows[0])[-2]  # the last column; "\|" is a pipe inside it


def _documented_default(text: str) -> Any:
    return {"null": None, "true": True, "false": False}.get(text, text)


@pytest.mark.parametrize("name", list(LOSSES))
def test_docs_table_shows_each_models_parameters(name: str) -> None:
    """docs/losses.md lists every parameter with its default and its range or choices."""
    cell = _docs_row(name)
    fields = LOSSES[name].params.model_fields
    if not fields:
        assert cell.strip() == "none"
    for pname, field in fields.items():
        found = re.search(rf"`{pname}` \(`?([^,`:)\s]+)", cell)
        assert found, f"{name}.{pname} is not in the docs row: {cell}"
        default = _documented_default(found.group(1))
        if isinstance(field.default, float):
            assert float(default) == field.default, (name, pname)
        else:
            assert default == field.default, (name, pname)
        bounds = value_range(field)
        if bounds:
            assert f"`{bounds}`" in cell, (name, pname, bounds)
        for choice in re.findall(r"'(\w+)'", accepted(field)):
            assert f"`{choice}`" in cell, (name, pname, choice)


def test_words_for_a_field() -> None:
    fields = FocalParams.model_fields
    assert (value_range(fields["gamma"]), accepted(fields["gamma"])) == (">= 0", "a number")
    assert (value_range(fields["alpha"]), accepted(fields["alpha"])) == (
        "[0, 1]",
        "null or a number",
    )
    lovasz = LOSSES["lovasz"].params.model_fields["classes"]
    assert (value_range(lovasz), accepted(lovasz)) == (None, "one of 'present', 'all'")
