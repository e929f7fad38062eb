"""Language-specific subnetworks: head importance, iterative pruning, and the mask toolkit."""
from .importance import ImportancePass, head_importance, importance_pass, normalize_importance
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
from .prune import CURVE_COLUMNS, Subnetwork, curve_frame, find_subnetwork, find_subnetworks, make_batches, prune, step_size

__all__ = [
    "CURVE_COLUMNS", "ImportancePass", "MaskMeta", "Subnetwork", "as_mask", "cosine_similarity", "curve_frame",
    "disabled_heads_table", "find_subnetwork", "find_subnetworks", "head_importance", "heads_shared_by",
    "importance_pass", "intersection", "layer_similarity", "load_mask", "make_batches", "normalize_importance",
    "overlap", "prune", "random_mask", "save_mask", "similarity_matrix", "step_size", "suboptimal_mask", "union",
]
