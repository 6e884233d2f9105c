"""Recipes are checked against one declared schema before any work starts (issue 17).

Every malformed field makes ``quantstudio-cli quantize --recipe`` exit with code 2 and
one line naming the recipe file, the field and what is allowed, and writes nothing.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from quantstudio import cli
from quantstudio.core.data import Preprocessing, open_data
from quantstudio.core.engines.base import QuantConfig
from quantstudio.core.errors import InputError
from quantstudio.core.loading import load_model
from quantstudio.core.plan import PlanRule, Precision, PrecisionPlan
from quantstudio.core.recipe import Recipe, make_recipe
from quantstudio.core.schema import field_table, recipe_schema
from tests.core.models import save_all_forms, tiny_net


@pytest.fixture(scope="module")
def good_recipe(tmp_path_factory) -> dict:
    """A recipe as QuantStudio writes it (tiny ONNX model, random data, a regex rule)."""
    folder = tmp_path_factory.mktemp("recipe_model")
    paths = save_all_forms(tiny_net(), torch.randn(1, 3, 32, 32), folder, "tiny")
    model = load_model(paths["onnx"])
    data = open_data("random", input_shape=model.input_shape, random_samples=16)
    plan = PrecisionPlan(rules=[PlanRule("conv.*", Precision.FP32, "regex")])
    recipe = make_recipe(model, plan, QuantConfig(calib_samples=8), preprocessing=Preprocessing.imagenet(),
                         data=data, data_spec="random", calibration_indices=list(range(8)),
                         evaluation_samples=8, batch_size=4)
    return json.loads(json.dumps(recipe.to_dict()))


def test_a_recipe_quantstudio_wrote_is_valid(good_recipe, tmp_path):
    path = tmp_path / "good.recipe.json"
    path.write_text(json.dumps(good_recipe))
    recipe = Recipe.load(path)
    assert recipe.data["batch_size"] == 4
    assert recipe.precision_plan().rules[0].kind == "regex"


def _set(d: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        d = d[int(p)] if isinstance(d, list) else d[p]
    if value is _DELETE:
        del d[last]
    else:
        d[last] = value


_DELETE = object()

MALFORMED = [
    # (field to change, new value, field named in the message, words of what is allowed)
    ("config.per_channel", "no", "config.per_channel", "true or false"),
    ("config.calib_samples", 3.7, "config.calib_samples", "whole number"),
    ("config.calib_samples", "256", "config.calib_samples", "whole number"),
    ("config.calib_samples", -5, "config.calib_samples", "from 1"),
    ("config.calibration", "bogus", "config.calibration", '"minmax"'),
    ("config.surprise", 1, "'surprise'", "allowed fields"),
    ("unknown_top_level", {}, "'unknown_top_level'", "allowed fields"),
    ("data.batch_size", 0, "data.batch_size", "from 1 to 4,096"),
    ("data.batch_size", 5000, "data.batch_size", "from 1 to 4,096"),
    ("data.evaluation_samples", -1, "data.evaluation_samples", "from 0"),
    ("data.calibration_fingerprint", "abc", "data.calibration_fingerprint", "sha256"),
    ("data.calibration_fingerprint.samples", "8", "data.calibration_fingerprint.samples", "whole number"),
    ("plan.rules.0.pattern", "conv(", "plan.rules[0].pattern", "regular expression"),
    ("plan.default", "int9", "plan.default", '"int8"'),
    ("model.path", 5, "model.path", "file path"),
    ("model.input_shape", [1, 3, "x", 32], "model.input_shape[2]", "whole number"),
    ("preprocessing.resize", 100000, "preprocessing.resize", "8192"),
    ("preprocessing.crop", [224, 100000], "preprocessing.crop[1]", "8,192"),
    ("preprocessing.std", [0.2, 0, 0.2], "preprocessing.std[1]", "above 0"),
    ("seed", "1", "seed", "whole number"),
    ("engine", 3, "engine", "one of"),
    ("plan", _DELETE, "plan", "missing"),
]


def _run_cli(recipe_path: Path, out: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main(["quantize", "--recipe", str(recipe_path), "--out", str(out)])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("field,value,named,allowed", MALFORMED, ids=[f"{m[0]}={m[1]!r}"[:40] for m in MALFORMED])
def test_malformed_recipe_fails_before_any_work_with_one_line(good_recipe, tmp_path, capsys, field, value, named, allowed):
    bad = copy.deepcopy(good_recipe)
    _set(bad, field, value)
    path = tmp_path / "bad.recipe.json"
    path.write_text(json.dumps(bad))
    out = tmp_path / "out.onnx"
    rc, err = _run_cli(path, out, capsys)
    assert rc == cli.EXIT_BAD_INPUT
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {path}: ")
    assert named in lines[0] and allowed in lines[0]
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("content,words", [
    (b"{" + b'"a": [' * 50000 + b"]" * 50000 + b"}", "nests"),  # RecursionError in json before
    (b'{"version": 1, "engine": "\xff"}', "UTF-8"),
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
])
def test_unreadable_recipe_file_is_one_line(tmp_path, capsys, content, words):
    path = tmp_path / "odd.recipe.json"
    path.write_bytes(content)
    rc, err = _run_cli(path, tmp_path / "out.onnx", capsys)
    assert rc == cli.EXIT_BAD_INPUT
    assert err.strip().startswith(f"error: {path}: ") and words in err
    assert len(err.strip().splitlines()) == 1


def test_every_problem_is_kept_in_details(good_recipe, tmp_path):
    bad = copy.deepcopy(good_recipe)
    bad["config"]["per_channel"] = "no"
    bad["data"]["batch_size"] = 0
    path = tmp_path / "two.recipe.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(InputError) as exc:
        Recipe.load(path)
    assert "config.per_channel" in exc.value.details and "data.batch_size" in exc.value.details


def test_readme_documents_every_recipe_field():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert field_table(recipe_schema()) in readme, "README's recipe table is out of date: paste field_table(recipe_schema())"
