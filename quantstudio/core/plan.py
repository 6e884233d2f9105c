"""The precision plan: which layer runs in INT8, FP16 or FP32.

One ordered list of rules, in the shape torchao uses for per-layer configs: each rule
matches layer names (exact, glob or regex) or a layer type, and later rules win over
earlier ones; the default applies where no rule matches. The layer-tree view edits the
plan, engines read it, the recipe stores it. No widget keeps precision state of its own.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Iterable

from quantstudio.core.errors import InputError

if TYPE_CHECKING:
    from quantstudio.core.inventory import LayerNode

PLAN_VERSION = 1


class Precision(str, Enum):
    INT8 = "int8"
    FP16 = "fp16"
    FP32 = "fp32"

    @classmethod
    def parse(cls, text: str) -> "Precision":
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise InputError(
                f"'{text}' is not a precision", hint="Use int8, fp16 or fp32."
            ) from None


RULE_KINDS = ("exact", "glob", "regex", "type")


@dataclass(frozen=True)
class PlanRule:
    pattern: str
    precision: Precision
    kind: str = "exact"  # exact | glob | regex | type (matches the layer's type name)

    def matches(self, name: str, type_name: str = "") -> bool:
        if self.kind == "exact":  # a layer, or a block and every layer inside it
            return name == self.pattern or name.startswith(self.pattern + ".")
        if self.kind == "glob":
            return fnmatch.fnmatchcase(name, self.pattern)
        if self.kind == "regex":
            return re.fullmatch(self.pattern, name) is not None
        return type_name == self.pattern

    def to_dict(self) -> dict[str, str]:
        return {"pattern": self.pattern, "precision": self.precision.value, "kind": self.kind}


@dataclass
class LayerDecision:
    """What the plan asks for a layer and what it will actually get."""

    requested: Precision
    effective: Precision
    reason: str = ""  # why effective differs from requested


@dataclass
class PrecisionPlan:
    default: Precision = Precision.INT8
    rules: list[PlanRule] = field(default_factory=list)

    # ------------------------------------------------------------------ queries
    def precision_for(self, name: str, type_name: str = "") -> Precision:
        return self.precision_for_any(((name, type_name),))[0]

    def precision_for_any(self, candidates: Iterable[tuple[str, str]]) -> tuple[Precision, PlanRule | None]:
        """The precision for a layer known by several (name, type) pairs, and the rule that
        set it (None: the default). An exported ONNX node is known by its PyTorch module and
        by its own ONNX name; a rule matching any of them applies, and later rules win."""
        pairs = tuple(candidates)
        precision, source = self.default, None
        for rule in self.rules:
            if any(rule.matches(name, type_name) for name, type_name in pairs):
                precision, source = rule.precision, rule
        return precision, source

    def resolve(self, tree: "LayerNode") -> dict[str, LayerDecision]:
        """Per leaf layer: requested and effective precision (INT8 falls back to FP32
        on layers that cannot be quantized, with the reason)."""
        out: dict[str, LayerDecision] = {}
        for node, _ in tree.walk():
            if node.children:
                continue
            req = self.precision_for(node.name, node.type)
            if req is Precision.INT8 and not node.quantizable:
                out[node.name] = LayerDecision(req, Precision.FP32, node.reason or "cannot be quantized")
            else:
                out[node.name] = LayerDecision(req, req)
        return out

    def unmatched_rules(self, tree: "LayerNode") -> list[PlanRule]:
        """The rules that match no layer of ``tree`` (a typo, or a plan made for another model)."""
        # Every node, blocks included: an engine may apply a rule to a block as a whole
        # (ONNX Runtime maps attention's nodes to its MultiheadAttention module).
        nodes = [(n.name, n.type) for n, _ in tree.walk()]
        return [r for r in self.rules if not any(r.matches(name, t) for name, t in nodes)]

    def counts(self, tree: "LayerNode") -> dict[Precision, int]:
        counts = {p: 0 for p in Precision}
        for d in self.resolve(tree).values():
            counts[d.effective] += 1
        return counts

    # ------------------------------------------------------------------ edits
    def set(self, pattern: str, precision: Precision | str, kind: str = "exact") -> None:
        """Add a rule (replacing an identical-pattern rule, so the list stays short)."""
        if kind not in RULE_KINDS:
            raise InputError(f"unknown rule kind '{kind}'", hint=f"Use one of {', '.join(RULE_KINDS)}.")
        if kind == "regex":
            try:
                re.compile(pattern)
            except re.error as exc:
                raise InputError(f"'{pattern}' is not a valid regular expression ({exc})") from None
        precision = Precision(precision)
        self.rules = [r for r in self.rules if not (r.pattern == pattern and r.kind == kind)]
        self.rules.append(PlanRule(pattern, precision, kind))

    def set_subtree(self, name: str, precision: Precision | str) -> None:
        """Set a layer and everything inside it (the whole model when ``name`` is "")."""
        precision = Precision(precision)
        if name == "":
            self.default = precision
            self.rules = []
            return
        # Rules inside the subtree are now overridden; drop them so the plan stays readable.
        prefix = name + "."
        self.rules = [
            r for r in self.rules
            if not (r.kind == "exact" and (r.pattern == name or r.pattern.startswith(prefix)))
            and not (r.kind == "glob" and r.pattern in (name, prefix + "*"))
        ]
        self.rules.append(PlanRule(name, precision, "exact"))
        self.rules.append(PlanRule(prefix + "*", precision, "glob"))

    def set_all(self, precision: Precision | str) -> None:
        self.set_subtree("", precision)

    def parse_assignment(self, text: str) -> None:
        """Apply a CLI assignment ``PATTERN=PRECISION`` (glob, or ``re:`` / ``type:`` prefix)."""
        if "=" not in text:
            raise InputError(
                f"'{text}' is not PATTERN=PRECISION", hint="For example --precision 'layer4.*=fp32'."
            )
        pattern, _, prec = text.rpartition("=")
        kind = "glob" if any(c in pattern for c in "*?[") else "exact"
        for prefix, k in (("re:", "regex"), ("type:", "type")):
            if pattern.startswith(prefix):
                pattern, kind = pattern[len(prefix):], k
        if pattern in ("", "*", "default"):
            self.default = Precision.parse(prec)
            return
        self.set(pattern, Precision.parse(prec), kind)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "default": self.default.value,
            "rules": [r.to_dict() for r in self.rules],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrecisionPlan":
        version = data.get("version")
        if version != PLAN_VERSION:
            raise InputError(
                f"precision plan version {version!r} is not supported (expected {PLAN_VERSION})",
                hint="Re-create the plan with this version of QuantStudio.",
            )
        try:
            return cls(
                default=Precision(data["default"]),
                rules=[
                    PlanRule(r["pattern"], Precision(r["precision"]), r.get("kind", "exact"))
                    for r in data.get("rules", [])
                ],
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise InputError(f"the precision plan is malformed ({exc})") from None

    def copy(self) -> "PrecisionPlan":
        return PrecisionPlan(self.default, list(self.rules))
