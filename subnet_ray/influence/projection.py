"""Random projections of Linear-layer gradients (Pruthi et al. 2020, Appendix F; paper Appendix A).

The gradient of a Linear layer y = W x + b over a sequence is sum_t delta_t [x_t; 1]^T, an
m x (n+1) matrix when the bias is folded in as a last column. Its sketch is
G1 (sum_t delta_t [x_t; 1]^T) G2^T = sum_t (G1 delta_t)(G2 [x_t; 1])^T, a k x k matrix with
k = sqrt(d), formed token by token without ever building the m x (n+1) gradient.

G1 (k x m) and G2 (k x (n+1)) have i.i.d. N(0, 1/k) entries, so E[G^T G] = I and
E[<G1 A G2^T, G1 B G2^T>] = <A, B>: the sketched inner product is an unbiased estimate of
the exact one. (The paper writes E[G G^T] = I, which cannot hold for a k x m matrix with
k < m; E[G^T G] = I is the condition unbiasedness needs.)

Every matrix is drawn on the CPU from a generator seeded by (projection seed, layer name,
role), so every worker on every device derives bit-identical matrices without shipping them.
"""
from __future__ import annotations

import hashlib
import math

import torch


def stream_seed(seed: int, layer: str, role: str) -> int:
    """Returns a 63-bit generator seed derived from (seed, layer name, role); stable across processes."""
    digest = hashlib.sha256(f"{seed}\x00{layer}\x00{role}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def gaussian(rows: int, cols: int, seed: int, layer: str, role: str) -> torch.Tensor:
    """Returns a float32 CPU matrix [rows, cols] with i.i.d. N(0, 1/rows) entries, fixed by its key."""
    g = torch.Generator().manual_seed(stream_seed(seed, layer, role))
    return torch.randn(rows, cols, generator=g, dtype=torch.float32) / math.sqrt(rows)


def sketch_side(proj_dim: int) -> int:
    """Returns k = sqrt(proj_dim); raises ValueError unless proj_dim is a positive perfect square."""
    k = math.isqrt(proj_dim) if proj_dim > 0 else 0
    if k < 1 or k * k != proj_dim:
        raise ValueError(f"proj_dim must be a positive perfect square (sqrt(d) x sqrt(d) sketches), got {proj_dim}")
    return k


class Projector:
    """The pair (G1, G2) of every sketched layer, generated on first use and cached per device and dtype.

    proj_dim: d, the sketch size per layer (k x k with k = sqrt(d)).
    seed: the projection seed; sketches made with different seeds are not comparable.
    """

    def __init__(self, proj_dim: int, seed: int):
        self.proj_dim = proj_dim
        self.seed = seed
        self.side = sketch_side(proj_dim)
        self._cache: dict[tuple, tuple] = {}

    def matrices(
        self, layer: str, out_features: int, in_features: int, bias: bool, device=None, dtype=torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (G1 [k, out_features], G2 [k, in_features + bias]) for `layer`.

        The bias column of G2 is drawn together with the weight columns, so a layer's
        matrices do not depend on whether the caller includes its bias.
        """
        key = (layer, out_features, in_features, bias, str(device), dtype)
        if key not in self._cache:
            g1 = gaussian(self.side, out_features, self.seed, layer, "G1")
            g2 = gaussian(self.side, in_features + 1, self.seed, layer, "G2")
            if not bias:
                g2 = g2[:, :in_features].contiguous()
            self._cache[key] = (g1.to(device=device, dtype=dtype), g2.to(device=device, dtype=dtype))
        return self._cache[key]

    def factors(
        self, layer: str, out_features: int, in_features: int, bias: bool, device=None, dtype=torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Returns (G1, G2's weight columns, G2's bias column or None), each contiguous, for F.linear."""
        key = ("factors", layer, out_features, in_features, bias, str(device), dtype)
        if key not in self._cache:
            g1, g2 = self.matrices(layer, out_features, in_features, bias, device, dtype)
            self._cache[key] = (g1, g2[:, :in_features].contiguous(), g2[:, in_features].contiguous() if bias else None)
        return self._cache[key]

    def project(self, layer: str, grad: torch.Tensor, bias: bool) -> torch.Tensor:
        """Returns G1 grad G2^T flattened to [..., d] for full gradients grad [..., m, n + bias].

        This forms the full gradient first: it is the reference the token-wise sketch must
        equal, and what a naive per-example loop does.
        """
        m, n = grad.shape[-2], grad.shape[-1] - int(bias)
        g1, g2 = self.matrices(layer, m, n, bias, grad.device, grad.dtype)
        return (g1 @ grad @ g2.T).flatten(-2)
