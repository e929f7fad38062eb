"""MLflow names and values: metric keys, flattened params and tag values within MLflow's limits.

What a sweep's settings, masks and histories become as MLflow params, tags and metrics, apart
from the runs that hold them (tracking.py), so the rules can be read and tested on their own.
"""
from __future__ import annotations

import re
from typing import Any

from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

TRUNCATED = "...[truncated]"
LIST_ITEMS = 8  # lists longer than this (masks, example ids) are summarised, never spelled out


def tag_value(v: Any) -> str:
    """Returns `v` as an MLflow tag value, cut to MLflow's limit (ending with TRUNCATED)."""
    s = str(v)
    return s if len(s) <= MAX_TAG_VAL_LENGTH else s[: MAX_TAG_VAL_LENGTH - len(TRUNCATED)] + TRUNCATED


def metric_name(name: str) -> str:
    """Returns `name` made valid as an MLflow metric key (e.g. 'dev_accuracy/xa' stays as it is)."""
    # MLflow allows alphanumerics, _ - . space / ; colons are refused on Windows servers, and
    # names are treated as paths, so empty, '.' and '..' segments are dropped.
    s = re.sub(r"[^\w.\- /]", "_", str(name))
    s = "/".join(p for p in s.split("/") if p not in ("", ".", ".."))
    s = s[:MAX_ENTITY_KEY_LENGTH]
    if not s:
        raise ValueError(f"metric name {name!r} has no usable characters")
    return s


def _array_summary(v: Any) -> str | None:
    shape = getattr(v, "shape", None)
    if shape is not None and getattr(v, "dtype", None) is not None and len(shape) > 0:
        return f"<array shape={tuple(shape)} dtype={v.dtype}>"  # masks go to artifacts, never params
    return None


def epoch_metrics(record: dict) -> dict[str, float]:
    """Returns the MLflow metrics of one fine-tuning epoch record (a history.json row): train_loss,
    dev_accuracy_mean and dev_accuracy/<lang>."""
    return {"train_loss": record["train_loss"], "dev_accuracy_mean": record["dev_accuracy_mean"],
            **{f"dev_accuracy/{k}": v for k, v in record["dev_accuracy"].items()}}


def flat_params(d: dict, prefix: str = "") -> dict[str, str]:
    """Returns `d` flattened to MLflow params: dotted keys, string values within MLflow's limits.

    Nested dicts become dotted keys; short lists of dicts are indexed (`tasks.0.id`); lists of
    more than LIST_ITEMS items and arrays are summarised, not spelled out; values longer than
    MLflow's limit are cut and end with TRUNCATED.
    """
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flat_params(v, key))
            continue
        if isinstance(v, (list, tuple)) and v and len(v) <= LIST_ITEMS and all(isinstance(x, dict) for x in v):
            out.update(flat_params({str(i): x for i, x in enumerate(v)}, key))
            continue
        s = _array_summary(v)
        if s is None and isinstance(v, (list, tuple)) and len(v) > LIST_ITEMS:
            head = ", ".join(str(x) for x in v[:3])
            s = f"<{len(v)} items: {head}, ...>"
        if s is None:
            s = str(v) if not isinstance(v, (list, tuple)) else "[" + ", ".join(map(str, v)) + "]"
        key = re.sub(r"[^\w.\- /]", "_", key)[:MAX_ENTITY_KEY_LENGTH]
        out[key] = s if len(s) <= MAX_PARAM_VAL_LENGTH else s[: MAX_PARAM_VAL_LENGTH - len(TRUNCATED)] + TRUNCATED
    return out
