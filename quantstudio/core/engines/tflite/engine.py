"""The TensorFlow Lite (LiteRT) engine: ``.tflite`` files for phones and embedded boards.

A PyTorch model is converted to an FP32 ``.tflite`` with ``litert_torch`` (convert.py),
then quantized with ``ai-edge-quantizer`` from a recipe built from the precision plan
(recipe.py): static INT8 (full integer, the user's calibration data, float input and
output), dynamic-range INT8 or FP16 weights, any layer FP32 (or FP16) by its name. The
result runs in LiteRT's interpreter (runtime.py), which is also what evaluation, the
per-layer error and the benchmark use; the FP32 ``.tflite`` is the same-runtime baseline.

Only PyTorch sources: litert_torch converts ``torch.nn.Module``s through torch.export.
The issue measured ``onnx2tf`` (pins old numpy/onnx/onnxruntime) and ``tflite-runtime``
(fails with NumPy 2) and rejected both, so an ONNX source has no way to ``.tflite`` here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from quantstudio.core.engines.base import QuantConfig, QuantizedModel
from quantstudio.core.errors import Cancelled, InputError
from quantstudio.core.jobs import JobContext
from quantstudio.core.loading import with_article
from quantstudio.core.plan import Precision, PrecisionPlan

# Layer types the per-layer error is shown for (as the other engines: the weighted layers).
WEIGHTED_TYPES = ("Conv1d", "Conv2d", "Conv3d", "Linear", "ConvTranspose2d")

MODE_NOTES = {
    "static": "full-integer INT8 (int8 weights per-channel, int8 activations from calibration), float input/output",
    "dynamic": "dynamic-range INT8: int8 weights, activations quantized at run time by LiteRT's kernels",
    "fp16": "FP16 weights, dequantized to float at load time (half the size; compute stays FP32 on CPUs)",
}


class TfliteEngine:
    """FP16 / dynamic / full-integer static INT8 ``.tflite`` with litert_torch + ai-edge-quantizer."""

    name = "tflite"
    label = "TensorFlow Lite (LiteRT)"
    short_label = "LiteRT"
    formats = {".tflite": "tflite"}

    def install_reason(self) -> str | None:
        """Why the engine cannot run on this install at all (the optional extra missing), or None.

        Asked before any model is open, so the app can grey the engine out from the start.
        """
        from quantstudio.core.engines.tflite.convert import extra_missing_reason

        return extra_missing_reason()

    def unsupported_reason(self, model: Any) -> str | None:
        from quantstudio.core.engines.tflite.convert import extra_missing_reason

        missing = extra_missing_reason()
        if missing:
            return missing
        if model is None:
            return None
        if getattr(model, "framework", None) == "onnx":
            return ("the TensorFlow Lite engine converts from PyTorch only (litert_torch); an ONNX model has no "
                    "supported way to .tflite here - open the PyTorch model (.pth/.pt2) it came from")
        # litert_torch goes through torch.export: eager modules and .pt2 programs, not TorchScript.
        if not getattr(model, "is_eager", False) and getattr(model, "kind", None) != "exported_program":
            what = with_article(getattr(model, "kind_label", "model"))
            return (f"the TensorFlow Lite engine converts through torch.export, which cannot read "
                    f"{what} - open the state_dict or whole model it came from")
        return None

    def quantize(
        self,
        model: Any,
        plan: PrecisionPlan,
        config: QuantConfig,
        calib_batches: Iterable[Any],
        ctx: JobContext,
    ) -> QuantizedModel:
        from quantstudio.core.engines.tflite.convert import convert_fp32
        from quantstudio.core.engines.tflite.recipe import build_recipe, quantize_tflite
        from quantstudio.core.engines.tflite.runtime import TfliteRunner, layer_ops, read_facts, recipe_regex
        from quantstudio.core.inventory import build_inventory

        reason = self.unsupported_reason(model)
        if reason:
            raise InputError(f"cannot make a .tflite: {reason}", path=getattr(model, "path", None),
                             hint="Use the ONNX Runtime engine (--engine onnxruntime) for this model.")
        ctx.partial({"type": "stage", "name": "prepare"})
        ctx.check_cancelled()
        ctx.report(0.0, "reading the layer tree")
        tree = build_inventory(model)
        decisions = plan.resolve(tree)
        effective = {name: d.effective for name, d in decisions.items()}
        notes: list[str] = [f"TensorFlow Lite: {MODE_NOTES[config.mode]}"]
        for name, d in decisions.items():
            if d.effective != d.requested and d.reason:
                notes.append(f"{name}: {d.requested.value} → {d.effective.value} ({d.reason})")
        ctx.check_cancelled()
        ctx.report(0.05, "converting to .tflite (litert_torch)")
        fp32 = convert_fp32(model)
        ctx.check_cancelled()

        ctx.partial({"type": "stage", "name": "calibrate" if config.mode == "static" else "convert"})
        base = Precision.FP16 if config.mode == "fp16" else Precision.INT8
        overrides = {n: p for n, p in effective.items()
                     if p is not base and not (config.mode == "fp16" and p is Precision.INT8)}
        quantized_any = any(p is not Precision.FP32 for p in effective.values()) or not effective
        if quantized_any:
            fp32_facts = read_facts(fp32)
            fp32_ops = layer_ops(fp32_facts, list(overrides))
            regexes = {recipe_regex(n, fp32_ops[n], fp32_facts): p for n, p in overrides.items() if fp32_ops[n]}
            # int8 input/output (for integer-only accelerators): read from the config once it
            # has the field; float I/O by default so the file drops into code fed FP32.
            int8_io = bool(getattr(config, "int8_io", False))
            recipe = build_recipe(config.mode, regexes, per_channel=config.per_channel, int8_io=int8_io)
            if int8_io and config.mode == "static":
                notes.append("int8 input and output: quantize inputs with the input tensor's scale/zero point")
            try:
                data, how = quantize_tflite(fp32, recipe, calib_batches if config.mode == "static" else None, ctx,
                                            0.4, 0.9, tuple(model.input_shape), config.calibration)
            except (InputError, Cancelled):
                raise
            except Exception as exc:  # noqa: BLE001 - the quantizer's checks raise ValueError/RuntimeError
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                raise InputError(f"ai-edge-quantizer could not quantize this model: {first}", path=model.path,
                                 hint="Keep the layers it names in FP32, or use dynamic INT8 or FP16.",
                                 details=f"{type(exc).__name__}: {exc}"[-4000:]) from exc
            if how:
                notes.append(f"activation ranges: {how}")
        else:
            recipe, data = [], fp32
            notes.append("the plan leaves every layer FP32: the file is the plain FP32 conversion")
        ctx.check_cancelled()
        ctx.partial({"type": "stage", "name": "convert"})
        ctx.report(0.92, "loading the .tflite in LiteRT")
        try:
            runner = TfliteRunner(data)
        except Exception as exc:  # noqa: BLE001
            raise InputError("LiteRT cannot run the quantized .tflite", path=model.path,
                             hint="Keep the layers named in the details in FP32, or try another mode.",
                             details=str(exc)[-4000:]) from exc

        facts = read_facts(data)
        leaves = [n for n in tree.leaves() if n.name]
        ops = layer_ops(facts, [n.name for n in leaves])
        built: dict[str, str] = {}
        for leaf in leaves:
            compute = [op for op in ops[leaf.name] if op.op in _compute_ops()]
            if compute:
                built[leaf.name] = facts.compute_precision(compute[-1])
            elif ops[leaf.name]:
                # An element-wise op of the layer (ReLU fused away, ADD, pool): its output type.
                t = facts.tensors[ops[leaf.name][-1].outputs[0]].dtype
                built[leaf.name] = "int8" if t in ("int8", "int16", "uint8") else "fp32"
        notes.extend(_stayed_notes(tree, effective, built, ops, config.mode))
        notes.extend(_doctor_notes(facts))
        ctx.report(1.0, "quantized")
        return QuantizedModel(
            engine=self.name,
            config=config,
            runner=runner,
            layer_precisions=built,
            fused=_fused_groups(facts, [n.name for n in leaves], ops),
            notes=notes,
            artifact=data,
            input_shape=tuple(model.input_shape) if model.input_shape else None,
            extras={"fp32": fp32, "recipe": recipe,
                    "weighted_layers": [n.name for n in leaves if n.type in WEIGHTED_TYPES]},
        )

    # ------------------------------------------------------------------ measuring
    def reference_runner(self, model: Any, qm: QuantizedModel) -> Callable[[np.ndarray], np.ndarray] | None:
        from quantstudio.core.engines.tflite.runtime import TfliteRunner

        fp32 = qm.extras.get("fp32")
        return TfliteRunner(fp32) if fp32 is not None else None  # same runtime, FP32: the fair baseline

    def layer_error(self, model: Any, qm: QuantizedModel, batches: list[np.ndarray],
                    ctx: JobContext | None = None) -> dict[str, float]:
        from quantstudio.core.engines.tflite.runtime import layer_sqnr

        fp32 = qm.extras.get("fp32")
        if fp32 is None:
            return {}
        return layer_sqnr(fp32, qm.artifact, list(qm.extras.get("weighted_layers", [])), batches, ctx)

    def sizes(self, model: Any, qm: QuantizedModel) -> dict[str, int | None]:
        fp32 = qm.extras.get("fp32")
        return {"original_bytes": len(fp32) if fp32 is not None else None, "quantized_bytes": len(qm.artifact)}

    def memory_files(self, model: Any, qm: QuantizedModel, folder: Path,
                     ctx: JobContext) -> tuple[dict[str, Path], dict[str, str]]:
        # The memory probe (core/benchmark.py) loads ONNX and PyTorch files only.
        why = "peak memory of a .tflite is not measured yet (the memory probe loads .onnx and .pth files)"
        return {}, {"original": why, "quantized": why}

    # ------------------------------------------------------------------ files
    def write(self, qm: QuantizedModel, path: Path, example: np.ndarray) -> None:
        with open(path, "wb") as f:
            f.write(qm.artifact)

    def reload(self, qm: QuantizedModel, path: Path, samples: np.ndarray) -> tuple[np.ndarray, str]:
        from quantstudio.core.engines.tflite.runtime import TfliteRunner

        try:
            runner = TfliteRunner(Path(path).read_bytes())
        except Exception as exc:  # noqa: BLE001
            raise InputError("the exported .tflite does not load in LiteRT", path=path,
                             hint="Nothing was written. Try keeping more layers in FP32.",
                             details=str(exc)[-4000:]) from exc
        return runner(samples), "a fresh ai_edge_litert Interpreter"


def _compute_ops() -> tuple[str, ...]:
    from quantstudio.core.engines.tflite.runtime import COMPUTE_OPS

    return COMPUTE_OPS


def _stayed_notes(tree: Any, effective: dict[str, Precision], built: dict[str, str], ops: dict[str, list],
                  mode: str) -> list[str]:
    """Layers that did not get what the plan asked, named with the reason."""
    notes: list[str] = []
    missing = [n.name for n in tree.leaves() if n.name and n.params and not ops.get(n.name)]
    if missing:
        notes.append(f"{len(missing)} layer{'s' if len(missing) != 1 else ''} not found by name in the .tflite "
                     f"(the converter merged or renamed {'them' if len(missing) != 1 else 'it'}; "
                     f"{'they follow' if len(missing) != 1 else 'it follows'} the mode): {', '.join(missing[:5])}"
                     + ("…" if len(missing) > 5 else ""))
    if mode == "static":
        stayed = [n for n, p in built.items() if p == "fp32" and effective.get(n) is Precision.INT8
                  and any(op.op in _compute_ops() for op in ops.get(n, []))]
        if stayed:
            notes.append(f"{len(stayed)} INT8 layer{'s' if len(stayed) != 1 else ''} stayed FP32: ai-edge-quantizer "
                         f"has no int8 kernel config for {'their' if len(stayed) != 1 else 'its'} op here: "
                         + ", ".join(stayed[:5]) + ("…" if len(stayed) > 5 else ""))
    if mode == "dynamic":
        notes.append("dynamic-range INT8 quantizes the weights of conv and fully-connected ops; "
                     "element-wise ops stay float")
    return notes


def _doctor_notes(facts: Any) -> list[str]:
    from quantstudio.core.doctor import cpu_features, diagnose, DoctorInput, tflite_facts

    return [f.text() for f in diagnose(DoctorInput(cpu=cpu_features(), facts=tflite_facts(facts)))
            if f.title.startswith(("LiteRT", "no layer", "TFLite"))]


def _fused_groups(facts: Any, layers: list[str], ops: dict[str, list]) -> list[list[str]]:
    """Layers the converter fused into one op (conv + batch norm + relu): same output tensor."""
    by_op: dict[int, list[str]] = {}
    for name in layers:
        for op in ops.get(name, []):
            if op.op in _compute_ops():
                by_op.setdefault(op.index, []).append(name)
    return [names for names in by_op.values() if len(names) > 1]


def recipe_json(qm: QuantizedModel) -> str:
    """The ai-edge-quantizer recipe that made ``qm`` (what ``Quantizer.load_quantization_recipe`` reads)."""
    return json.dumps(qm.extras.get("recipe", []), indent=2)
