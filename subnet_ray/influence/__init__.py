"""TracIn influence with factorised random-projection sketches (paper section 3.2, Appendix A).

Modules, in data-flow order: projection (G1, G2 per layer from a seed), sketch (per-example
sketches from one batched forward and backward), tracin (cosine TracIn over checkpoints, top-k
per test example), pipeline (the single-process `influence` over checkpoints and masks),
and orchestration/influence_ray.py runs the same on Ray Data (Ray stays out of this package).

Names are imported on first use, so `subnet_ray.influence.sketch` loads without the config
layer (pydantic), as on GPU machines that have only torch and transformers.
"""
import importlib

_HOME = {
    "influence": "pipeline", "sketch_examples": "pipeline", "Projector": "projection", "Sketches": "sketch",
    "select_linears": "sketch", "sketch_batch": "sketch", "COLUMNS": "tracin", "dense_scores": "tracin", "top_influences": "tracin",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
