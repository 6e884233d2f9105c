"""quantstudio-cli inspect: table, JSON, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from quantstudio.cli import main
from tests.core.models import tiny_net


def _saved(tmp_path):
    p = tmp_path / "tiny.ts"
    torch.jit.trace(tiny_net(), torch.randn(1, 3, 32, 32)).save(str(p))
    return p


def test_inspect_table_has_columns_and_totals(tmp_path, capsys):
    p = _saved(tmp_path)
    assert main(["inspect", str(p), "--input-shape", "1,3,32,32"]) == 0
    out = capsys.readouterr().out
    assert "name" in out and "output shape" in out and "quantizable" in out
    assert "conv1" in out and "Conv2d" in out
    total = sum(x.numel() for x in tiny_net().parameters())
    assert f"{total:,} parameters" in out


def test_inspect_json(tmp_path, capsys):
    p = _saved(tmp_path)
    assert main(["inspect", str(p), "--input-shape", "1,3,32,32", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "torchscript"
    assert data["total_params"] == sum(x.numel() for x in tiny_net().parameters())
    assert data["tree"]["children"][0]["name"] == "conv1"
    assert data["input_shape"] == [1, 3, 32, 32]


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.onnx"
    assert main(["inspect", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(missing) in err and "Traceback" not in err


def test_pickle_without_trust_exits_2_and_explains(tmp_path, capsys):
    p = tmp_path / "whole.pth"
    torch.save(tiny_net(), p)
    assert main(["inspect", str(p)]) == 2
    err = capsys.readouterr().err
    assert "--trust" in err and str(p) in err
    assert main(["inspect", str(p), "--trust", "--input-shape", "1,3,32,32"]) == 0


def test_console_script_runs(tmp_path):
    """The installed entry point works end to end in a fresh process."""
    p = _saved(tmp_path)
    exe = os.path.join(os.path.dirname(sys.executable), "quantstudio-cli")
    res = subprocess.run([exe, "inspect", str(p), "--json", "--input-shape", "1,3,32,32"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["total_macs"] > 0
    res = subprocess.run([exe, "inspect", str(tmp_path / "nope.pth")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and "nope.pth" in res.stderr


def test_inspect_table_shows_qualified_names(tmp_path, capsys):
    """Each row carries the full dotted name: the exact string --precision patterns match."""
    import torchvision

    p = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), p)
    assert main(["inspect", str(p), "--arch", "resnet18", "--input-shape", "1,3,64,64"]) == 0
    rows = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert {"layer4.1.conv2", "layer4.1", "layer2.0.downsample.0", "fc"} <= rows
