"""Prototype of the automatic mixed-precision search (issue 13), on the product's engines.

1. Calibration methods first (cheapest change, no speed cost): each candidate quantized with
   the product's engine and judged on a *held-out judge split* (training images not used
   for calibration, never the test images); the first within ``budget`` points of FP32 wins.
2. Otherwise layers back to FP32 in sensitivity order, by bisection: the order comes from
   the isolated per-layer error (``layer_isolation.isolated_errors``, one pass), each layer
   expanded to the group that must be float for its *input* to be float (the layer and its
   input producers, ``layer_isolation.input_producers``) when its input dominates its error.
   Bisection over k (the first k groups FP32) finds the smallest k that meets the budget,
   capped at ``max_fp32`` layers; candidates are quantized with the best method of step 1.
3. The plan found is then measured once on the test split (reported, not used to choose).

Wall time is compared with one plain quantize (the engine's default) on the same model.

    PYTHONPATH=$PWD nice -n 15 python -m tests.benchmarks.auto_precision_proto 'resnet18 3 blocks s300' onnxruntime
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from tests.benchmarks.outlier_models import WORK, _log, damaged_models, digits_split

METHODS = ("minmax", "percentile", "entropy")


def search(variant, engine: str, calib, judge_x, judge_y, test_x, test_y, *, budget: float = 1.0,
           max_fp32: int = 8) -> dict:
    import torch

    from quantstudio.core.engines import QuantConfig, get_engine
    from quantstudio.core.jobs import NullContext
    from quantstudio.core.plan import PrecisionPlan
    from tests.benchmarks.layer_isolation import input_producers, isolated_errors
    from tests.benchmarks.outlier_study import loaded, top1

    lm = loaded(variant.module, variant.size)
    with torch.no_grad():
        fp32_judge = top1(lambda a: variant.module(torch.from_numpy(a)).numpy(), judge_x, judge_y)
    eng = get_engine(engine)
    tried = []
    t_start = time.time()

    def attempt(method: str, layers: list[str]):
        plan = PrecisionPlan()
        for n in layers:
            plan.parse_assignment(f"{n}=fp32")
        qm = eng.quantize(lm, plan, QuantConfig(engine=engine, calibration=method), list(calib), NullContext())
        acc = top1(qm.forward_numpy, judge_x, judge_y)
        tried.append({"method": method, "fp32_layers": layers, "judge_top1": acc, "t": time.time() - t_start})
        _log(f"  {engine} {method} fp32={layers}: judge {acc:.2%} (FP32 {fp32_judge:.2%})")
        return qm, acc

    ok = lambda acc: 100 * (fp32_judge - acc) <= budget  # noqa: E731
    best = None
    for method in METHODS:
        qm, acc = attempt(method, [])
        if best is None or acc > best[2]:
            best = (method, qm, acc, [])
        if ok(acc):
            break
    if not ok(best[2]):
        method = best[0]
        t0 = time.time()
        iso = isolated_errors(variant.module, calib, [judge_x[i:i + 16] for i in range(0, 32, 16)],
                              reduce_range=engine == "torch")
        prods = input_producers(variant.module)
        order = sorted(iso, key=lambda n: iso[n]["both"])
        groups = [[n] + (prods.get(n, []) if iso[n]["input"] < iso[n]["weight"] else []) for n in order]
        _log(f"  isolated ranking in {time.time() - t0:.1f} s: {groups[:4]}")

        def layers_for(k):
            out = []
            for g in groups[:k]:
                out += [n for n in g if n not in out]
            return out

        # the largest k whose layer set stays within the cap
        k_max = max(k for k in range(len(groups) + 1) if len(layers_for(k)) <= max_fp32)
        lo, hi = 0, k_max  # invariant: k=lo fails; find the smallest passing k in (lo, hi]
        qm_hi, acc_hi = attempt(method, layers_for(hi))
        if ok(acc_hi):
            found = (hi, qm_hi, acc_hi)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                qm_mid, acc_mid = attempt(method, layers_for(mid))
                if ok(acc_mid):
                    hi, found = mid, (mid, qm_mid, acc_mid)
                else:
                    lo = mid
            best = (method, found[1], found[2], layers_for(found[0]))
        elif acc_hi > best[2]:
            best = (method, qm_hi, acc_hi, layers_for(hi))
    search_s = time.time() - t_start
    with torch.no_grad():
        fp32_test = top1(lambda a: variant.module(torch.from_numpy(a)).numpy(), test_x, test_y)
    test_acc = top1(best[1].forward_numpy, test_x, test_y)
    t0 = time.time()
    eng.quantize(lm, PrecisionPlan(), QuantConfig(engine=engine), list(calib), NullContext())
    plain_s = time.time() - t0
    return {"model": variant.name, "engine": engine, "budget_points": budget, "method": best[0],
            "fp32_layers": best[3], "judge_fp32": fp32_judge, "judge_int8": best[2], "meets_budget": ok(best[2]),
            "test_fp32": fp32_test, "test_int8": test_acc, "candidates": len(tried), "search_s": search_s,
            "plain_quantize_s": plain_s, "tried": tried,
            "n_calib": int(sum(len(c) for c in calib)), "n_judge": len(judge_y), "n_test": len(test_y)}


def main(argv=None) -> int:
    import torch

    torch.set_num_threads(1)
    args = argv if argv is not None else sys.argv[1:]
    name = args[0] if args else "resnet18 3 blocks s300"
    engines = args[1:] or ["onnxruntime"]
    variant = next(v for v in damaged_models(name.split()[0]) if v.name == name)
    cx, cy, tx, ty = digits_split(variant.size)
    calib = [cx[i:i + 32].numpy() for i in range(0, 256, 32)]  # the study's calibration images
    judge_x, judge_y = cx[256:512].numpy(), cy[256:512].numpy()  # other training images
    results = []
    for engine in engines:
        r = search(variant, engine, calib, judge_x, judge_y, tx.numpy(), ty.numpy())
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "tried"}), flush=True)
    path = WORK / f"auto_{name.replace(' ', '_')}.json"
    path.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
