"""The engine seam: every registered engine is complete, and nothing outside
``core/engines/`` decides by an engine's name."""

from __future__ import annotations

import ast
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from quantstudio.core.engines.base import ENGINE_MEMBERS, ENGINES, Engine, available_engines, engine_writing, get_engine
from quantstudio.core.errors import InputError
from quantstudio.core.export import export_format
from quantstudio.core.metrics import ErrorAccumulator
from quantstudio.core.plan import Precision, PrecisionPlan

PACKAGE = Path(__file__).resolve().parents[2] / "quantstudio"
ENGINE_DIR = PACKAGE / "core" / "engines"
# Files that compare a string that happens to be an engine name, and why that is not
# a decision about a registered engine. Each is a file another change owns.
NOT_ENGINE_NAMES: dict[str, str] = {}
LIBRARY_CONTEXTS = ("framework", "sys.modules")
METHODS = ("unsupported_reason", "quantize", "reference_runner", "layer_error", "sizes", "memory_files", "write", "reload")


@pytest.mark.parametrize("name", list(ENGINES))
def test_every_registered_engine_has_every_member(name):
    engine = get_engine(name)
    missing = [m for m in ENGINE_MEMBERS if not hasattr(engine, m)]
    assert not missing, f"{name} lacks {missing}"
    assert engine.name == name
    assert isinstance(engine.label, str) and engine.label
    assert isinstance(engine.short_label, str) and engine.short_label
    assert engine.formats and all(s.startswith(".") and s == s.lower() and f for s, f in engine.formats.items())
    for method in METHODS:
        assert callable(getattr(engine, method)), f"{name}.{method} is not callable"
    # The protocol lists exactly the members the app uses.
    assert set(ENGINE_MEMBERS) == set(METHODS) | {"name", "label", "short_label", "formats"}
    assert set(METHODS) <= set(dir(Engine))


def test_available_engines_follow_the_registry_and_formats_do_not_overlap():
    engines = available_engines()
    assert [e.name for e in engines] == list(ENGINES)
    suffixes = [s for e in engines for s in e.formats]
    assert len(suffixes) == len(set(suffixes)), "two engines claim one file suffix"
    for e in engines:
        for suffix in e.formats:
            assert engine_writing(suffix.upper()) is not None and engine_writing(suffix).name == e.name
    assert engine_writing(".xyz") is None


def test_export_format_comes_from_the_engines():
    for e in available_engines():
        for suffix, fmt in e.formats.items():
            assert export_format(e.name, f"m{suffix}") == fmt
            for other in available_engines():
                if suffix not in other.formats:
                    with pytest.raises(InputError, match=f"--engine {e.name}"):
                        export_format(other.name, f"m{suffix}")


def test_unsupported_reason_says_which_models_an_engine_cannot_take(monkeypatch):
    # Which models an engine takes, whether or not an optional engine's extra is installed here
    # (without it the TensorFlow Lite engine refuses every model: tests/core/test_tflite.py).
    from quantstudio.core.engines.tflite import convert as tflite_convert

    monkeypatch.setattr(tflite_convert, "missing_modules", lambda: [])
    eager = SimpleNamespace(is_eager=True, kind_label="PyTorch state_dict")
    script = SimpleNamespace(is_eager=False, kind_label="TorchScript archive")
    assert all(e.unsupported_reason(eager) is None for e in available_engines())
    reasons = {e.name: e.unsupported_reason(script) for e in available_engines()}
    assert any(r is None for r in reasons.values()), "some engine must take every model"
    refused = [r for r in reasons.values() if r]
    assert refused and all("TorchScript" in r for r in refused)


def test_plan_precision_for_any_of_several_names_and_the_rule_that_set_it():
    plan = PrecisionPlan()
    assert plan.precision_for_any([("a", "Conv"), ("/a/Conv", "Conv")]) == (Precision.INT8, None)
    plan.set("Conv", Precision.FP16, kind="type")
    plan.set("/a/*", Precision.FP32, kind="glob")
    precision, rule = plan.precision_for_any([("a", "Conv2d"), ("/a/Conv", "Conv")])
    assert precision is Precision.FP32 and rule is plan.rules[-1]  # later rules win
    precision, rule = plan.precision_for_any([("b", "Conv")])
    assert precision is Precision.FP16 and rule is plan.rules[0]
    assert plan.precision_for("b", "Conv") is Precision.FP16


def test_error_accumulator_sums_in_float64_for_arrays_and_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 10)).astype(np.float32)
    b = a + 1e-3 * rng.standard_normal((4, 10)).astype(np.float32)
    acc, tacc = ErrorAccumulator(), ErrorAccumulator()
    for i in range(2):
        acc.add(a[2 * i:2 * i + 2], b[2 * i:2 * i + 2])
        tacc.add(torch.from_numpy(a[2 * i:2 * i + 2]).double(), torch.from_numpy(b[2 * i:2 * i + 2]).double())
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    expected = 10 * math.log10(np.sum(a64 ** 2) / np.sum((a64 - b64) ** 2))
    assert acc.sqnr_db() == pytest.approx(expected, rel=1e-12)
    assert tacc.sqnr_db() == pytest.approx(expected, rel=1e-12)
    same = ErrorAccumulator()
    same.add(a, a)
    assert same.sqnr_db() == math.inf
    zero = ErrorAccumulator()
    zero.add(np.zeros(3), np.ones(3))
    assert zero.sqnr_db() == -math.inf


def _engine_name_comparisons(path: Path, names: set[str]) -> list[str]:
    """Lines of ``path`` that compare something with an engine name literal."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, str(path))

    def literals(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Constant) and node.value in names:
            return [node.value]
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in names]
        return []

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            hit = [lit for o in operands for lit in literals(o)]
            others = " ".join(ast.get_source_segment(source, o) or "" for o in operands if not literals(o))
            # A LoadedModel's framework ("torch" | "onnx") and sys.modules name libraries, not engines.
            if hit and not any(word in others for word in LIBRARY_CONTEXTS):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.get_source_segment(source, node)}")
        elif isinstance(node, ast.MatchValue) and literals(node.value):
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: case {node.value.value!r}")
    return found


def test_nothing_outside_the_engines_compares_an_engine_name():
    names = set(ENGINES)
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ENGINE_DIR in path.parents:
            continue
        if path.relative_to(PACKAGE).as_posix() in NOT_ENGINE_NAMES:
            continue
        found += _engine_name_comparisons(path, names)
    assert not found, "ask the engine (core/engines/base.py Engine) instead of comparing its name:\n" + "\n".join(found)


def test_the_name_check_catches_what_it_is_for(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        'if qm.engine == "torch":\n    pass\n'
        'ok = config.engine in ("onnxruntime", "x")\n'
        'fine = model.framework == "torch"\n'
        'loaded = "torch" in sys.modules\n'
        'also_fine = engine == "tensorrt"\n'
    )
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path
    try:
        found = _engine_name_comparisons(sample, set(ENGINES))
    finally:
        PACKAGE = saved
    assert [f.split(":")[1] for f in found] == ["1", "3"]
