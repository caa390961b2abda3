"""Symm+N-pair logits as one autograd node with a hand-written backward.

On CPU at the paper's batch size the loss is bound by the number of kernels, not by
arithmetic: autograd records every small coefficient and gather step and replays each in
backward. Here the forward runs without autograd (Gram, reflection coefficients, candidates,
choice, chosen similarities) and the backward is the closed form: the chosen similarity
L_ij = Σ_kl r_k K_kl c_l (r, c: the chosen sets' coefficients on a_i, p_i / a_j, p_j) gives
dK = g·r·c, and d r, d c flow to the reflection coefficients along = βα·(a·p)/||axis||²
and from there to a_i, p_i. ``NPairLoss`` uses it unless ``rescale_to_axis_norm`` is set; the
tests compare it with the autograd path and with finite differences.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from symm.losses.base import kth_hardest


class SymmNPairLogits(torch.autograd.Function):
    """(anchors, positives) -> (N, N) chosen logits and the (N, N) index of the chosen set pair."""

    @staticmethod
    def forward(ctx: Any, anchors: torch.Tensor, positives: torch.Tensor, pairs: list[tuple[int, int]],  # type: ignore[override]
                anchors_only: bool, rank: int, keep_positive: bool, alpha: float, beta: float, form: str,
                eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
        n = anchors.shape[0]
        points = torch.cat([anchors, positives])
        kr = 1 if anchors_only else 2
        gram_rows = (anchors if anchors_only else points) @ points.T  # (kr·N, 2N)
        gram = gram_rows.view(kr, n, 2, n).transpose(1, 2)  # K[k, l, i, j]
        full_diag = torch.stack([(anchors * anchors).sum(1), (positives * positives).sum(1)])
        ap = (anchors * positives).sum(1)
        own = beta * (1 - alpha) if form == "paper" else -beta
        axis_sq = full_diag.clamp_min(eps)
        along = (beta * alpha) * ap / axis_sq  # [along_s1 (on a), along_s2 (on p)]
        own_part = torch.full_like(along, own)
        eye = torch.eye(2, dtype=anchors.dtype, device=anchors.device)[:, :, None]
        coef = torch.cat([eye.expand(2, 2, n), own_part[:, None, :] + (along - own_part)[:, None, :] * eye])  # (4, 2, N)
        # candidates X_s[i] · X_t[j], all pairs at once (few large kernels: the cost here is per kernel)
        index = torch.tensor(pairs, device=anchors.device)
        row_terms = (coef[:, :kr, None, :, None] * gram[None]).sum(1)  # (4, 2, N, N): Σ_k C[s,k,i] K[k,l]
        candidates = (row_terms[index[:, 0]] * coef[index[:, 1], :, None, :]).sum(1)
        values, which = kth_hardest(candidates, rank, dim=0, largest=True)
        if keep_positive:
            which.diagonal().fill_(pairs.index((0, 1)))
            values.diagonal().copy_(ap)
        classes = torch.arange(n, device=which.device)
        row_flat = (index[which, 0] * n + classes[:, None]).reshape(-1)
        col_flat = (index[which, 1] * n + classes).reshape(-1)
        by_source = coef.transpose(0, 1).reshape(2, -1)
        row_coef = by_source[:kr].index_select(1, row_flat).view(kr, n, n)
        col_coef = by_source.index_select(1, col_flat).view(2, n, n)
        ctx.save_for_backward(anchors, positives, points, gram_rows, row_coef, col_coef, row_flat, col_flat, along, axis_sq, full_diag)
        ctx.consts = (n, kr, alpha * beta, eps)
        ctx.mark_non_differentiable(which)
        return values, which

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor, _: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        anchors, positives, points, gram_rows, row_coef, col_coef, row_flat, col_flat, along, axis_sq, full_diag = ctx.saved_tensors
        n, kr, alpha_beta, eps = ctx.consts
        gram = gram_rows.view(kr, n, 2, n).transpose(1, 2)
        d_gram = grad * row_coef[:, None] * col_coef[None, :]  # (kr, 2, N, N)
        d_row = grad * (gram * col_coef[None, :]).sum(1)  # (kr, N, N)
        d_col = grad * (gram * row_coef[:, None]).sum(0)  # (2, N, N)
        d_coef = torch.zeros(2, 4 * n, dtype=grad.dtype, device=grad.device)  # [k, s·N + i]
        d_coef[:kr].index_add_(1, row_flat, d_row.reshape(kr, -1))
        d_coef.index_add_(1, col_flat, d_col.reshape(2, -1))
        d_along = torch.stack([d_coef[0, 2 * n: 3 * n], d_coef[1, 3 * n:]])  # S1's a-part, S2's p-part
        d_ap = (d_along * alpha_beta / axis_sq).sum(0)
        d_axis = -d_along * along / axis_sq * (full_diag > eps)
        d_rows = d_gram.transpose(1, 2).reshape(kr * n, 2 * n)
        if kr == 2:
            d_points = (d_rows + d_rows.T) @ points
        else:
            d_points = d_rows.T @ anchors
            d_points[:n] += d_rows @ points
        d_anchors = d_points[:n] + (2 * d_axis[0])[:, None] * anchors + d_ap[:, None] * positives
        d_positives = d_points[n:] + (2 * d_axis[1])[:, None] * positives + d_ap[:, None] * anchors
        return d_anchors, d_positives, None, None, None, None, None, None, None, None
