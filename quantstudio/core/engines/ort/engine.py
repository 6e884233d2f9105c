"""The ONNX Runtime engine: QDQ INT8, dynamic INT8, FP16 and mixed plans for any model.

PyTorch models are first exported to ONNX (TorchScript-based exporter, opset 17, with
``TrainingMode.PRESERVE`` so BatchNormalization nodes keep their names and every ONNX
node maps back to a layer of the tree). The model then goes through ONNX Runtime's
pre-processing (symbolic shape inference + basic graph optimisation), static QDQ
quantization with the data types that are fast on this CPU, and FP16 conversion of the
layers the plan puts in FP16. Everything intermediate lives in a temporary folder that
is removed whatever happens, cancellation included. Within one auto-precision search the
export, pre-processing and calibration ranges are made once and reused by every candidate
(:mod:`~quantstudio.core.engines.ort.reuse`, whose folder goes when the search ends).

Types (DESIGN "Facts measured here"): on x86, ``quantize_static``'s default int8
activations ("S8S8") run no faster than FP32; uint8 activations with int8 per-channel
weights ("U8S8") run 2.5-6x faster, so x86 gets U8S8. ARM gets S8S8 (what ORT
recommends there).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from quantstudio.core.engines.base import QuantConfig, QuantizedModel
from quantstudio.core.engines.ort.export import OPSET, torch_to_onnx
from quantstudio.core.engines.ort.fp16 import FP16_SUFFIX, convert_nodes_to_fp16
from quantstudio.core.engines.ort.mapping import (
    built_layer_precisions,
    onnx_node_origins,
    plan_coverage_notes,
    plan_node_precisions,
)
from quantstudio.core.engines.ort.reuse import OrtReuse, PreparedSource
from quantstudio.core.engines.ort.runtime import OrtRunner, cpu_has_vnni, cpu_target, make_session, quiet
from quantstudio.core.engines.ort.tools import (
    DYNAMIC_OPS,
    PERCENTILE,
    ProgressReader,
    ToolFailed,
    _crash_hint,
    _equal_batches,
    check_in_child,
    run_ort_tool,
    sample_input,
)
from quantstudio.core.errors import InputError
from quantstudio.core.jobs import JobContext
from quantstudio.core.metrics import ErrorAccumulator
from quantstudio.core.plan import Precision, PrecisionPlan

def _gemm_to_matmul(model, keep: frozenset[str] | set[str] = frozenset()) -> Any:
    """Gemm (Linear layers) → MatMul + Add, so dynamic INT8 (MatMulInteger) covers them.

    Nodes in ``keep`` (the plan's float layers) stay Gemm."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    nodes = []
    for node in m.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type == "Gemm"
            and node.name not in keep
            and attrs.get("transA", 0) == 0
            and attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
            and node.input[1] in inits
        ):
            w = numpy_helper.to_array(inits[node.input[1]])
            if attrs.get("transB", 0):
                w = w.T
            wname = f"{node.input[1]}__matmul"
            m.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), wname))
            if len(node.input) > 2 and node.input[2]:
                mid = f"{node.output[0]}__matmul"
                nodes.append(helper.make_node("MatMul", [node.input[0], wname], [mid], name=node.name))
                nodes.append(helper.make_node("Add", [mid, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
            else:
                nodes.append(helper.make_node("MatMul", [node.input[0], wname], [node.output[0]], name=node.name))
        else:
            nodes.append(node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    used = {i for n in m.graph.node for i in n.input}
    kept = [i for i in m.graph.initializer if i.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    return m


def _prepare_source(model: Any, ctx: JobContext) -> PreparedSource:
    """The FP32 ONNX form of ``model``, its layer trees and node origins (no plan yet)."""
    from quantstudio.core.inventory import build_inventory, onnx_inventory

    notes: list[str] = []
    if model.kind != "onnx":
        ctx.report(0.0, "exporting to ONNX")
        fp32 = torch_to_onnx(model)
        torch_tree = build_inventory(model)
        notes.append(f"exported to ONNX (opset {OPSET}) from the {model.kind_label}")
    else:
        fp32 = model.onnx_model
        torch_tree = None
    ctx.check_cancelled()
    onnx_tree = onnx_inventory(fp32, model.input_shape)
    origins = onnx_node_origins(onnx_tree, torch_tree, fp32)
    inits = {i.name for i in fp32.graph.initializer}
    input_name = next(i.name for i in fp32.graph.input if i.name not in inits)
    return PreparedSource(fp32, torch_tree, onnx_tree, origins, input_name, notes)


# --------------------------------------------------------------------------- engine


class OrtEngine:
    """Static (QDQ) / dynamic INT8, FP16 and mixed plans with ONNX Runtime."""

    name = "onnxruntime"
    label = "ONNX Runtime"
    short_label = "ORT"
    formats = {".onnx": "onnx"}

    def unsupported_reason(self, model: Any) -> str | None:
        return None  # every model QuantStudio loads is (or exports to) ONNX

    def search_reuse(self) -> OrtReuse:
        """What the auto-precision search passes to every candidate's :meth:`quantize`
        (``reuse=``) and closes at its end: the export, pre-processing and calibration
        ranges are made once per search, not once per candidate."""
        return OrtReuse()

    def quantize_aware(self, model: Any, plan: PrecisionPlan, config: QuantConfig, calib_batches: Iterable[Any],
                       training: Any, ctx: JobContext) -> tuple[QuantizedModel, dict[str, Any]]:
        """QAT for ONNX Runtime: trained by the PyTorch engine, exported as QDQ ONNX with the
        fine-tuned weights and learned ranges. Needs the PyTorch source (core/qat.py says why not)."""
        from quantstudio.core.engines.pytorch.engine import TorchEngine
        from quantstudio.core.engines.pytorch.qat import train_qat
        from quantstudio.core.qat import qat_unsupported_reason

        reason = qat_unsupported_reason(model)
        if reason is not None:
            raise InputError(reason, path=model.path, hint="Open the PyTorch model (.pth) to fine-tune it.")
        out = train_qat(TorchEngine(), model, plan, config, calib_batches, training, ctx, target=self.name)
        out.quantized.engine = self.name
        return out.quantized, out.training

    def quantize(
        self,
        model: Any,
        plan: PrecisionPlan,
        config: QuantConfig,
        calib_batches: Iterable[Any],
        ctx: JobContext,
        reuse: OrtReuse | None = None,
    ) -> QuantizedModel:
        """``reuse``: work kept between the candidates of one auto-precision search (see
        :mod:`~quantstudio.core.engines.ort.reuse`); the result is the same without it."""
        import onnx

        ctx.partial({"type": "stage", "name": "prepare"})
        ctx.check_cancelled()
        if reuse is not None and not reuse.serves(model, calib_batches):
            reuse = None  # bound to another source: build from scratch
        prepared = reuse.prepared if reuse is not None else None
        if prepared is None:
            prepared = _prepare_source(model, ctx)
            if reuse is not None:
                reuse.prepared = prepared
        elif reuse is not None:
            reuse.hits["prepare"] += 1
        fp32, torch_tree, onnx_tree, origins = prepared.fp32, prepared.torch_tree, prepared.onnx_tree, prepared.origins
        notes: list[str] = list(prepared.notes)
        node_plan = plan_node_precisions(plan, onnx_tree, torch_tree, fp32, origins=origins)
        notes.extend(plan_coverage_notes(plan, origins, torch_tree))
        if config.mode == "fp16":
            # fp16 mode: everything the plan leaves INT8 runs FP16.
            node_plan = {k: (Precision.FP16 if p is Precision.INT8 else p, n) for k, (p, n) in node_plan.items()}
        int8_nodes = {k for k, (p, _) in node_plan.items() if p is Precision.INT8}
        fp16_nodes = {k for k, (p, _) in node_plan.items() if p is Precision.FP16}
        excluded = sorted(k for k, (p, _) in node_plan.items() if p is not Precision.INT8)
        input_name = prepared.input_name

        target = cpu_target(config.backend)
        worker = reuse.worker() if reuse is not None else None
        workdir = reuse.workdir() if reuse is not None else None
        with tempfile.TemporaryDirectory(prefix="quantstudio-ort-", dir=workdir) as tmp, quiet():
            tmpdir = Path(tmp)
            if prepared.pre_path is not None:  # an earlier candidate of this search made it
                pre = prepared.pre_path
                notes.extend(prepared.pre_notes)
                if reuse is not None:
                    reuse.hits["pre_process"] += 1
            else:
                src = tmpdir / "fp32.onnx"
                onnx.save(fp32, str(src))
                pre = tmpdir / "pre.onnx"
                ctx.report(0.03, "ONNX Runtime pre-processing (shape inference, optimisation)")
                pre_notes: list[str] = []
                try:
                    run_ort_tool({"tool": "pre_process", "src": str(src), "dst": str(pre)}, ctx, worker=worker)
                except ToolFailed as exc:  # some graphs defeat symbolic shape inference
                    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.kind
                    pre_notes.append(f"ONNX Runtime pre-processing skipped ({first})")
                    pre = src
                notes.extend(pre_notes)
                ctx.check_cancelled()
                if reuse is not None:
                    reuse.keep_pre(pre, pre_notes)
            ctx.check_cancelled()
            out = tmpdir / "quantized.onnx"
            if config.mode == "static" and int8_nodes:
                self._static(pre, out, config, target, excluded, calib_batches, input_name, ctx, notes, reuse)
            elif config.mode == "dynamic" and int8_nodes:
                self._dynamic(pre, out, config, target, excluded, ctx, notes)
            else:
                out = pre
                if config.mode != "fp16":
                    notes.append("the plan leaves no layer INT8")
            ctx.check_cancelled()
            ctx.partial({"type": "stage", "name": "convert"})
            quantized = onnx.load(str(out))
            reference = onnx.load(str(pre))
            if fp16_nodes:
                ctx.report(0.93, f"converting {len(fp16_nodes)} nodes to FP16")
                quantized, skipped = convert_nodes_to_fp16(quantized, fp16_nodes)
                for reason in dict.fromkeys(skipped.values()):
                    names = [n for n, r in skipped.items() if r == reason]
                    notes.append(f"{len(names)} {'nodes stay' if len(names) != 1 else 'node stays'} FP32: {reason} "
                                 f"({', '.join(names[:3])}{'…' if len(names) > 3 else ''})")
            ctx.check_cancelled()
            # A graph ONNX Runtime crashes on (a segfault in its optimizer or a kernel)
            # would take the whole app down: create the session in a child first.
            ctx.report(0.95, "checking the model in a separate process")
            check_in_child(quantized, tmpdir, ctx, sample_input(quantized, model.input_shape),
                           hint=_crash_hint(config.mode, fp16_nodes), path=model.path, worker=worker)
        ctx.report(0.97, "creating the ONNX Runtime session")
        try:
            session = make_session(quantized)
        except Exception as exc:  # noqa: BLE001
            raise InputError(
                "ONNX Runtime cannot run the quantized model",
                path=model.path,
                hint="Keep the layers named in the details in FP32, or try another mode.",
                details=str(exc)[-4000:],
            ) from exc
        built = built_layer_precisions(quantized, node_plan)
        present = {n.name: n.op_type for n in quantized.graph.node}
        ctx.report(1.0, "quantized")
        result = QuantizedModel(
            engine=self.name,
            config=config,
            runner=OrtRunner(session),
            layer_precisions=built,
            fused=_ort_fusions(onnx_tree, present, reference),
            notes=notes,
            artifact=quantized,
            input_shape=tuple(model.input_shape) if model.input_shape else None,
            extras={"reference": reference, "node_layers": {k: n for k, (_, n) in node_plan.items()}},
        )
        return result

    # ------------------------------------------------------------------ static
    def _static(self, pre, out, config, target, excluded, calib_batches, input_name, ctx, notes,
                reuse: OrtReuse | None = None) -> None:
        ctx.partial({"type": "stage", "name": "calibrate"})
        if target == "x86":
            act, act_name = "QUInt8", "uint8"
            why = "x86: uint8 activations + int8 weights (U8S8) are ONNX Runtime's fast integer path on x86; int8 activations (S8S8) run no faster than FP32 on x86"
        else:
            act, act_name = "QInt8", "int8"
            why = "ARM: int8 activations + int8 weights (S8S8), what ONNX Runtime recommends there"
        reduce_range = target == "x86" and not cpu_has_vnni()
        if reduce_range:
            why += "; 7-bit weights (reduce_range) because this CPU has no VNNI and 8-bit U8S8 could saturate"
        method = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}[config.calibration]
        extra: dict[str, Any] = {"ActivationSymmetric": bool(config.symmetric_activations), "WeightSymmetric": True}
        if config.calibration == "percentile":
            extra["CalibPercentile"] = PERCENTILE
        notes.append(
            f"QDQ INT8, activations {act_name}, weights int8 "
            f"{'per-channel' if config.per_channel else 'per-tensor'}, {config.calibration} calibration ({why})"
        )
        settings = {"input_name": input_name, "per_channel": bool(config.per_channel), "reduce_range": reduce_range,
                    "activation_type": act, "method": method, "extra": extra}
        key = OrtReuse.ranges_key(settings) if reuse is not None else ""
        cached = reuse.ranges_for(key) if reuse is not None else None
        ranges = Path(out).with_name("ranges.json")
        job: dict[str, Any] = {"tool": "static", "src": str(pre), "dst": str(out), "exclude": list(excluded), **settings}
        if cached is not None:
            # An earlier candidate of this search calibrated with these settings: ONNX
            # Runtime's calibration cache skips calibrating (the data is not read again).
            assert reuse is not None
            reuse.hits["ranges"] += 1
            shutil.copyfile(cached, ranges)
            job["ranges"] = str(ranges)
            message, until = "quantizing with the calibration ranges already measured", None
        else:
            # The batches are read here (progress, cancel) into one file the tool reads back.
            reader = ProgressReader(calib_batches, input_name, ctx, 0.05, 0.3, label="reading calibration data")
            calibration = Path(out).with_name("calibration.npy")
            sizes: list[int] = []
            with open(calibration, "wb") as f:
                for item in reader:
                    np.save(f, item[input_name], allow_pickle=False)
                    sizes.append(len(item[input_name]))
            if reader.count == 0:
                raise InputError("there is no calibration data", hint="Choose data with at least one sample.")
            batches = _equal_batches(calibration, sizes)
            job.update({"calibration": str(calibration), "batches": batches})
            if reuse is not None:  # the tool writes the ranges it measures there, for later candidates
                job["ranges"] = str(ranges)
            message, until = f"calibrating on {batches} batch{'es' if batches != 1 else ''}", 0.85
        try:
            run_ort_tool(job, ctx, message, 0.3, until=until, worker=reuse.worker() if reuse is not None else None)
            if reuse is not None and cached is None:
                reuse.keep_ranges(key, ranges)
        except ToolFailed as exc:
            raise InputError(
                f"ONNX Runtime could not quantize this model: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.kind}",
                hint="Keep the failing layers in FP32 or use dynamic INT8.",
                details=(str(exc) + "\n\n" + exc.details)[-4000:],
            ) from exc

    # ------------------------------------------------------------------ dynamic
    def _dynamic(self, pre, out, config, target, excluded, ctx, notes) -> None:
        import onnx

        ctx.report(0.3, "quantizing weights (dynamic INT8)")
        prepared = _gemm_to_matmul(onnx.load(str(pre)), set(excluded))
        mm = Path(out).with_name("matmul.onnx")
        onnx.save(prepared, str(mm))
        ops = [n.op_type for n in prepared.graph.node if n.name not in set(excluded)]
        if not any(op in DYNAMIC_OPS for op in ops):
            notes.append("dynamic INT8 quantizes MatMul/Gemm/LSTM/Attention only and the plan leaves none INT8; use static INT8 for conv layers")
        job = {
            "tool": "dynamic", "src": str(mm), "dst": str(out), "per_channel": bool(config.per_channel),
            # ORT's dynamic quantizer turns a Gemm it meets into "<name>_MatMul" +
            # "<name>_Add" before it checks exclusions: exclude those names too.
            "exclude": list(excluded) + [f"{n}_MatMul" for n in excluded],
        }
        try:
            run_ort_tool(job, ctx)
        except ToolFailed as exc:
            raise InputError(
                f"ONNX Runtime could not quantize this model dynamically: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.kind}",
                hint="Use static INT8 or keep the failing layers in FP32.",
                details=(str(exc) + "\n\n" + exc.details)[-4000:],
            ) from exc
        notes.append("dynamic INT8: MatMul/Gemm/LSTM weights int8, activations quantized at run time; Conv layers stay FP32 (ConvInteger is slower than FP32 on CPUs)")

    # ------------------------------------------------------------------ measuring
    def reference_runner(self, model: Any, qm: QuantizedModel) -> Callable[[np.ndarray], np.ndarray] | None:
        reference = qm.extras.get("reference")
        if reference is None or model.framework == "onnx":
            return None  # an ONNX source already runs in ONNX Runtime
        # Same runtime, FP32: the fair baseline for the INT8 speed-up.
        return OrtRunner(make_session(reference))

    def layer_error(self, model: Any, qm: QuantizedModel, batches: list[np.ndarray],
                    ctx: JobContext | None = None) -> dict[str, float]:
        return ort_layer_sqnr(qm, batches, ctx)

    def sizes(self, model: Any, qm: QuantizedModel) -> dict[str, int | None]:
        reference = qm.extras.get("reference")
        return {"original_bytes": len(reference.SerializeToString()) if reference is not None else None,
                "quantized_bytes": len(qm.artifact.SerializeToString())}

    def memory_files(self, model: Any, qm: QuantizedModel, folder: Path,
                     ctx: JobContext) -> tuple[dict[str, Path], dict[str, str]]:
        # Both as ONNX: the bars then compare models, not runtimes.
        files: dict[str, Path] = {}
        reference = qm.extras.get("reference")
        if reference is not None:
            files["original"] = Path(folder) / "original.onnx"
            files["original"].write_bytes(reference.SerializeToString())
        elif model.framework == "onnx":
            files["original"] = Path(model.path)
        files["quantized"] = Path(folder) / "quantized.onnx"
        files["quantized"].write_bytes(qm.artifact.SerializeToString())
        return files, {}

    # ------------------------------------------------------------------ files
    def write(self, qm: QuantizedModel, path: Path, example: np.ndarray) -> None:
        with open(path, "wb") as f:
            f.write(qm.artifact.SerializeToString())

    def reload(self, qm: QuantizedModel, path: Path, samples: np.ndarray) -> tuple[np.ndarray, str]:
        import onnx

        try:
            onnx.checker.check_model(str(path))
            sess = make_session(str(path))
        except Exception as exc:  # noqa: BLE001
            raise InputError(
                "the exported ONNX file is not valid",
                path=path,
                hint="Nothing was written. Try keeping more layers in FP32.",
                details=str(exc)[-4000:],
            ) from exc
        name = sess.get_inputs()[0].name
        return sess.run(None, {name: samples})[0], "onnx.checker + a fresh onnxruntime.InferenceSession"


def _ort_fusions(onnx_tree, present: dict[str, str], pre_model) -> list[list[str]]:
    """Layers ORT's pre-processing folded away (BatchNormalization into the Conv before it)."""
    pre_nodes = {n.name for n in pre_model.graph.node}
    groups: list[list[str]] = []

    def visit(node) -> None:
        kids = [c for c in node.children if not c.children]
        for a, b in zip(kids, kids[1:]):
            if b.type == "BatchNormalization" and a.type in ("Conv", "ConvTranspose", "Gemm"):
                if all(n not in pre_nodes for n in b.onnx_nodes) and any(n in pre_nodes for n in a.onnx_nodes):
                    groups.append([a.name, b.name])
        for c in node.children:
            if c.children:
                visit(c)

    visit(onnx_tree)
    return groups


def ort_layer_sqnr(result: QuantizedModel, batches: list[np.ndarray], ctx: JobContext | None = None) -> dict[str, float]:
    """Per-layer SQNR (dB) of an ORT result: each Conv/Gemm/MatMul output, quantized vs FP32.

    Both models get the node outputs as extra graph outputs (on copies); the quantized
    node keeps its name and output tensor in the QDQ graph, so the two line up.
    """
    import onnx

    ref = result.extras.get("reference")
    layers = result.extras.get("node_layers", {})
    if ref is None or not batches:
        return {}
    quant = result.artifact
    compute = ("Conv", "Gemm", "MatMul", "ConvTranspose")
    q_out = {n.name: n.output[0] for n in quant.graph.node if n.output and n.op_type in compute}
    q_tensors = {o for n in quant.graph.node for o in n.output}
    # (node, FP32 tensor, quantized tensor): the output of the same-named node in each
    # graph. Names may differ (the QDQ quantizer drops a Relu after a Conv and renames
    # the Conv's output; FP16 nodes write a "__fp16" twin); values are the same thing.
    # Dynamic INT8 replaces the node (MatMulInteger and rescaling) but writes the same
    # output tensor.
    pairs = []
    for node in ref.graph.node:
        if node.op_type not in compute or not node.output:
            continue
        tensor = node.output[0]
        if node.name in q_out:
            pairs.append((node.name, tensor, q_out[node.name]))
        elif tensor in q_tensors:
            pairs.append((node.name, tensor, tensor))
        elif tensor + FP16_SUFFIX in q_tensors:
            pairs.append((node.name, tensor, tensor + FP16_SUFFIX))
    if not pairs:
        return {}

    def with_outputs(model, names):
        from onnx import helper

        m = onnx.ModelProto()
        m.CopyFrom(model)
        existing = {o.name for o in m.graph.output}
        for name in names:
            if name not in existing:
                m.graph.output.append(helper.make_empty_tensor_value_info(name))
        return m

    try:
        s_ref = make_session(with_outputs(ref, [p[1] for p in pairs]))
        s_q = make_session(with_outputs(quant, [p[2] for p in pairs]))
    except Exception:  # noqa: BLE001 - an odd graph: no per-layer view, not a failure
        return {}
    ref_names = [o.name for o in s_ref.get_outputs()]
    q_names = [o.name for o in s_q.get_outputs()]
    errors = {p[0]: ErrorAccumulator() for p in pairs}
    for x in batches:
        if ctx is not None:
            ctx.check_cancelled()
        x = np.ascontiguousarray(getattr(x, "x", x), dtype=np.float32)
        r = dict(zip(ref_names, s_ref.run(None, {s_ref.get_inputs()[0].name: x})))
        q = dict(zip(q_names, s_q.run(None, {s_q.get_inputs()[0].name: x})))
        for node, tensor, q_tensor in pairs:
            if tensor in r and q_tensor in q and r[tensor].shape == q[q_tensor].shape:
                errors[node].add(r[tensor], q[q_tensor])
    out: dict[str, float] = {}
    # Pairs are in graph order: a layer of several products (MultiheadAttention: its
    # in-projection, then the two attention MatMuls) reports its last, its output.
    for node, _, _ in pairs:
        if errors[node].signal == 0:
            continue  # a zero output: no ratio to speak of
        out[layers.get(node, node)] = errors[node].sqnr_db()
    return out
