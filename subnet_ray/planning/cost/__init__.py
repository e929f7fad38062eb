"""The cost model: a sweep's hours, memory and bytes per stage and wave on this machine, before it runs.

Pieces, from the ground up: `walltime` (trials at once, wave lengths under sharing; no torch),
`inputs` (the sweep's data and model, or stand-ins of their shape),
`calibration` (times a few real batches of every pass at the sweep's shapes), `overheads` (what one
invocation pays besides the stages: startup, data, MLflow, Ray, the report), `side_by_side` (how much
slower k Tune trials run at once on a local Ray), `result` (the `Estimate`: each stage output's cost with the
per-stage, wave and present-load totals, and `table`, its text), and `estimate`, which puts them together over the
stage graph into an `Estimate`. `project` is the entry (`subnet-ray estimate`); `table` prints its result.
"""
from __future__ import annotations

from .estimate import estimate
from .inputs import check_inputs
from .ray_data import summary as ray_data_summary
from .result import Estimate, table

__all__ = ["Estimate", "check_inputs", "estimate", "project", "ray_data_summary", "table"]


def project(spec, pruned: float = 1.0, executor: str = "ray", store=None) -> Estimate:
    """Returns the Estimate of one `subnet-ray run` of `spec` measured here: fixed costs, calibrated passes, the load now;
    store: the sweep root's, whose masks already computed say which are equal (estimate.estimate)."""
    import importlib

    from ...orchestration.workers import freeze_heap
    from .overheads import RUN_IMPORTS, measure
    from .walltime import others_running

    for module in RUN_IMPORTS:
        importlib.import_module(module)
    freeze_heap()  # as `run` does before its waves: the report and the passes are timed with the same collector cost
    others = others_running()  # the load as it is, before measuring the fixed costs (Ray's processes) adds to it
    fixed = measure(spec, executor)
    return estimate(spec, pruned=pruned, executor=executor, fixed=fixed, others=others, store=store)
