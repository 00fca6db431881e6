"""Simplex equiangular tight frames: the fixed local classifiers of BP-free SGR (eq. 7)."""
from __future__ import annotations

import math

import torch

from .errors import UserError


def simplex_etf(dim: int, classes: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A d x C matrix M whose columns have unit norm and pairwise inner products -1/(C-1) (eq. 7).

    M = sqrt(C/(C-1)) U (I - 11^T/C), with U a random d x C matrix of orthonormal columns (d >= C):
    M^T M = C/(C-1) (I - 11^T/C), whose diagonal is 1 and off-diagonal -1/(C-1) (NOTES.md).
    """
    if classes < 2:
        raise UserError(f"a simplex ETF needs at least 2 classes, got {classes}")
    if dim < classes:
        raise UserError(f"a simplex ETF for {classes} classes needs features of dimension >= {classes}, "
                        f"got {dim}")
    gaussian = torch.randn(dim, classes, generator=generator, dtype=torch.float64)
    orthonormal, _ = torch.linalg.qr(gaussian)  # reduced QR: d x C, orthonormal columns
    centering = torch.eye(classes, dtype=torch.float64) - 1.0 / classes
    return (math.sqrt(classes / (classes - 1)) * orthonormal @ centering).float()
