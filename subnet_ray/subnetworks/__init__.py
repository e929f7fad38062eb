"""Language-specific subnetworks: head importance, iterative pruning, and the mask toolkit.

- `importance`: Michel et al. head importance, E_x |dL/d xi_head|, under a mask;
- `pruning`: `prune` / `find_subnetworks`, the iterative search for each language's mask;
- `masks`: random and suboptimal baselines, composition, similarity, overlap, storage.

The package exports the mask toolkit only: `importance` and `pruning` import the models and
so transformers (seconds), which the analysis does not need; import their names from them.
"""
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

__all__ = [
    "MaskMeta", "as_mask", "cosine_similarity", "disabled_heads_table", "heads_shared_by", "intersection",
    "layer_similarity", "load_mask", "overlap", "random_mask", "save_mask", "similarity_matrix", "suboptimal_mask", "union",
]
