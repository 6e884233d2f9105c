"""Metrics, variant comparison and the `evaluate` CLI (quantstudio.core.evaluation)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from quantstudio.core.data import RANDOM_DATA_NOTE, open_data
from quantstudio.core.errors import Cancelled, InputError
from quantstudio.core.evaluation import as_forward, compute_metrics, evaluate
from quantstudio.core.jobs import RecordingContext

SHAPE = (1, 3, 16, 16)
REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "resources" / "demo"


def tiny_net(num_classes: int = 3, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(16, num_classes),
    ).eval()


def image_folder(root: Path, classes=("a", "b", "c"), per_class: int = 4) -> Path:
    from PIL import Image

    for ci, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            rng = np.random.default_rng(ci * 100 + i)
            arr = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


def export_onnx(module, path: Path, shape=SHAPE) -> Path:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            torch.randn(*shape),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


# --------------------------------------------------------------------------- metrics by hand

# 6 samples, 6 classes. Labels 0,0,1,1,2,3; top-1 predictions 0,1,1,1,0,4;
# sample 5's label (3) has the lowest logit, so it is outside its top-5.
LOGITS = np.array(
    [
        [5, 1, 0, 0, 0, 0],
        [1, 5, 0, 0, 0, 0],
        [0, 5, 1, 0, 0, 0],
        [0, 5, 1, 0, 0, 0],
        [5, 0, 1, 0, 0, 0],
        [1, 1, 1, -5, 9, 1],
    ],
    np.float32,
)
LABELS = np.array([0, 0, 1, 1, 2, 3])
NAMES = {0: "zero", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


def test_label_metrics_match_hand_computed_values():
    r = compute_metrics(LOGITS, LABELS, class_names=NAMES)
    assert r.n == 6 and r.num_outputs == 6
    assert r.top1 == pytest.approx(3 / 6)
    assert r.top5 == pytest.approx(5 / 6)
    # per class (P, R, F1): 0 → (1/2, 1/2, 1/2); 1 → (2/3, 1, 0.8); 2 → (0, 0, 0); 3 → (0, 0, 0)
    assert r.precision == pytest.approx((0.5 + 2 / 3) / 4)
    assert r.recall == pytest.approx((0.5 + 1.0) / 4)
    assert r.f1 == pytest.approx((0.5 + 0.8) / 4)
    assert r.per_class_accuracy == {"zero": 0.5, "one": 1.0, "two": 0.0, "three": 0.0}
    # Rows: true class; columns: predicted. Class 4 is predicted but never a label.
    assert r.confusion_labels == ["zero", "one", "two", "three", "four"]
    assert r.confusion == [
        [1, 1, 0, 0, 0],
        [0, 2, 0, 0, 0],
        [1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1],
        [0, 0, 0, 0, 0],
    ]
    assert r.agreement is None and r.sqnr_db is None


def test_top5_is_absent_with_fewer_than_five_classes():
    r = compute_metrics(np.eye(3, dtype=np.float32), np.arange(3))
    assert r.top1 == 1.0 and r.top5 is None and r.precision == r.recall == r.f1 == 1.0


def test_agreement_sqnr_cosine_match_hand_computed_values():
    ref = np.array([[1, 0], [0, 2], [3, 0]], np.float32)
    out = np.array([[1, 0], [2, 1], [2, 0]], np.float32)
    r = compute_metrics(out, reference_logits=ref, paths=["a.png", "b.png", "c.png"])
    assert r.agreement == pytest.approx(2 / 3)
    # sum(ref²) = 14, sum((ref-out)²) = 0 + 5 + 1 = 6
    assert r.sqnr_db == pytest.approx(10 * math.log10(14 / 6))
    assert r.cosine == pytest.approx((1 + 1 / math.sqrt(5) + 1) / 3)
    assert [(c.index, c.path, c.reference, c.prediction) for c in r.changed] == [(1, "b.png", 1, 0)]
    assert r.top1 is None  # no labels


def test_identical_outputs_give_infinite_sqnr_and_json_safe_dict():
    r = compute_metrics(LOGITS, LABELS, reference_logits=LOGITS.copy())
    assert r.agreement == 1.0 and r.cosine == pytest.approx(1.0) and math.isinf(r.sqnr_db) and r.changed == []
    d = r.to_dict()
    assert d["sqnr_db"] == "inf"
    text = json.dumps(d, allow_nan=False)  # no numpy types, no NaN/Infinity
    assert json.loads(text)["top1"] == 0.5


# --------------------------------------------------------------------------- evaluate


def test_torch_model_and_its_onnx_export_agree_on_the_same_tensors(tmp_path):
    from quantstudio.core.loading import load_model

    net = tiny_net()
    onnx_model = load_model(export_onnx(net, tmp_path / "m.onnx"))
    data = open_data(image_folder(tmp_path / "data"), input_shape=SHAPE)
    ev = evaluate({"torch": net, "onnx": onnx_model}, data, batch_size=5)
    t, o = ev["torch"], ev["onnx"]
    assert ev.reference == "torch" and ev.n == 12
    assert t.top1 == o.top1 and t.confusion == o.confusion
    assert o.agreement == 1.0 and o.changed == [] and o.sqnr_db > 60 and o.cosine > 0.9999
    json.dumps(ev.to_dict(), allow_nan=False)


def test_every_kind_of_variant_gives_the_same_result(tmp_path):
    import onnxruntime as ort

    net = tiny_net()
    path = export_onnx(net, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    class Wrapper:
        def forward_numpy(self, x):
            return as_forward(net)(x)

    data = open_data(image_folder(tmp_path / "data"), input_shape=SHAPE)
    ev = evaluate(
        {"module": net, "callable": lambda x: as_forward(net)(x), "wrapper": Wrapper(), "session": session},
        data,
        batch_size=4,
    )
    tops = {name: r.top1 for name, r in ev.results.items()}
    assert len(set(tops.values())) == 1, tops
    assert all(ev[n].agreement == 1.0 for n in ("callable", "wrapper", "session"))


def test_reference_runs_once_per_batch_and_others_see_the_same_tensors(tmp_path):
    calls: dict[str, list[np.ndarray]] = {"ref": [], "other": []}

    def variant(name):
        def run(x):
            calls[name].append(x.copy())
            return x.reshape(len(x), 3, -1).mean(axis=2)

        return run

    data = open_data(image_folder(tmp_path), input_shape=SHAPE)
    ctx = RecordingContext()
    ev = evaluate({"ref": variant("ref"), "other": variant("other")}, data, batch_size=5, ctx=ctx)
    assert len(calls["ref"]) == len(calls["other"]) == 3  # 12 samples in batches of 5
    for a, b in zip(calls["ref"], calls["other"]):
        assert a is not b and np.array_equal(a, b)
    assert ev["other"].sqnr_db == math.inf
    assert ctx.reports[-1][0] == 1.0
    assert ctx.partials and ctx.partials[-1].done == 12


def test_cancel_stops_evaluation(tmp_path):
    data = open_data(image_folder(tmp_path), input_shape=SHAPE)
    seen = []

    def model(x):
        seen.append(len(x))
        return np.zeros((len(x), 3), np.float32)

    with pytest.raises(Cancelled):
        evaluate(model, data, batch_size=2, ctx=RecordingContext(cancel_after=2))
    assert len(seen) == 2


def test_random_data_has_no_label_metrics_and_is_flagged():
    data = open_data("random", input_shape=SHAPE, random_samples=6)
    ev = evaluate({"a": tiny_net(), "b": tiny_net(seed=1)}, data, batch_size=4)
    for r in ev.results.values():
        assert r.is_random and r.top1 is None and r.precision is None and r.confusion is None
        assert RANDOM_DATA_NOTE in r.warnings
        assert r.to_dict()["random_data"] is True
    assert ev["b"].agreement is not None  # speed-only runs still compare outputs
    assert ev.is_random and RANDOM_DATA_NOTE in ev.warnings


def test_output_count_mismatch_and_unlabeled_data_warn(tmp_path):
    data = open_data(image_folder(tmp_path / "d"), input_shape=SHAPE)
    r = evaluate(tiny_net(num_classes=5), data)["model"]
    assert any("5 outputs but the data has 3 classes" in w for w in r.warnings)
    assert r.top1 is not None

    narrow = open_data(image_folder(tmp_path / "n", classes=("0", "1", "2", "3")), input_shape=SHAPE)
    r = evaluate(tiny_net(num_classes=3), narrow)["model"]
    assert any("class 3 has no model output (the model has 3: 0..2)" in w for w in r.warnings)

    flat = tmp_path / "flat"
    flat.mkdir()
    for p in (tmp_path / "d" / "a").iterdir():
        (flat / p.name).write_bytes(p.read_bytes())
    r = evaluate(tiny_net(), open_data(flat, input_shape=SHAPE))["model"]
    assert r.top1 is None and any("no labels" in w for w in r.warnings)


def test_skipped_files_are_reported_and_all_bad_is_an_input_error(tmp_path):
    root = image_folder(tmp_path / "d")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    r = evaluate(tiny_net(), open_data(root, input_shape=SHAPE))["model"]
    assert r.n == 12 and len(r.skipped) == 1 and r.skipped[0].path.endswith("broken.png")
    assert r.to_dict()["skipped"]["count"] == 1

    bad = tmp_path / "bad" / "a"
    bad.mkdir(parents=True)
    (bad / "x.png").write_bytes(b"")
    with pytest.raises(InputError, match="none of the 1 samples could be read"):
        evaluate(tiny_net(), open_data(tmp_path / "bad", input_shape=SHAPE))


def test_a_failing_variant_is_an_input_error_naming_it(tmp_path):
    data = open_data(image_folder(tmp_path), input_shape=(1, 3, 16, 16))

    def broken(x):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(InputError, match="'int8' failed on a batch of shape"):
        evaluate({"fp32": tiny_net(), "int8": broken}, data)


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def scripted_model(tmp_path):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(tiny_net(), torch.randn(*SHAPE))
    path = tmp_path / "tiny.pt"
    traced.save(str(path))
    return path


def test_cli_evaluate_json(tmp_path, scripted_model, capsys):
    from quantstudio.cli import main

    data = image_folder(tmp_path / "data")
    (data / "c" / "empty.png").write_bytes(b"")
    rc = main(["evaluate", str(scripted_model), "--input-shape", "1,3,16,16", "--data", str(data), "--json", "--batch-size", "5"])
    out = capsys.readouterr().out
    assert rc == 0
    d = json.loads(out)
    for key in ("top1", "top5", "precision", "recall", "f1", "n", "skipped", "warnings"):
        assert key in d
    assert d["n"] == 12 and 0.0 <= d["top1"] <= 1.0 and d["top5"] is None  # 3 classes: no top-5
    assert d["skipped"]["count"] == 1 and d["skipped"]["files"][0]["path"].endswith("empty.png")

    # --samples picks a stratified subset; the readable summary is short.
    rc = main(["evaluate", str(scripted_model), "--input-shape", "1,3,16,16", "--data", str(data), "--samples", "6", "--resize", "20", "--crop", "16"])
    text = capsys.readouterr().out
    assert rc == 0 and "top-1" in text and "(n=" in text and "skipped 1" in text


def test_cli_evaluate_bad_data_exits_2_naming_the_path(tmp_path, scripted_model, capsys):
    from quantstudio.cli import main

    missing = tmp_path / "no_such_folder"
    rc = main(["evaluate", str(scripted_model), "--data", str(missing)])
    err = capsys.readouterr().err
    assert rc == 2 and str(missing) in err and len(err.strip().splitlines()) == 1

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", str(scripted_model), "--data", str(empty)]) == 2
    assert str(empty) in capsys.readouterr().err

    data = image_folder(tmp_path / "d")
    assert main(["evaluate", str(scripted_model), "--data", str(data), "--resize", "big"]) == 2
    assert "--resize" in capsys.readouterr().err


def test_cli_evaluate_random_data_says_accuracy_means_nothing(scripted_model, capsys):
    from quantstudio.cli import main

    rc = main(["evaluate", str(scripted_model), "--input-shape", "1,3,16,16", "--data", "random", "--samples", "4", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert rc == 0 and d["random_data"] is True and d["top1"] is None and RANDOM_DATA_NOTE in d["warnings"]


# --------------------------------------------------------------------------- bundled demo


def _demo_files() -> dict:
    needed = [DEMO / "model.pth", DEMO / "demo.json", DEMO / "digits"]
    if not all(p.exists() for p in needed):
        pytest.skip("the bundled demo (resources/demo/model.pth, demo.json, digits/) is not there yet")
    return json.loads((DEMO / "demo.json").read_text())


@pytest.mark.slow
def test_demo_model_reports_its_documented_top1_in_torch_and_onnx(tmp_path, capsys):
    from quantstudio.cli import main
    from quantstudio.core.loading import load_model

    meta = _demo_files()
    arch = meta["arch"]
    # A state_dict does not record its input size; the demo's is in demo.json.
    shape = ",".join(str(d) for d in meta["input_shape"])
    argv = ["evaluate", str(DEMO / "model.pth"), "--arch", arch, "--input-shape", shape]
    rc = main(argv + ["--data", str(DEMO / "digits"), "--json"])
    d = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert d["skipped"]["count"] == 0 and d["n"] == meta["n"]
    assert d["top1"] == meta["top1"]

    model = load_model(DEMO / "model.pth", arch=arch, input_shape=tuple(meta["input_shape"]))
    onnx_model = load_model(export_onnx(model.module, tmp_path / "demo.onnx", model.input_shape))
    data = open_data(DEMO / "digits", input_shape=model.input_shape)
    assert evaluate(onnx_model, data, batch_size=64)["model"].top1 == meta["top1"]
