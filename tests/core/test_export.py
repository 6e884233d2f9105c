"""Exports: reloaded and checked before they count, written atomically, with a recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from quantstudio.core import export as export_mod
from quantstudio.core.engines.base import QuantConfig
from quantstudio.core.engines.ort.engine import OrtEngine
from quantstudio.core.engines.pytorch import engine as pytorch_engine_mod
from quantstudio.core.engines.pytorch.engine import TorchEngine
from quantstudio.core.errors import Cancelled, InputError
from quantstudio.core.export import atomic_write_text, export_format, export_model
from quantstudio.core.jobs import NullContext, RecordingContext
from quantstudio.core.plan import PrecisionPlan
from quantstudio.core.recipe import Recipe, data_fingerprint, make_recipe, recipe_path_for
from tests.core.models import tiny_net
from tests.core.test_engines import batches, bn_ready, loaded


@pytest.fixture(scope="module")
def quantized():
    xs = batches(2)
    model = loaded(bn_ready(tiny_net(), xs))
    plan = PrecisionPlan()
    plan.parse_assignment("fc=fp16")
    return {
        "model": model,
        "xs": xs,
        "torch": TorchEngine().quantize(model, plan, QuantConfig(engine="torch"), xs, NullContext()),
        "onnxruntime": OrtEngine().quantize(model, plan, QuantConfig(), xs, NullContext()),
    }


def folder_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_extension_must_fit_the_engine():
    assert export_format("onnxruntime", "m.onnx") == "onnx"
    assert export_format("torch", "m.PTH") == "torchscript"
    with pytest.raises(InputError, match="torch") as info:
        export_format("onnxruntime", "m.pth")
    assert "--engine torch" in info.value.hint
    with pytest.raises(InputError):
        export_format("torch", "m.onnx")


@pytest.mark.parametrize("engine, name", [("torch", "m.pth"), ("onnxruntime", "m.onnx")])
def test_export_reloads_matches_and_writes_the_recipe(quantized, tmp_path, engine, name):
    q, model, xs = quantized[engine], quantized["model"], quantized["xs"]
    recipe = make_recipe(model, PrecisionPlan(), q.config)
    ctx = RecordingContext()
    result = export_model(q, tmp_path / name, samples=xs[0], recipe=recipe, ctx=ctx)
    assert result.check.passed and result.check.top1_agreement == 1.0
    assert result.check.max_abs_diff <= result.check.tolerance and not result.check.random_input
    assert folder_files(tmp_path) == {name, "m.recipe.json"}  # no temp file left
    assert result.recipe_path == recipe_path_for(tmp_path / name)
    assert json.loads(result.recipe_path.read_text())["engine"] == engine
    if engine == "torch":
        reloaded = torch.jit.load(str(tmp_path / name))  # needs nothing but torch
        with torch.inference_mode():
            out = reloaded(torch.from_numpy(xs[1])).numpy()
    else:
        import onnx
        import onnxruntime as ort

        onnx.checker.check_model(str(tmp_path / name))
        sess = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        out = sess.run(None, {sess.get_inputs()[0].name: xs[1]})[0]
    np.testing.assert_allclose(out, q.runner(xs[1]), atol=1e-4)
    assert ctx.reports[-1][0] == 1.0
    assert export_model(q, tmp_path / "again" / name).check.random_input  # no samples: random, said so


@pytest.mark.parametrize("cancel_after", [1, 2, 3])
def test_cancelled_export_leaves_nothing_and_keeps_the_earlier_file(quantized, tmp_path, cancel_after):
    q, xs = quantized["onnxruntime"], quantized["xs"]
    target = tmp_path / "m.onnx"
    target.write_bytes(b"earlier export")
    recipe = make_recipe(quantized["model"], PrecisionPlan(), q.config)
    with pytest.raises(Cancelled):
        export_model(q, target, samples=xs[0], recipe=recipe, ctx=RecordingContext(cancel_after=cancel_after))
    assert folder_files(tmp_path) == {"m.onnx"}
    assert target.read_bytes() == b"earlier export"


def test_failed_write_or_failed_check_leaves_nothing(quantized, tmp_path, monkeypatch):
    q, xs = quantized["torch"], quantized["xs"]
    target = tmp_path / "m.pth"
    target.write_bytes(b"earlier export")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch.jit, "save", broken_save)
    with pytest.raises(InputError, match="could not be written") as err:  # a plain message, not a traceback
        export_model(q, target, samples=xs[0])
    assert err.value.path == target and "disk full" in err.value.details
    monkeypatch.undo()
    assert folder_files(tmp_path) == {"m.pth"} and target.read_bytes() == b"earlier export"

    # A file that does not reproduce the in-app outputs is never committed.
    monkeypatch.setattr(pytorch_engine_mod, "reload_torchscript", lambda path, samples: np.zeros((len(samples), 5), np.float32))
    with pytest.raises(InputError, match="does not reproduce"):
        export_model(q, target, samples=xs[0])
    assert folder_files(tmp_path) == {"m.pth"} and target.read_bytes() == b"earlier export"


def test_atomic_write_replaces_whole_files_only(tmp_path, monkeypatch):
    p = tmp_path / "r.json"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    monkeypatch.setattr(export_mod.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        atomic_write_text(p, "three")
    assert p.read_text() == "two" and folder_files(tmp_path) == {"r.json"}


def test_recipe_round_trip_fingerprint_and_validation(tmp_path):
    from quantstudio.core.data import Preprocessing, RandomSource, open_data

    model_file = tmp_path / "model.pth"
    model_file.write_bytes(b"weights")
    model = loaded(tiny_net())
    model.path = model_file
    plan = PrecisionPlan()
    plan.parse_assignment("layer4.*=fp32")
    data = RandomSource(8, (3, 32, 32), seed=1)
    cfg = QuantConfig(engine="torch", calibration="percentile", per_channel=False, seed=3)
    recipe = make_recipe(model, plan, cfg, preprocessing=Preprocessing.imagenet(), data=data,
                         calibration_indices=np.arange(4), evaluation_samples=4)
    d = recipe.to_dict()
    assert d["model"]["sha256"] == "f" * 0 + __import__("hashlib").sha256(b"weights").hexdigest()
    assert set(d["versions"]) >= {"torch", "torchvision", "onnx", "onnxruntime", "quantstudio"}
    assert d["data"]["calibration_fingerprint"]["samples"] == 4
    path = recipe.save(tmp_path / "m.recipe.json")
    again = Recipe.load(path)
    assert again.quant_config() == cfg
    assert again.precision_plan() == plan
    assert again.preprocessing_obj() == Preprocessing.imagenet()
    # The fingerprint follows the data: other rows or other files → another hash.
    fp = data_fingerprint(data, [0, 1])
    assert fp == data_fingerprint(data, [0, 1]) and fp != data_fingerprint(data, [0, 2])
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((4, 3, 32, 32), np.float32))
    tensor_fp = data_fingerprint(open_data(npy, input_shape=(1, 3, 32, 32)), [0, 1])
    np.save(npy, np.ones((4, 3, 32, 32), np.float32))
    assert data_fingerprint(open_data(npy, input_shape=(1, 3, 32, 32)), [0, 1]) != tensor_fp

    bad = tmp_path / "bad.json"
    for text in ("{not json", json.dumps({**d, "version": 7}), json.dumps({**d, "mode": "int4"}), json.dumps({"version": 1})):
        bad.write_text(text)
        with pytest.raises(InputError):
            Recipe.load(bad)


# --------------------------------------------------------------------------- one transaction

import hashlib  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from quantstudio.core import transaction  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def old_set(folder: Path, name: str = "m.onnx") -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: b"earlier model", "m.recipe.json": b'{"earlier": "recipe"}'}
    for n, b in files.items():
        (folder / n).write_bytes(b)
    return files


def on_disk(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_a_blocked_recipe_path_fails_before_work_and_keeps_the_old_model(quantized, tmp_path):
    q = quantized["onnxruntime"]
    old = old_set(tmp_path)
    (tmp_path / "m.recipe.json").unlink()
    (tmp_path / "m.recipe.json").mkdir()  # a folder in the way of the recipe
    ctx = RecordingContext()
    with pytest.raises(InputError, match="folder is in the way") as err:
        export_model(q, tmp_path / "m.onnx", samples=quantized["xs"][0],
                     recipe=make_recipe(quantized["model"], PrecisionPlan(), q.config), ctx=ctx)
    assert err.value.path == tmp_path / "m.recipe.json"
    assert ctx.reports == []  # before any work
    assert on_disk(tmp_path) == {"m.onnx": old["m.onnx"]}  # bytes equal, no temporary


def test_the_recipe_records_the_sha256_of_the_model_it_came_with(quantized, tmp_path):
    q = quantized["onnxruntime"]
    export_model(q, tmp_path / "m.onnx", samples=quantized["xs"][0],
                 recipe=make_recipe(quantized["model"], PrecisionPlan(), q.config))
    doc = json.loads((tmp_path / "m.recipe.json").read_text())
    assert doc["exports"]["m.onnx"]["sha256"] == sha(tmp_path / "m.onnx")
    Recipe.from_dict(doc)  # still a recipe the CLI reads


def test_the_model_being_quantized_is_never_overwritten(quantized, tmp_path):
    q = quantized["onnxruntime"]
    source = tmp_path / "source.onnx"
    source.write_bytes(b"the user's model")
    model = quantized["model"]
    recipe = make_recipe(model, PrecisionPlan(), q.config)
    recipe.model["path"] = str(source)
    with pytest.raises(InputError, match="overwrite a file it is reading"):
        export_model(q, source, samples=quantized["xs"][0], recipe=recipe)
    assert source.read_bytes() == b"the user's model"


def _fail_on_second_target_rename(monkeypatch, folder: Path, exc: BaseException) -> list:
    real = os.replace
    renamed: list[str] = []

    def replace(src, dst):
        if Path(dst).parent == folder and not transaction.JOURNAL_RE.match(Path(dst).name):
            renamed.append(Path(dst).name)
            if len(renamed) == 2:
                raise exc
        return real(src, dst)

    monkeypatch.setattr(transaction.os, "replace", replace)
    return renamed


def _die_after_the_first_rename(monkeypatch, folder: Path) -> type:
    """The process 'dies' right after the first target rename: nothing of it runs afterwards."""
    class Killed(BaseException):
        pass

    _fail_on_second_target_rename(monkeypatch, folder, Killed())
    monkeypatch.setattr(transaction, "_roll_forward", lambda entries: False)
    monkeypatch.setattr(transaction, "_roll_back", lambda entries: False)
    return Killed


def test_a_failure_between_the_renames_restores_the_old_set(quantized, tmp_path, monkeypatch):
    q = quantized["onnxruntime"]
    old = old_set(tmp_path)
    renamed = _fail_on_second_target_rename(monkeypatch, tmp_path, OSError(28, "No space left on device"))
    with pytest.raises(InputError, match="nothing was changed"):
        export_model(q, tmp_path / "m.onnx", samples=quantized["xs"][0],
                     recipe=make_recipe(quantized["model"], PrecisionPlan(), q.config))
    assert renamed[:2] == ["m.onnx", "m.recipe.json"]  # the model had been replaced already
    assert on_disk(tmp_path) == old  # and is back; no temporary, backup or journal left


def test_a_death_between_the_renames_is_rolled_forward_next_time(quantized, tmp_path, monkeypatch):
    q = quantized["onnxruntime"]
    old = old_set(tmp_path)
    killed = _die_after_the_first_rename(monkeypatch, tmp_path)
    with pytest.raises(killed):
        export_model(q, tmp_path / "m.onnx", samples=quantized["xs"][0],
                     recipe=make_recipe(quantized["model"], PrecisionPlan(), q.config), ctx=RecordingContext())
    monkeypatch.undo()
    mixed = on_disk(tmp_path)
    assert mixed["m.recipe.json"] == old["m.recipe.json"] and mixed["m.onnx"] != old["m.onnx"]  # the mix a kill leaves
    notes = transaction.recover_folder(tmp_path)
    assert notes and "finished an interrupted export" in notes[0]
    assert set(on_disk(tmp_path)) == {"m.onnx", "m.recipe.json"}
    assert json.loads((tmp_path / "m.recipe.json").read_text())["exports"]["m.onnx"]["sha256"] == sha(tmp_path / "m.onnx")


def test_stale_temporaries_are_swept_young_ones_kept(quantized, tmp_path):
    stale = tmp_path / ".m.onnx.0123456789ab.tmp"
    young = tmp_path / ".m.onnx.ba9876543210.tmp"
    other = tmp_path / ".notes.tmp"  # not our naming: never touched
    for p in (stale, young, other):
        p.write_bytes(b"x")
    os.utime(stale, (time.time() - 120, time.time() - 120))
    os.utime(other, (time.time() - 120, time.time() - 120))
    export_model(quantized["onnxruntime"], tmp_path / "m.onnx", samples=quantized["xs"][0])
    assert not stale.exists() and young.exists() and other.exists()


# ----------------------------------------------------------------- the CLI, in a real child process

CHILD = r"""
import os, sys, time
from pathlib import Path
out, mode, model = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
real_replace = os.replace
if mode == "kill-in-commit":
    renamed = []
    def replace(src, dst):
        real_replace(src, dst)
        if Path(dst).parent == out.parent and not Path(dst).name.endswith(".export-journal.json"):
            renamed.append(dst)
            if len(renamed) == 1:
                print("QS-TEST: in the commit", file=sys.stderr, flush=True)
                time.sleep(60)
    os.replace = replace
else:
    from quantstudio.core.engines.ort.engine import OrtEngine
    real_write = OrtEngine.write
    def write(self, qm, path, example):
        real_write(self, qm, path, example)
        print("QS-TEST: writing", file=sys.stderr, flush=True)
        time.sleep(3)
    OrtEngine.write = write
from quantstudio.cli import main
sys.exit(main(["quantize", model, "--data", "random", "--calib-samples", "4", "--eval-samples", "4",
               "--no-benchmark", "--out", str(out)]))
"""


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """A small ONNX model: the child CLI takes seconds, not tens of seconds."""
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    torch.onnx.export(tiny_net().eval(), (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})
    return path


def run_child_until(out: Path, mode: str, marker: str, model: Path) -> subprocess.Popen:
    """The CLI exporting to ``out`` in a child process, once it printed ``marker`` (a test-only patch)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "QT_QPA_PLATFORM": "offscreen"}  # tests/core/conftest.py's data dir
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(out), mode, str(model)], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    for line in child.stderr:
        if marker in line:
            return child
        if time.monotonic() > deadline:
            break
    child.kill()
    child.wait()
    pytest.fail(f"the child never reached '{marker}' (exit {child.returncode})")


def test_kill_9_in_the_commit_then_the_next_start_shows_one_whole_set(tmp_path, tiny_onnx):
    folder = tmp_path / "out"
    old = old_set(folder)
    child = run_child_until(folder / "m.onnx", "kill-in-commit", "in the commit", tiny_onnx)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()
    left = on_disk(folder)
    assert left["m.recipe.json"] == old["m.recipe.json"] and left["m.onnx"] != old["m.onnx"]  # what the kill left
    assert any(transaction.JOURNAL_RE.match(n) for n in left)
    notes = transaction.recover_recent()  # what the CLI and the app do when they start
    assert any("finished an interrupted export" in n for n in notes)
    assert set(on_disk(folder)) == {"m.onnx", "m.recipe.json"}  # no temporary, backup or journal
    doc = json.loads((folder / "m.recipe.json").read_text())
    assert doc["exports"]["m.onnx"]["sha256"] == sha(folder / "m.onnx")  # the new model with its own recipe


def test_sigterm_while_writing_cancels_and_removes_the_temporaries(tmp_path, tiny_onnx):
    folder = tmp_path / "out"
    old = old_set(folder)
    child = run_child_until(folder / "m.onnx", "write", "QS-TEST: writing", tiny_onnx)
    assert any(transaction.TEMP_RE.match(p.name) for p in folder.iterdir())  # the model is being written
    child.send_signal(signal.SIGTERM)
    rest = child.stderr.read()
    assert child.wait(timeout=60) == 130, rest
    assert "cancelled" in rest
    assert on_disk(folder) == old  # the old set, bytes equal, and nothing else


def test_the_recipe_being_read_is_never_overwritten(quantized, tmp_path, capsys):
    from quantstudio.cli import main

    recipe_file = tmp_path / "r" / "valid.recipe.json"
    recipe_file.parent.mkdir()
    make_recipe(quantized["model"], PrecisionPlan(), QuantConfig()).save(recipe_file)
    before = recipe_file.read_bytes()
    rc = main(["quantize", "--recipe", str(recipe_file), "--data", "random", "--out", str(tmp_path / "r" / "valid.onnx")])
    err = capsys.readouterr().err
    assert rc == 2 and "overwrite the recipe being read" in err and str(recipe_file) in err
    assert "valid_2.onnx" in err  # what to do instead
    assert recipe_file.read_bytes() == before and sorted(p.name for p in recipe_file.parent.iterdir()) == ["valid.recipe.json"]


def test_a_lost_new_file_rolls_the_set_back_to_the_earlier_one(tmp_path, monkeypatch):
    old = old_set(tmp_path)
    killed = _die_after_the_first_rename(monkeypatch, tmp_path)
    with pytest.raises(killed):
        with transaction.ExportTransaction([tmp_path / "m.onnx", tmp_path / "m.recipe.json"]) as txn:
            txn.write_bytes(tmp_path / "m.onnx", b"new model")
            txn.write_bytes(tmp_path / "m.recipe.json", b"new recipe")
            txn.commit()
    monkeypatch.undo()
    assert (tmp_path / "m.onnx").read_bytes() == b"new model"
    for p in tmp_path.glob(".m.recipe.json.*.tmp"):
        if p.read_bytes() == b"new recipe":
            p.unlink()  # the new recipe is lost (a disk error, a person cleaning up)
    notes = transaction.recover_folder(tmp_path)
    assert notes and "undid an interrupted export" in notes[0]
    assert on_disk(tmp_path) == old  # the earlier set, whole


def test_a_journal_of_a_running_export_is_left_alone(tmp_path, monkeypatch):
    old_set(tmp_path)
    killed = _die_after_the_first_rename(monkeypatch, tmp_path)
    with pytest.raises(killed):
        with transaction.ExportTransaction([tmp_path / "m.onnx", tmp_path / "m.recipe.json"]) as txn:
            txn.write_bytes(tmp_path / "m.onnx", b"new model")
            txn.write_bytes(tmp_path / "m.recipe.json", b"new recipe")
            txn.commit()
    monkeypatch.undo()
    [journal] = [p for p in tmp_path.iterdir() if transaction.JOURNAL_RE.match(p.name)]
    doc = json.loads(journal.read_text())
    doc["pid"] = os.getppid()  # a process that is alive: its export is committing right now
    journal.write_text(json.dumps(doc))
    for p in tmp_path.iterdir():  # even its temporaries look stale
        os.utime(p, (time.time() - 120, time.time() - 120))
    os.utime(journal, None)
    before = on_disk(tmp_path)
    assert transaction.recover_folder(tmp_path) == [] and on_disk(tmp_path) == before
    doc["pid"] = 0  # gone: now it is repaired
    journal.write_text(json.dumps(doc))
    assert "finished" in transaction.recover_folder(tmp_path)[0]
    assert on_disk(tmp_path) == {"m.onnx": b"new model", "m.recipe.json": b"new recipe"}
