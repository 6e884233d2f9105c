"""The declared shape of the JSON files a user hands QuantStudio: recipes and projects.

One JSON Schema per file type says every field's type, range and allowed values; a file
is checked against it before anything is built from it, so a bad file fails at once with
one line naming the file, the field (as a JSON path) and what is allowed, and never
half-way through a run (after an export was written) or with a traceback.

Why jsonschema rather than pydantic: the files are plain JSON that already round-trip
through dataclasses (``Recipe``, ``QuantConfig``, ``PrecisionPlan``); a schema that is
itself data can be validated against without a second model class per object, reports
every error with its JSON path, and is what the README's field table is generated from
(:func:`field_table`). jsonschema is pure Python and small (pydantic-core is a compiled
wheel per platform that the app bundle would have to carry).

Each leaf schema carries ``x-allowed``, the plain words for what it accepts; it is used
in error messages and in the README table. Ranges are there to protect the machine:
a 100000-pixel resize grew the process to 23.5 GB before it was killed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

from quantstudio.core.errors import InputError

# One limit for recipes and command-line flags (8192x8192x3 float32 is 0.8 GB per sample).
from quantstudio.core.data.preprocessing import MAX_IMAGE_SIDE  # noqa: E402
MAX_SAMPLES = 1_000_000
MAX_BATCH = 4096
MAX_SEED = 2**32 - 1  # numpy's RandomState accepts 0 .. 2**32-1
# Python's json parser recurses per nesting level; deeper than this is not a file
# QuantStudio wrote, and far deeper raises RecursionError.
MAX_JSON_DEPTH = 64


# ----------------------------------------------------------------------------- helpers


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    allowed = schema.get("x-allowed", "")
    return {"anyOf": [{"type": "null"}, schema], "x-allowed": f"{allowed}, or null" if allowed else "null"}


def _int(lo: int, hi: int, what: str = "") -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, "maximum": hi,
            "x-allowed": f"a whole number from {lo:,} to {hi:,}{what}"}


def _enum(values: Iterable[str]) -> dict[str, Any]:
    values = list(values)
    return {"enum": values, "x-allowed": "one of " + ", ".join(f'"{v}"' for v in values)}


_STRING = {"type": "string", "x-allowed": "text"}
_BOOL = {"type": "boolean", "x-allowed": "true or false"}
_NUMBER = {"type": "number", "x-allowed": "a number"}

_SIDE = _int(1, MAX_IMAGE_SIDE)
_IMAGE_SIZE = {
    "anyOf": [
        {"type": "null"},
        _SIDE,
        {"type": "array", "items": _SIDE, "minItems": 1, "maxItems": 2},
    ],
    "x-allowed": f"null, N or [H, W], each a whole number from 1 to {MAX_IMAGE_SIDE}",
}


def _object(properties: dict[str, Any], required: Iterable[str] = (), extra: bool = False,
            allowed: str = "an object") -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": extra,
        "x-allowed": allowed,
    }


def _plan_schema() -> dict[str, Any]:
    from quantstudio.core.plan import PLAN_VERSION, RULE_KINDS, Precision

    precisions = _enum(p.value for p in Precision)
    rule = _object(
        {
            "pattern": {"type": "string", "minLength": 1, "x-allowed": "non-empty text"},
            "precision": precisions,
            "kind": _enum(RULE_KINDS),
        },
        required=("pattern", "precision"),
        allowed="an object with pattern, precision and kind",
    )
    # A "regex" rule's pattern must compile; otherwise matching fails mid-run.
    rule["if"] = {"properties": {"kind": {"const": "regex"}}, "required": ["kind"]}
    rule["then"] = {"properties": {"pattern": {"type": "string", "format": "regex",
                                               "x-allowed": "a valid regular expression"}}}
    return _object(
        {
            "version": {"const": PLAN_VERSION, "x-allowed": str(PLAN_VERSION)},
            "default": precisions,
            "rules": {"type": "array", "items": rule, "x-allowed": "a list of rules"},
        },
        required=("version", "default"),
        allowed="an object with version, default and rules",
    )


def _config_schema() -> dict[str, Any]:
    from dataclasses import MISSING, fields

    from quantstudio.core.engines.base import BACKENDS, CALIBRATIONS, QAT_SIGNALS, QuantConfig

    declared: dict[str, Any] = {
        "backend": _enum(BACKENDS),
        "calibration": _enum(CALIBRATIONS),
        "per_channel": _BOOL,
        "symmetric_activations": _BOOL,
        "calib_samples": _int(1, MAX_SAMPLES),
        "equalize": _BOOL,  # cross-layer equalization before static INT8 (core/equalize.py)
        "qat": _BOOL,
        "qat_epochs": _int(1, 1000),
        "qat_lr": _NUMBER,
        "qat_batch_size": _int(1, 4096),
        "qat_signal": _enum(QAT_SIGNALS),
    }
    # A QuantConfig option added later (by another part of the app) is typed from its
    # default, so recipes written by this version always validate in this version.
    by_type = {bool: _BOOL, int: {"type": "integer", "x-allowed": "a whole number"},
               float: _NUMBER, str: _STRING}
    for f in fields(QuantConfig):
        if f.name in declared or f.name in ("engine", "mode", "seed"):
            continue
        default = f.default if f.default is not MISSING else None
        declared[f.name] = _nullable(by_type[type(default)]) if type(default) in by_type else {"x-allowed": "any"}
    return _object(declared, allowed="an object of quantization options")


def recipe_schema() -> dict[str, Any]:
    """The JSON Schema of a ``.recipe.json`` (version 1)."""
    from quantstudio.core.engines.base import ENGINES, MODES
    from quantstudio.core.loading import KIND_LABELS

    fingerprint = _nullable(_object(
        {
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$", "x-allowed": "64 hex digits"},
            "method": _STRING,
            "samples": _int(0, MAX_SAMPLES),
            "kind": _nullable(_STRING),
        },
        allowed="an object with sha256, method, samples, kind",
    ))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **_object(
            {
                "version": {"const": 1, "x-allowed": "1"},
                "created": {"type": "string", "x-allowed": "a date and time (informative)"},
                "engine": _enum(ENGINES),
                "mode": _enum(MODES),
                "config": _config_schema(),
                "plan": _plan_schema(),
                # The files exported with this recipe (name → format, bytes, sha256): a model
                # and recipe that do not belong together can be told apart.
                "exports": {"type": "object", "additionalProperties": {
                    "type": "object", "x-allowed": "an object with format, bytes and sha256"},
                    "x-allowed": "file names mapped to their format, size and sha256 (informative)"},
                "preprocessing": _nullable(_object(
                    {
                        "preset": _enum(("default", "imagenet", "custom")),
                        "resize": _IMAGE_SIZE,
                        "crop": _IMAGE_SIZE,
                        "mean": {"type": "array", "items": _NUMBER, "minItems": 1, "maxItems": 64,
                                 "x-allowed": "1 to 64 numbers (one per channel)"},
                        "std": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0,
                                                           "x-allowed": "a number above 0"},
                                "minItems": 1, "maxItems": 64, "x-allowed": "1 to 64 numbers above 0"},
                        "channel_order": _enum(("RGB", "BGR")),
                        # Written for people (the steps that ran); derived, not read back.
                        "steps": {"type": "array", "items": _STRING, "x-allowed": "a list of texts (informative)"},
                    },
                    allowed="an object with resize, crop, mean, std, channel_order",
                )),
                "data": _object(
                    {
                        "spec": _nullable({"type": "string", "minLength": 1,
                                           "x-allowed": 'a folder, a .npy/.npz/.pt file or "random"'}),
                        "kind": _nullable(_STRING),
                        "calibration_samples": _nullable(_int(0, MAX_SAMPLES)),
                        "evaluation_samples": _nullable(_int(0, MAX_SAMPLES)),
                        "batch_size": _nullable(_int(1, MAX_BATCH)),
                        "calibration_fingerprint": fingerprint,
                        "evaluation_spec": _nullable({"type": "string", "minLength": 1,
                                                      "x-allowed": "a folder or a .npy/.npz/.pt file evaluated on"}),
                    },
                    allowed="an object with spec, batch_size and sample counts",
                ),
                "seed": _int(0, MAX_SEED),
                "model": _object(
                    {
                        "path": _nullable({"type": "string", "minLength": 1, "x-allowed": "a file path"}),
                        "sha256": _nullable({"type": "string", "pattern": "^[0-9a-f]{64}$",
                                             "x-allowed": "64 hex digits"}),
                        "kind": _nullable(_enum(KIND_LABELS)),
                        "arch": _nullable(_STRING),
                        "input_shape": _nullable({
                            "type": "array", "items": _int(1, MAX_IMAGE_SIDE), "minItems": 2, "maxItems": 5,
                            "x-allowed": f"2 to 5 whole numbers from 1 to {MAX_IMAGE_SIDE}",
                        }),
                    },
                    allowed="an object with path, sha256, kind, arch, input_shape",
                ),
                "versions": {"type": "object", "additionalProperties": _nullable(_STRING),
                             "x-allowed": "package names mapped to versions (informative)"},
            },
            required=("version", "engine", "mode", "plan"),
            allowed="a JSON object",
        ),
    }


# ----------------------------------------------------------------------------- checking


def load_json_file(path: str | Path, what: str) -> Any:
    """Read a JSON file written for QuantStudio; every failure is an InputError naming it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"no such {what} file", path=path, hint="Check the path.") from None
    except IsADirectoryError:
        raise InputError(f"this is a folder, not a {what} file", path=path, hint=f"Choose the {what} file.") from None
    except OSError as exc:
        raise InputError(f"the {what} file cannot be read", path=path,
                         hint="Check that you may read it.", details=str(exc)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"the {what} file is not text (invalid UTF-8 at byte {exc.start})", path=path,
                         hint=f"Choose a {what} file written by QuantStudio.", details=str(exc)) from None
    depth = _max_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise InputError(f"the {what} file nests {depth} levels deep (at most {MAX_JSON_DEPTH} are allowed)",
                         path=path, hint=f"Choose a {what} file written by QuantStudio.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"the {what} file is not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})",
                         path=path, hint=f"Fix the JSON, or choose a {what} file written by QuantStudio.",
                         details=str(exc)) from None
    except (RecursionError, ValueError) as exc:  # ValueError: e.g. a number with 5000 digits
        raise InputError(f"the {what} file cannot be read as JSON", path=path,
                         hint=f"Choose a {what} file written by QuantStudio.", details=f"{type(exc).__name__}: {exc}") from None


def _max_depth(text: str) -> int:
    """The deepest nesting of [ and { outside strings (cheap, no recursion)."""
    depth = deepest = 0
    for m in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        tok = m.group()
        if tok in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif tok in "]}":
            depth -= 1
    return deepest


def validate(data: Any, schema: dict[str, Any], path: str | Path | None, what: str) -> None:
    """Raise one :class:`InputError` for the first problem: file, field (JSON path), what is allowed."""
    import jsonschema

    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(data), key=_sort_key)
    if not errors:
        return
    error = _most_specific(errors[0])
    raise InputError(
        describe_error(error),
        path=path,
        hint=f"Fix that field, or use a {what} written by QuantStudio.",
        details="\n".join(describe_error(_most_specific(e)) for e in errors[:20]),
    )


def _sort_key(error: Any) -> tuple[int, list[str]]:
    return (len(error.absolute_path), [str(p) for p in error.absolute_path])


def _most_specific(error: Any) -> Any:
    """For "null or an object" (anyOf) failures, the error inside the alternative that was
    meant: a bad ``preprocessing.resize`` is reported there, not as "preprocessing"."""
    while error.validator in ("anyOf", "oneOf") and error.context:
        deeper = [e for e in error.context if len(e.absolute_path) > len(error.absolute_path)]
        if not deeper:
            break
        error = min(deeper, key=_sort_key)
    return error


def field_path(parts: Iterable[Any]) -> str:
    """``["plan", "rules", 0, "pattern"]`` → ``plan.rules[0].pattern``."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(the whole file)"


def describe_error(error: Any) -> str:
    """One sentence: the field, the value found, and what is allowed there."""
    where = field_path(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        known = set(schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in known) if isinstance(error.instance, dict) else []
        names = ", ".join(repr(k) for k in unknown)
        fields = ", ".join(sorted(known)) or "none"
        inside = "" if where == "(the whole file)" else f" in {where}"
        return f"unknown field{'s' if len(unknown) != 1 else ''} {names}{inside}; allowed fields: {fields}"
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        field = missing if where == "(the whole file)" else f"{where}.{missing}"
        return f"field {field} is missing"
    allowed: str | None = schema.get("x-allowed")
    if error.validator == "format" and schema.get("format") == "regex":
        allowed = "a valid regular expression"
    if not allowed:
        allowed = error.message
    return f"field {where} is {_show(error.instance)}; allowed: {allowed}"


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if _jsonable(value) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


# ----------------------------------------------------------------------------- documentation


def field_table(schema: dict[str, Any]) -> str:
    """A Markdown table of every field and what it allows (the README shows this)."""
    rows = ["| field | allowed |", "|---|---|"]

    def walk(s: dict[str, Any], prefix: str) -> None:
        for name, sub in s.get("properties", {}).items():
            key = f"{prefix}.{name}" if prefix else name
            inner = _object_part(sub)
            if inner is not None and inner.get("properties"):
                walk(inner, key)
                continue
            if sub.get("type") == "array" and isinstance(sub.get("items"), dict) and sub["items"].get("properties"):
                walk(sub["items"], key + "[]")
                continue
            required = " (required)" if name in s.get("required", ()) else ""
            rows.append(f"| `{key}`{required} | {sub.get('x-allowed', '')} |")

    walk(schema, "")
    return "\n".join(rows)


def _object_part(schema: dict[str, Any]) -> dict[str, Any] | None:
    if schema.get("type") == "object":
        return schema
    for alt in schema.get("anyOf", []):
        if alt.get("type") == "object":
            return alt
    return None


# ----------------------------------------------------------------------------- projects


def project_schema() -> dict[str, Any]:
    """The JSON Schema of a ``.qsproj`` project file (version 1).

    ``variants`` hold results whose shape belongs to the results model; only the fields
    the app reads back are typed here, and fields it does not know are ignored there (so
    results saved by a newer app still open), unlike everywhere else.
    """
    from quantstudio.core.loading import KIND_LABELS

    text = _STRING
    nullable_text = _nullable(_STRING)
    number_or_inf = {"anyOf": [{"type": "number"}, {"enum": ["inf", "-inf", "nan"]}, {"type": "null"}],
                     "x-allowed": 'a number, "inf", "-inf" or null'}
    str_list = {"type": "array", "items": _STRING, "x-allowed": "a list of texts"}

    def mapping(values: dict[str, Any], allowed: str) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": values, "x-allowed": allowed}

    variant = {
        "type": "object",
        "required": ["name"],
        "additionalProperties": True,
        "x-allowed": "an object describing one run",
        "properties": {
            "name": text,
            "reference": text,
            "quantized": text,
            "plan": {"type": "object", "x-allowed": "an object"},
            "config": {"type": "object", "x-allowed": "an object"},
            "data": text,
            "metrics": mapping(mapping({"anyOf": [{"type": ["number", "string", "boolean", "null"]}],
                                        "x-allowed": "a number, text or null"}, "an object of metrics"),
                               "variant names mapped to metrics"),
            "latency_samples": mapping(mapping({"type": "array", "items": {"type": "number", "x-allowed": "a number"},
                                                "x-allowed": "a list of numbers"}, "batch sizes mapped to timings"),
                                       "variant names mapped to timings"),
            "throughput": mapping(mapping(_NUMBER, "batch sizes mapped to numbers"), "variant names mapped to throughput"),
            "layer_sqnr": mapping(number_or_inf, "layer names mapped to numbers"),
            "layer_precisions": mapping(_STRING, "layer names mapped to precisions"),
            "sensitivity": mapping(number_or_inf, "layer names mapped to numbers"),
            "fused": {"type": "array", "items": str_list, "x-allowed": "a list of lists of layer names"},
            "confusion": mapping({"type": "array", "minItems": 2, "maxItems": 2, "prefixItems": [
                {"type": "array", "items": {"type": "array", "items": {"type": "number"}}, "x-allowed": "a matrix"},
                str_list,
            ], "x-allowed": "[matrix, labels]"}, "variant names mapped to [matrix, labels]"),
            "changed": {"type": "array", "items": {"type": "object"}, "x-allowed": "a list of objects"},
            "training": {"type": "object", "x-allowed": "an object (QAT settings and history)"},
            "n_evaluated": _int(0, 10**9),
            "n_calibrated": _int(0, 10**9),
            "calibration_data": text,
            "evaluation_data": text,
            "preprocessing_steps": str_list,
            "input_shape": _nullable({"type": "array", "items": _int(1, 10**6), "x-allowed": "a list of whole numbers"}),
            "timing_warnings": str_list,
            "skipped": {"type": "array", "items": {"type": "array", "items": _STRING}, "x-allowed": "a list of [file, reason]"},
            "is_random": _BOOL,
            "labeled": _BOOL,
            "data_note": text,
            "warnings": str_list,
            "notes": str_list,
            "seconds": {"type": "number", "minimum": 0, "x-allowed": "a number of seconds"},
        },
    }
    data = _object(
        {
            "data_kind": text,
            "data_path": text,
            "eval_data_path": text,
            "preprocess_preset": nullable_text,
            "preprocess_resize": text,
            "preprocess_crop": text,
            "preprocess_mean": text,
            "preprocess_std": text,
            "calib_samples": _int(0, MAX_SAMPLES),
            "eval_samples": _int(0, MAX_SAMPLES),
            "engine": nullable_text,
            "backend": nullable_text,
            "mode": nullable_text,
            "calibration": nullable_text,
            "per_channel": _BOOL,
            "equalize": _BOOL,
            "benchmark_runs": _int(1, 100_000),
            "benchmark_batches": text,
            "sensitivity": _BOOL,
            "measure_memory": _BOOL,
            # quantization-aware training (issue 14)
            "qat": _BOOL,
            "qat_epochs": _int(1, 1000),
            "qat_lr": _NUMBER,
            "qat_batch_size": _int(1, 4096),
            "qat_signal": nullable_text,
        },
        allowed="an object of data and run settings",
    )
    model = _object(
        {
            "path": _nullable({"type": "string", "x-allowed": "a file path"}),
            "arch": nullable_text,
            "input_shape": _nullable({"type": "array", "items": _int(1, MAX_IMAGE_SIDE), "minItems": 1, "maxItems": 5,
                                      "x-allowed": f"1 to 5 whole numbers from 1 to {MAX_IMAGE_SIDE}"}),
            "kind": _nullable(_enum(KIND_LABELS)),
            "source_dir": _nullable({"type": "string", "x-allowed": "a folder path"}),
        },
        allowed="an object with path, arch, input_shape, kind, source_dir",
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **_object(
            {
                "format": {"const": "quantstudio-project", "x-allowed": '"quantstudio-project"'},
                "version": {"const": 1, "x-allowed": "1 (missing means 1)"},
                "app_version": {"type": "string", "x-allowed": "text (informative)"},
                "saved": {"type": "string", "x-allowed": "a date and time (informative)"},
                "model": model,
                "data": data,
                "plan": _plan_schema(),
                "variants": {"type": "array", "items": variant, "x-allowed": "a list of runs"},
            },
            required=("format",),
            allowed="a JSON object",
        ),
    }
