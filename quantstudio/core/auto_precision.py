"""Automatic mixed precision to an accuracy budget (issue 13).

The search tries calibration methods first, then layers back to FP32 in sensitivity
order (bisection), judging every candidate on a held-out split that calibration never
saw and timing it, and keeps the fastest plan that meets the budget. It runs inside
:func:`quantstudio.core.pipeline.run_quantize` (``budget=``), sends one
:class:`~quantstudio.core.results.CandidateTried` per candidate through ``ctx.partial``
and records the search in ``RunSummary.auto_precision``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from quantstudio.core.errors import InputError


@dataclass(frozen=True)
class Budget:
    """What the user accepts: at most ``max_drop`` points of top-1 below the original
    (labeled data) or at least ``min_agreement`` % of predictions equal to the original's
    (unlabeled data, or when the user prefers it). Exactly one is set."""

    max_drop: float | None = None
    min_agreement: float | None = None

    def __post_init__(self) -> None:
        if (self.max_drop is None) == (self.min_agreement is None):
            raise InputError("an accuracy budget needs exactly one of a maximum drop or a minimum agreement",
                             hint="Give --max-drop POINTS (labeled data) or --min-agreement PCT.")
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            raise InputError(f"the maximum accuracy drop must be between 0 and 100 points, not {self.max_drop}",
                             hint="For example --max-drop 1 accepts one point of top-1 below the original.")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 100:
            raise InputError(f"the minimum agreement must be between 0 and 100 %, not {self.min_agreement}",
                             hint="For example --min-agreement 99 keeps 99 % of predictions equal to the original's.")

    @property
    def metric(self) -> str:
        return "top1" if self.max_drop is not None else "agreement"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- the search

CALIBRATIONS = ("minmax", "percentile", "entropy")
JUDGE_SAMPLES = 256  # held-out samples each candidate is judged on (1 image = 0.4 pt; 512 doubled the search time)
MIN_JUDGE_SAMPLES = 64  # fewer left over than this: some are taken from the evaluation split
JUDGE_BYTES = 200 << 20  # decoded held-out samples kept in memory at most
LATENCY_RUNS = 8  # batch-1 runs per candidate (the minimum is kept: robust on a shared machine)
SENSITIVITY_SAMPLES = 16


def held_out_split(data: Any, calibration: np.ndarray, evaluation: np.ndarray, *, seed: int = 0,
                   n: int = JUDGE_SAMPLES, sample_bytes: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(held-out indices, evaluation indices, notes): samples neither calibration nor the final
    evaluation ever sees, to judge candidates on. Taken from what the split left over; when
    fewer than :data:`MIN_JUDGE_SAMPLES` are left, up to half the evaluation samples are moved
    over (and the notes say so), so the final figures stay independent of the choice."""
    if sample_bytes > 0:
        n = max(MIN_JUDGE_SAMPLES, min(n, JUDGE_BYTES // sample_bytes))
    used = np.union1d(np.asarray(calibration, np.int64), np.asarray(evaluation, np.int64))
    rest = np.setdiff1d(np.arange(len(data), dtype=np.int64), used, assume_unique=False)
    rng = np.random.default_rng(seed + 7919)
    notes: list[str] = []
    if len(rest) >= MIN_JUDGE_SAMPLES:
        judge = np.sort(rng.choice(rest, size=min(n, len(rest)), replace=False))
        return judge, np.asarray(evaluation, np.int64), notes
    evaluation = np.asarray(evaluation, np.int64)
    take = min(max(MIN_JUDGE_SAMPLES - len(rest), 0), len(evaluation) // 2)
    moved = np.sort(rng.choice(evaluation, size=take, replace=False)) if take else np.zeros(0, np.int64)
    judge = np.sort(np.concatenate([rest, moved]))
    if take:
        notes.append(f"auto precision judged candidates on {len(judge)} held-out samples, {take} of them taken from "
                     f"the evaluation split (too little data left over); the final accuracy is measured on the "
                     f"{len(evaluation) - take} others")
    return judge, np.setdiff1d(evaluation, moved), notes


@dataclass
class SearchOutcome:
    """What :func:`search` found: the quantized model and the settings that made it."""

    quantized: Any  # QuantizedModel
    plan: Any  # PrecisionPlan: the user's plan plus the FP32 layers chosen
    config: Any  # QuantConfig with the chosen calibration
    record: dict[str, Any]  # RunSummary.auto_precision
    fp32_reasons: dict[str, str] = field(default_factory=dict)  # FP32 layers the search added -> why
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def search(source: Any, reference: Any, plan: Any, config: Any, engine: Any, calib: Any,
           judge_x: np.ndarray, judge_y: np.ndarray | None, budget: Budget, ctx: Any, *,
           batch_size: int = 32, max_fp32: int | None = None,
           calibrations: Sequence[str] | None = None, latency_batch: int = 1) -> SearchOutcome:
    """Search calibration methods, then FP32 layers, for the fastest plan within ``budget``.

    ``source`` is what the engine quantizes (the equalized copy or the model), ``reference``
    the FP32 model the candidates are compared with; ``calib`` the calibration batches (an
    iterable that can be read more than once); ``judge_x``/``judge_y`` the held-out samples
    (``judge_y`` None: unlabeled). Every candidate built sends a
    :class:`~quantstudio.core.results.CandidateTried`. A cancel stops the search and keeps
    the best candidate so far (``record["cancelled"]``); a cancel before any candidate was
    built is raised.
    """
    import time

    from quantstudio.core.errors import Cancelled
    from quantstudio.core.results import CandidateTried

    t0 = time.perf_counter()
    if budget.metric == "top1" and judge_y is None:
        raise InputError("a maximum top-1 drop needs labeled data (class folders)",
                         hint="Use --min-agreement PCT with unlabeled data.")
    orig_pred = _predict(reference.forward_numpy, judge_x, batch_size)
    original = (100.0 * float(np.mean(orig_pred == judge_y)) if judge_y is not None and budget.metric == "top1"
                else 100.0)
    candidates: list[dict[str, Any]] = []
    built: dict[int, tuple[Any, Any, Any]] = {}  # index -> (qm, plan, config)
    notes: list[str] = []
    cancelled = False
    done = [0.0]
    # Work the engine may keep between candidates (same source, same calibration data):
    # an optional engine hook, see quantstudio.core.engines.base.Engine. Removed when the
    # search ends, whatever happens.
    make_reuse = getattr(engine, "search_reuse", None)
    reuse = make_reuse() if callable(make_reuse) else None
    reuse_arg = {"reuse": reuse} if reuse is not None else {}

    def judge(pred: np.ndarray) -> tuple[float, float, bool]:
        if budget.metric == "top1":
            metric = 100.0 * float(np.mean(pred == judge_y))
            drop = original - metric
            return metric, drop, drop <= float(budget.max_drop) + 1e-9  # type: ignore[arg-type]
        metric = 100.0 * float(np.mean(pred == orig_pred))
        return metric, 100.0 - metric, metric >= float(budget.min_agreement) - 1e-9  # type: ignore[arg-type]

    def attempt(calibration: str, layers: list[str], label: str) -> dict[str, Any]:
        ctx.check_cancelled()
        for c in candidates:  # overlapping fix groups can give the same plan for two k: build it once
            if c["calibration"] == calibration and sorted(c["fp32_layers"]) == sorted(layers):
                return c
        cand_plan = plan.copy()
        for name in layers:
            cand_plan.set(name, "fp32")
        cand_config = dataclasses.replace(config, calibration=calibration)
        index = len(candidates) + 1
        ctx.report(min(done[0], 0.95), f"auto precision: candidate {index} ({label})")
        qm = engine.quantize(source, cand_plan, cand_config, calib, _Quiet(ctx), **reuse_arg)
        metric, drop, meets = judge(_predict(qm.forward_numpy, judge_x, batch_size))
        latency = _latency_ms(qm.forward_numpy, judge_x[:latency_batch])
        c = {"index": index, "label": label, "calibration": calibration, "fp32_layers": list(layers),
             "metric": metric, "drop": drop, "latency_ms": latency, "meets_budget": meets, "on_front": False}
        candidates.append(c)
        built[index] = (qm, cand_plan, cand_config)
        # Keep only the models that can still be chosen (each one holds a runtime session).
        meeting = {c["index"] for c in candidates if c["meets_budget"]}
        keep = meeting or {max(candidates, key=lambda c: (c["metric"], -len(c["fp32_layers"])))["index"]}
        for i in [i for i in built if i not in keep]:
            del built[i]
        ctx.partial(CandidateTried(index, label, calibration, tuple(layers), metric, drop, latency, meets))
        done[0] += 0.1
        return c

    user_fp32 = set()
    try:
        # 1. Calibration methods: no speed cost, one quantize each. The user's method first.
        methods = [config.calibration] + [m for m in (calibrations or CALIBRATIONS) if m != config.calibration]
        for m in methods:
            if attempt(m, [], m)["meets_budget"]:
                break
        best_cal = max(candidates, key=lambda c: c["metric"])
        if not any(c["meets_budget"] for c in candidates):
            # 2. Layers back to FP32 in sensitivity order (each with the producers of its
            # input), by bisection over how many of the ranked entries go FP32.
            from quantstudio.core.sensitivity import can_measure, measure_with_fix, most_sensitive

            if not can_measure(source):
                notes.append("auto precision tried calibration methods only: choosing FP32 layers needs a PyTorch "
                             "model with its layers (per-layer sensitivity)")
            else:
                ctx.report(min(done[0], 0.95), "auto precision: ranking layers by sensitivity")
                sens_config = dataclasses.replace(config, calibration=best_cal["calibration"])
                values, fix, _ = measure_with_fix(source, [judge_x[:SENSITIVITY_SAMPLES]], sens_config, _Quiet(ctx))
                user_fp32 = {n for n in values if plan.precision_for(n).value != "int8"}
                groups = [[n for n in fix.get(name, [name]) if n not in user_fp32]
                          for name, _ in most_sensitive(values, len(values)) if name not in user_fp32]
                groups = [g for g in groups if g]

                def layers_for(k: int) -> list[str]:
                    out: list[str] = []
                    for g in groups[:k]:
                        out += [n for n in g if n not in out]
                    return out

                k_max = len(groups)
                if max_fp32 is not None:
                    k_max = max((k for k in range(len(groups) + 1) if len(layers_for(k)) <= max_fp32), default=0)
                cal = best_cal["calibration"]
                # Galloping then bisection: k = 1, 2, 4, … until one meets the budget, then
                # halve the gap to the last that did not. log2 candidates, not one per layer.
                lo, hi, k = 0, None, 1
                while k_max and k <= k_max:
                    if attempt(cal, layers_for(k), f"{cal} + {len(layers_for(k))} FP32")["meets_budget"]:
                        hi = k
                        break
                    lo = k
                    k = k_max if k * 2 > k_max and k < k_max else k * 2
                while hi is not None and hi - lo > 1:
                    mid = (lo + hi) // 2
                    if attempt(cal, layers_for(mid), f"{cal} + {len(layers_for(mid))} FP32")["meets_budget"]:
                        hi = mid
                    else:
                        lo = mid
    except Cancelled:
        if not candidates:
            raise
        cancelled = True
    finally:
        if reuse is not None:
            reuse.close()
    # The fastest candidate that meets the budget; else the most accurate (warned about).
    meeting = [c for c in candidates if c["meets_budget"]]
    warnings: list[str] = []
    if len(meeting) > 1:
        # Candidates were timed minutes apart on a machine whose speed drifts (a 6-FP32-layer
        # plan read 41 ms and an 8-layer one 11 ms under load): time the contenders again,
        # interleaved round-robin, and keep each one's minimum.
        retimed = _interleaved_latency_ms({c["index"]: built[c["index"]][0].forward_numpy for c in meeting},
                                          judge_x[:latency_batch])
        for c in meeting:
            c["latency_ms"] = retimed.get(c["index"], c["latency_ms"])
    if meeting:
        chosen = min(meeting, key=lambda c: (c["latency_ms"] if c["latency_ms"] is not None else float("inf"),
                                             len(c["fp32_layers"])))
    else:
        chosen = max(candidates, key=lambda c: (c["metric"], -len(c["fp32_layers"])))
        what = (f"{budget.max_drop:g} points of top-1" if budget.metric == "top1" else f"{budget.min_agreement:g} % agreement")
        warnings.append(f"auto precision: no candidate met the budget ({what}){' before the search was cancelled' if cancelled else ''}; "
                        f"kept the most accurate one ({chosen['label']}, {chosen['drop']:.2f} points below the original "
                        "on the held-out split). Equalization (on by default) or more FP32 layers may help")
    for c in candidates:  # Pareto front: no other candidate both faster and more accurate
        c["on_front"] = not any(
            o is not c and o["metric"] >= c["metric"] and (o["latency_ms"] or 0) <= (c["latency_ms"] or 0)
            and (o["metric"] > c["metric"] or (o["latency_ms"] or 0) < (c["latency_ms"] or 0)) for o in candidates)
    qm, chosen_plan, chosen_config = built[chosen["index"]]
    base = max((c for c in candidates if not c["fp32_layers"]), key=lambda c: c["metric"], default=None)
    gain = chosen["metric"] - base["metric"] if base is not None else 0.0
    reasons = {n: f"auto precision: +{gain:.1f} pt on the held-out split" for n in chosen["fp32_layers"]}
    record = {
        "budget": budget.to_dict(), "metric": budget.metric, "original_metric": original,
        "heldout_samples": int(len(judge_x)), "candidates": candidates, "chosen": chosen["index"],
        "cancelled": cancelled, "seconds": time.perf_counter() - t0,
    }
    return SearchOutcome(qm, chosen_plan, chosen_config, record, reasons, notes, warnings)


class _Quiet:
    """The run's context for one candidate: cancel and partial results pass, progress does not
    (each candidate's engine would move the bar from 0 to 1 again)."""

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx

    def report(self, fraction: float, message: str = "") -> None:
        pass

    def partial(self, payload: Any) -> None:
        if not isinstance(payload, dict):  # engine stage markers stay inside the candidate
            self._ctx.partial(payload)

    def check_cancelled(self) -> None:
        self._ctx.check_cancelled()


def _predict(forward: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    out = []
    for i in range(0, len(x), max(batch_size, 1)):
        y = np.asarray(forward(x[i:i + batch_size]))
        out.append(y.reshape(len(y), -1).argmax(axis=1))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _latency_ms(forward: Any, x1: np.ndarray, runs: int = LATENCY_RUNS) -> float | None:
    """Batch-1 latency, the minimum of a few runs after one warm-up (brief: ranks candidates,
    the run's own benchmark then measures the chosen one properly)."""
    import time

    if not len(x1):
        return None
    forward(x1)
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        forward(x1)
        best = min(best, time.perf_counter() - t)
    return 1000.0 * best


def _interleaved_latency_ms(forwards: dict[int, Any], x1: np.ndarray, rounds: int = 3 * LATENCY_RUNS) -> dict[int, float]:
    """Batch-1 latency of several models timed round-robin in one loop (min per model), so a
    slow spell of the machine hits them all alike."""
    import time

    if not len(x1):
        return {}
    for f in forwards.values():
        f(x1)
    best = {k: float("inf") for k in forwards}
    order = list(forwards)
    for r in range(rounds):
        for k in order[r % len(order):] + order[: r % len(order)]:
            t = time.perf_counter()
            forwards[k](x1)
            best[k] = min(best[k], time.perf_counter() - t)
    return {k: 1000.0 * v for k, v in best.items()}
