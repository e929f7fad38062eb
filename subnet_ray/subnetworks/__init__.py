"""Language-specific subnetworks: head importance, iterative pruning, and the mask toolkit.

`masks` is imported eagerly; the names of `importance` and `prune` load on first use, because
those modules import the models and so transformers (seconds), which the analysis and the
mask toolkit do not need.
"""
from importlib import import_module

from .masks import (
    MaskMeta,
    as_mask,
    cosine_similarity,
    disabled_heads_table,
    heads_shared_by,
    intersection,
    layer_similarity,
    load_mask,
    overlap,
    random_mask,
    save_mask,
    similarity_matrix,
    suboptimal_mask,
    union,
)

_LAZY = {
    "importance": ("ImportancePass", "head_importance", "importance_pass", "normalize_importance"),
    "prune": ("CURVE_COLUMNS", "Subnetwork", "curve_frame", "find_subnetwork", "find_subnetworks", "make_batches",
              "prune", "step_size"),
}


def __getattr__(name: str):
    """Returns a name of `importance` or `prune`, importing that module on first use."""
    module = next((m for m, names in _LAZY.items() if name in names), None)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    loaded = import_module(f".{module}", __name__)
    # Bind all of the module's names at once: importing the submodule `prune` sets this package's
    # attribute `prune` to that module, and the function of the same name must win.
    globals().update({n: getattr(loaded, n) for n in _LAZY[module]})
    return globals()[name]


__all__ = [
    "CURVE_COLUMNS", "ImportancePass", "MaskMeta", "Subnetwork", "as_mask", "cosine_similarity", "curve_frame",
    "disabled_heads_table", "find_subnetwork", "find_subnetworks", "head_importance", "heads_shared_by",
    "importance_pass", "intersection", "layer_similarity", "load_mask", "make_batches", "normalize_importance",
    "overlap", "prune", "random_mask", "save_mask", "similarity_matrix", "step_size", "suboptimal_mask", "union",
]
