"""The ridge-regression edit of a linear map shared by the closed-form methods (UCE, RECE, Diff-QuickFix):

    W = argmin  sum_i a_i |W k_i - v_i|^2  +  lamb |W - W0|_F^2
      = (lamb W0 + sum_i a_i v_i k_i^T) (lamb I + sum_i a_i k_i k_i^T)^-1
"""

from __future__ import annotations

import torch


def ridge_edit(w0: torch.Tensor, groups: list[tuple[torch.Tensor, torch.Tensor, float]], lamb: float) -> torch.Tensor:
    """`groups`: (keys [n, d_in], values [n, d_out], weight a) triples. Solved in float64 for stability."""
    w0d = w0.double()
    left = lamb * w0d
    right = lamb * torch.eye(w0.shape[1], dtype=torch.float64)
    for keys, values, weight in groups:
        k, v = keys.double(), values.double()
        left = left + weight * v.T @ k
        right = right + weight * k.T @ k
    return torch.linalg.solve(right, left, left=False).to(w0.dtype)
