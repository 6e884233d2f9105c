"""The PyTorch engine: ``torch.ao.quantization`` FX graph mode for eager models.

* **static** INT8: ``prepare_fx`` (which also fuses conv+bn(+relu), linear+relu, ...)
  with a per-layer ``QConfigMapping`` built from the precision plan, a calibration loop,
  ``convert_fx``. FP32 layers get qconfig ``None``; FP16 layers stay float in the FX
  model and then run in half precision, with casts in its graph (see
  :func:`run_fp16_in_graph`).
* **dynamic** INT8: ``quantize_dynamic`` of the Linear/LSTM/GRU layers the plan leaves
  INT8 (activations are quantized at run time, so no calibration).
* **fp16**: every layer the plan leaves INT8 runs in half precision instead (module
  hooks cast at the boundaries, see :func:`run_in_half`).

Only eager modules (state_dicts, trusted pickles) can be traced by FX; TorchScript and
``torch.export`` programs go to the ONNX Runtime engine. ``torch.ao.quantization`` warns
that it is deprecated in torch 2.14; the user cannot act on that, so the engine silences
it. The export is a traced and frozen TorchScript archive (DESIGN: ``torch.save`` of a
converted FX model does not load back in torch 2.14).
"""

from __future__ import annotations

from __future__ import annotations

import copy
import platform
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from quantstudio.core.engines.base import QuantConfig, QuantizedModel
from quantstudio.core.engines.pytorch.cancel import cancel_inside_calls, cancel_points
from quantstudio.core.engines.pytorch.fp16 import _eager_built, _eager_half, _fp16_scopes, run_fp16_in_graph
from quantstudio.core.engines.pytorch.fx import (
    QNNPACK_CLAMP_NOTE,
    _chain_groups_before,
    _node_kinds,
    _trace_error,
    built_precisions,
    fusion_groups,
    guard_qnnpack_clamps,
)
from quantstudio.core.engines.pytorch.qconfig import build_qconfig_mapping
from quantstudio.core.engines.pytorch.runner import (
    TorchRunner,
    reload_torchscript,
    write_torchscript,
    _as_array,
    is_arm_machine,
    quantized_engine,
    quiet,
    release_torch_ao_caches,
    resolve_backend,
)
from quantstudio.core.errors import Cancelled, InputError
from quantstudio.core.jobs import JobContext
from quantstudio.core.loading import with_article
from quantstudio.core.metrics import ErrorAccumulator
from quantstudio.core.plan import Precision, PrecisionPlan

# Layer types quantize_dynamic turns into INT8 (weights INT8, activations at run time).
DYNAMIC_TYPES = ("Linear", "LSTM", "GRU", "LSTMCell", "GRUCell", "RNNCell")


FP16_NOTE = "FP16 layers run in half precision; on x86 CPUs PyTorch has no fast half kernels, so they are slower than FP32"


QNNPACK_ON_X86_NOTE = (
    "qnnpack on a {machine} CPU: the accuracy shown comes from QNNPACK's arithmetic, as on an ARM device running "
    "this file, but the speed comes from QNNPACK's portable x86 kernels and says nothing about the ARM device's "
    "speed (choose backend x86 to measure this computer's fast INT8 path)"
)


# --------------------------------------------------------------------------- engine


class TorchEngine:
    """Static / dynamic INT8 and FP16 of eager PyTorch models with ``torch.ao``."""

    name = "torch"
    label = "PyTorch"
    short_label = "PyTorch"
    formats = {".pth": "torchscript", ".pt": "torchscript"}

    def unsupported_reason(self, model: Any) -> str | None:
        # FX rewrites the model's Python modules: only an eager module (a state_dict rebuilt
        # into its architecture, a whole saved model) has them.
        if getattr(model, "is_eager", False):
            return None
        what = with_article(getattr(model, "kind_label", "model"))
        return (f"the PyTorch engine needs the model's Python code (a state_dict or a whole saved model), "
                f"which {what} does not hold")

    def quantize(
        self,
        model: Any,
        plan: PrecisionPlan,
        config: QuantConfig,
        calib_batches: Iterable[Any],
        ctx: JobContext,
    ) -> QuantizedModel:
        import torch

        tree, requested, backend, notes = self._begin(model, plan, config, ctx)
        try:
            with quiet(), torch.inference_mode(False), torch.no_grad(), cancel_points(ctx):
                if config.mode == "static":
                    result = self._static(model, tree, requested, config, backend, calib_batches, ctx, notes)
                elif config.mode == "dynamic":
                    result = self._dynamic(model, tree, requested, config, backend, ctx, notes)
                else:
                    result = self._fp16_only(model, tree, requested, config, ctx, notes)
        finally:
            release_torch_ao_caches()
        return result

    def _begin(self, model: Any, plan: PrecisionPlan, config: QuantConfig, ctx: JobContext):
        """Checks, the backend, the layer tree and the plan's decisions: (tree, requested, backend, notes)."""
        import torch

        if not getattr(model, "is_eager", False):
            raise InputError(
                f"the PyTorch engine quantizes eager models only, not {with_article(model.kind_label)}",
                path=model.path,
                hint="Use the ONNX Runtime engine (--engine onnxruntime) for TorchScript, .pt2 and ONNX models.",
            )
        from quantstudio.core.inventory import build_inventory

        backend = resolve_backend(config.backend)
        if backend not in torch.backends.quantized.supported_engines:
            raise InputError(
                f"this PyTorch build has no '{backend}' quantized backend",
                hint=f"Use one of: {', '.join(e for e in torch.backends.quantized.supported_engines if e in ('x86', 'qnnpack'))}.",
            )
        torch.backends.quantized.engine = backend
        ctx.check_cancelled()
        ctx.report(0.0, "reading the layer tree")
        tree = build_inventory(model)
        ctx.check_cancelled()
        decisions = plan.resolve(tree)
        requested = {name: d.effective for name, d in decisions.items()}
        notes = [f"backend {backend} (torch.backends.quantized.engine)"]
        if backend == "qnnpack" and not is_arm_machine():
            notes.append(QNNPACK_ON_X86_NOTE.format(machine=platform.machine() or "non-ARM"))
        for name, d in decisions.items():
            if d.effective != d.requested and d.reason:
                notes.append(f"{name}: {d.requested.value} → {d.effective.value} ({d.reason})")
        return tree, requested, backend, notes

    def quantize_aware(self, model: Any, plan: PrecisionPlan, config: QuantConfig, calib_batches: Iterable[Any],
                       training: Any, ctx: JobContext) -> tuple[QuantizedModel, dict[str, Any]]:
        """Quantization-aware training (engines/pytorch/qat.py): calibrate, fine-tune, convert.

        ``training``: a :class:`~quantstudio.core.qat.TrainingData`. Returns the INT8 model and
        ``RunSummary.training``. A cancel during training keeps the best epoch and finishes.
        """
        from quantstudio.core.engines.pytorch.qat import train_qat

        out = train_qat(self, model, plan, config, calib_batches, training, ctx, target="torch")
        return out.quantized, out.training

    # ------------------------------------------------------------------ static
    def _static(self, model, tree, requested, config, backend, calib_batches, ctx, notes) -> QuantizedModel:
        import torch

        traced, prepared, effective, example = self._prepare_fx(model, tree, requested, config, backend, ctx, notes)
        ctx.partial({"type": "stage", "name": "calibrate"})
        total = len(calib_batches) if hasattr(calib_batches, "__len__") else None
        n = 0
        for batch in calib_batches:
            ctx.check_cancelled()
            prepared(torch.from_numpy(_as_array(batch)))
            n += 1
            frac = n / total if total else 1 - 1 / (n + 1)
            ctx.report(0.05 + 0.85 * frac, f"calibrating: batch {n}" + (f"/{total}" if total else ""))
        if n == 0:
            raise InputError("there is no calibration data", hint="Choose data with at least one sample.")
        ctx.check_cancelled()
        return self._convert_fx(model, tree, config, backend, traced, prepared, effective, example, ctx, notes)

    def _prepare_fx(self, model, tree, requested, config, backend, ctx, notes, qconfig=None):
        """Trace, fuse and insert observers (``qconfig``: QAT fake quantizers, prepared for training).

        Returns (traced original, prepared model, effective precisions, example input)."""
        import torch
        from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

        qat = qconfig is not None
        ctx.partial({"type": "stage", "name": "prepare"})
        ctx.report(0.02, "fusing layers and inserting observers")
        float_model = copy.deepcopy(model.module)
        float_model.train(qat)
        ctx.check_cancelled()
        try:
            traced = torch.fx.symbolic_trace(float_model)
        except Exception as exc:  # noqa: BLE001 - tracing user code fails in many ways
            raise _trace_error(exc, float_model, model.path) from exc
        ctx.check_cancelled()
        groups_before = _chain_groups_before(traced)
        mapping, effective = build_qconfig_mapping(config, backend, requested, tree, groups_before, qconfig)
        for group in groups_before:
            for member in group[1:]:
                if member in requested and requested[member] != effective.get(member):
                    notes.append(
                        f"{member}: {requested[member].value} → {effective[member].value} "
                        f"(fused into {group[0]}, which is {effective[member].value})"
                    )
        example = (model.example_input(),)
        try:
            prepared = (prepare_qat_fx if qat else prepare_fx)(float_model, mapping, example)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _trace_error(exc, float_model, model.path) from exc
        ctx.check_cancelled()
        return traced, prepared, effective, example

    def _convert_fx(self, model, tree, config, backend, traced, prepared, effective, example, ctx, notes) -> QuantizedModel:
        """convert_fx, FP16 layers in half precision, and what each layer became."""
        from torch.ao.quantization.quantize_fx import convert_fx

        ctx.partial({"type": "stage", "name": "convert"})
        ctx.report(0.92, "converting to INT8")
        with cancel_inside_calls():
            converted = convert_fx(prepared)
        converted.eval()
        if backend == "qnnpack":
            guarded = guard_qnnpack_clamps(converted)
            if guarded:
                notes.append(QNNPACK_CLAMP_NOTE.format(n=guarded))
        scopes = _fp16_scopes(tree, effective)
        half_nodes: set[str] = set()
        if scopes:
            ctx.report(0.94, "putting the FP16 layers in half precision")
            with quantized_engine(backend):
                converted, half_nodes = run_fp16_in_graph(converted, scopes, example)
        ctx.check_cancelled()
        groups = fusion_groups(traced, converted)
        for g in groups:
            ctx.report(0.95, f"fused {' + '.join(g)}")
        with quantized_engine(backend):
            kinds, _, _ = _node_kinds(converted, example)
        built = built_precisions(converted, tree, effective, groups, kinds, half_nodes)
        for name, p in built.items():
            if effective.get(name) is Precision.FP16 and p is not Precision.FP16:
                notes.append(f"{name}: fp16 → {p.value} (it does not run in half precision in PyTorch here)")
        if any(p is Precision.FP16 for p in built.values()):
            notes.append(FP16_NOTE)
        for name, t in ((n.name, n.type) for n in tree.leaves()):
            if t in ("LSTM", "GRU", "MultiheadAttention") and effective.get(name) is Precision.INT8:
                notes.append(f"{name}: static INT8 has no {t} kernel; it stays FP32 (use dynamic INT8)")
        ctx.report(1.0, "converted")
        return QuantizedModel(
            engine=self.name,
            config=config,
            runner=TorchRunner(converted, backend),
            layer_precisions={k: v.value for k, v in built.items()},
            fused=groups,
            notes=notes,
            artifact=converted,
            input_shape=tuple(model.input_shape),
        )

    # ------------------------------------------------------------------ dynamic
    def _dynamic(self, model, tree, requested, config, backend, ctx, notes) -> QuantizedModel:
        import torch
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

        ctx.partial({"type": "stage", "name": "convert"})
        ctx.report(0.1, "quantizing weights (dynamic INT8)")
        spec = {}
        for leaf in tree.leaves():
            if leaf.type in DYNAMIC_TYPES and requested.get(leaf.name) is Precision.INT8:
                per_channel_ok = config.per_channel and leaf.type == "Linear"
                spec[leaf.name] = per_channel_dynamic_qconfig if per_channel_ok else default_dynamic_qconfig
        if not spec:
            notes.append("dynamic INT8 quantizes only Linear/LSTM/GRU layers and the plan leaves none of them INT8; use static INT8 for conv layers")
        module = copy.deepcopy(model.module).eval()
        ctx.check_cancelled()
        quantized = quantize_dynamic(module, qconfig_spec=spec, dtype=torch.qint8, inplace=False) if spec else module
        effective = dict(requested)
        example = model.example_input() if model.input_shape else None
        hooked = _eager_half(quantized, tree, effective, example)
        built = _eager_built(quantized, tree, effective, hooked, set(spec))
        others = sum(1 for leaf in tree.leaves() if requested.get(leaf.name) is Precision.INT8 and leaf.name not in spec and leaf.params > 0)
        if spec and others:
            notes.append(f"{others} INT8 layers are not Linear/LSTM/GRU and stay FP32 in dynamic mode")
        ctx.report(1.0, f"dynamic INT8: {len(spec)} layers")
        return QuantizedModel(
            engine=self.name,
            config=config,
            runner=TorchRunner(quantized, backend),
            layer_precisions={k: v.value for k, v in built.items()},
            notes=notes,
            artifact=quantized,
            input_shape=tuple(model.input_shape) if model.input_shape else None,
        )

    # ------------------------------------------------------------------ fp16
    def _fp16_only(self, model, tree, requested, config, ctx, notes) -> QuantizedModel:
        ctx.partial({"type": "stage", "name": "convert"})
        ctx.report(0.1, "converting layers to FP16")
        # In fp16 mode every layer the plan leaves INT8 runs FP16.
        effective = {k: (Precision.FP16 if v is Precision.INT8 else v) for k, v in requested.items()}
        module = copy.deepcopy(model.module).eval()
        example = model.example_input() if model.input_shape else None
        hooked = _eager_half(module, tree, effective, example)
        built = _eager_built(module, tree, effective, hooked, set())
        ctx.check_cancelled()
        notes.append(FP16_NOTE)
        ctx.report(1.0, "converted to FP16")
        return QuantizedModel(
            engine=self.name,
            config=config,
            runner=TorchRunner(module),
            layer_precisions={k: v.value for k, v in built.items()},
            notes=notes,
            artifact=module,
            input_shape=tuple(model.input_shape) if model.input_shape else None,
        )

    # ------------------------------------------------------------------ measuring
    def reference_runner(self, model: Any, qm: QuantizedModel) -> Callable[[np.ndarray], np.ndarray] | None:
        return None  # the original is a PyTorch model already

    def layer_error(self, model: Any, qm: QuantizedModel, batches: list[np.ndarray],
                    ctx: JobContext | None = None) -> dict[str, float]:
        return torch_layer_sqnr(model.module, qm, batches, ctx)

    def sizes(self, model: Any, qm: QuantizedModel) -> dict[str, int | None]:
        return {"original_bytes": _state_dict_bytes(model.module), "quantized_bytes": _state_dict_bytes(qm.artifact)}

    def memory_files(self, model: Any, qm: QuantizedModel, folder: Path,
                     ctx: JobContext) -> tuple[dict[str, Path], dict[str, str]]:
        # Both as TorchScript traces, so the bars compare models, not the Python around them.
        example = np.zeros(tuple(model.input_shape), dtype=np.float32)
        backend = getattr(qm.runner, "backend", None)  # the quantized engine it was converted for
        files: dict[str, Path] = {}
        failed: dict[str, str] = {}
        for name, module, engine in (("original", model.module, None), ("quantized", qm.artifact, backend)):
            ctx.check_cancelled()
            files[name] = Path(folder) / f"{name}.pth"
            try:
                write_torchscript(module, example, files[name], backend=engine)
            except InputError as exc:
                files.pop(name)  # a model TorchScript cannot trace: no bar, not a failed run
                failed[name] = exc.message
        return files, failed

    # ------------------------------------------------------------------ files
    def write(self, qm: QuantizedModel, path: Path, example: np.ndarray) -> None:
        write_torchscript(qm.artifact, example, path, backend=getattr(qm.runner, "backend", None))

    def reload(self, qm: QuantizedModel, path: Path, samples: np.ndarray) -> tuple[np.ndarray, str]:
        with quantized_engine(getattr(qm.runner, "backend", None)):  # as the in-app runner ran it
            return reload_torchscript(path, samples), "torch.jit.load"


def _state_dict_bytes(module: Any) -> int:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.tell()


def torch_layer_sqnr(original, result: QuantizedModel, batches: list, ctx: JobContext | None = None) -> dict[str, float]:
    """Per-layer SQNR (dB) of a PyTorch result: each Conv/Linear output, quantized vs FP32.

    Forward hooks by qualified name in the original and the quantized model (FX keeps
    the names of fused and quantized modules). A fused module (conv1 = conv1+bn1+relu)
    is compared with the output of the last original layer of its group. Errors
    accumulate along the network: a layer's figure includes what reached its input.
    """
    import torch

    quantized = result.artifact
    if quantized is None or not batches:
        return {}
    last_of = {g[0]: g[-1] for g in result.fused}
    orig_mods = dict(original.named_modules())
    q_mods = dict(quantized.named_modules())
    weighted = ("Conv1d", "Conv2d", "Conv3d", "Linear", "ConvTranspose2d", "LSTM", "GRU")
    layers = {}
    for name, m in orig_mods.items():
        if name and type(m).__name__ in weighted and name in q_mods:
            ref_name = last_of.get(name, name)
            if ref_name in orig_mods:
                layers[name] = ref_name
    if not layers:
        return {}
    captured_ref: dict[str, Any] = {}
    captured_q: dict[str, Any] = {}

    def grab(store, key):
        def hook(mod, args, out):
            if ctx is not None:
                # A cancel point per layer, not per batch: one batch through both models
                # took 1-2 s on a loaded machine (a cancel waited that long).
                ctx.check_cancelled()
            if key in store:
                return None  # a module called twice: keep its first call
            t = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(t, torch.Tensor):
                store[key] = (t.dequantize() if t.is_quantized else t).detach().double()
            return None

        return hook

    errors = {n: ErrorAccumulator() for n in layers}
    handles = []
    try:
        for name, ref_name in layers.items():
            handles.append(orig_mods[ref_name].register_forward_hook(grab(captured_ref, name)))
            handles.append(q_mods[name].register_forward_hook(grab(captured_q, name)))
        for batch in batches:
            if ctx is not None:
                ctx.check_cancelled()
            x = torch.from_numpy(_as_array(batch))
            captured_ref.clear()
            captured_q.clear()
            with quiet(), torch.inference_mode():
                original(x)
                with quantized_engine(getattr(result.runner, "backend", None)):
                    quantized(x)
            for name in layers:
                a, b = captured_ref.get(name), captured_q.get(name)
                if a is not None and b is not None and a.shape == b.shape:
                    errors[name].add(a, b)
    finally:
        for h in handles:
            h.remove()
    out: dict[str, float] = {}
    for name in layers:
        if errors[name].signal > 0:  # a zero output: no ratio to speak of
            out[name] = errors[name].sqnr_db()
    return out
