"""Tiny models for tests (no downloads), saved in every file kind QuantStudio reads."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


class TinyNet(nn.Module):
    """Conv-BN-ReLU x2, pool, linear: small, quantizable, 3x32x32 in, 5 classes out."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.conv2(x))
        return self.fc(self.flatten(self.pool(x)))


def tiny_net(seed: int = 0, num_classes: int = 5) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(num_classes).eval()


def save_all_forms(model: nn.Module, x: torch.Tensor, folder: Path, stem: str) -> dict[str, Path]:
    """Save ``model`` as whole pickle, TorchScript, .pt2 and ONNX; return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "whole": folder / f"{stem}_whole.pth",
        "torchscript": folder / f"{stem}.ts.pt",
        "pt2": folder / f"{stem}.pt2",
        "onnx": folder / f"{stem}.onnx",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(model, paths["whole"])
        torch.jit.trace(model, x).save(str(paths["torchscript"]))
        torch.export.save(torch.export.export(model, (x,)), str(paths["pt2"]))
        torch.onnx.export(
            model, (x,), str(paths["onnx"]), dynamo=False, opset_version=17,
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    return paths
