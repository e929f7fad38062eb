"""TracIn influence with factorised random-projection sketches (paper section 3.2, Appendix A).

Modules, in data-flow order: projection (G1, G2 per layer from a seed), sketch (per-example
sketches from one batched forward and backward), tracin (cosine TracIn over checkpoints, top-k
per test example), pipeline (the single-process `influence` over checkpoints and masks),
and orchestration/influence_ray.py runs the same on Ray Data (Ray stays out of this package).
"""
from .pipeline import influence, sketch_examples
from .projection import Projector
from .sketch import Sketches, select_linears, sketch_batch
from .tracin import COLUMNS, dense_scores, top_influences

__all__ = ["COLUMNS", "Projector", "Sketches", "dense_scores", "influence", "select_linears", "sketch_batch", "sketch_examples", "top_influences"]
