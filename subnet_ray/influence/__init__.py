"""TracIn influence with factorised random-projection sketches (paper section 3.2, Appendix A).

Modules, in data-flow order: projection (G1, G2 per layer from a seed), sketch (per-example
sketches from one batched forward and backward), tracin (cosine TracIn over checkpoints, top-k
per test example), pipeline (the single-process `influence` over checkpoints and masks),
and orchestration/influence_ray.py runs the same on Ray Data (Ray stays out of this package).

Import names from their modules (e.g. `from subnet_ray.influence.pipeline import influence`):
the package imports nothing itself, so `subnet_ray.influence.sketch` loads without the config
layer (pydantic), as on GPU machines that have only torch and transformers.
"""
