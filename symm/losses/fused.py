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
from symm.losses.grid import gather_rows
from symm.losses.kernels import compiled_symm_npair_logits, usable
from symm.losses.pairs import candidates_from_gram


class SymmNPairLogits(torch.autograd.Function):
    """(anchors, positives) -> (N, N) chosen logits and the (N, N) index of the chosen set pair."""

    @staticmethod
    def forward(ctx: Any, anchors: torch.Tensor, positives: torch.Tensor, pairs: list[tuple[int, int]],  # type: ignore[override]
                anchors_only: bool, rank: int, keep_positive: bool, alpha: float, beta: float, form: str,
                eps: float = 1e-12, row_mix: tuple[tuple[int, ...], ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        n = anchors.shape[0]
        if row_mix is not None:  # row r of a pair is the sum of the sets row_mix[r] (the angular loss's X_s + X_t)
            anchors_only, keep_positive = False, False
            pairs = [(4 + r, t) for r, t in pairs]
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
        if row_mix is not None:
            coef = torch.cat([coef, torch.stack([coef[list(mix)].sum(0) for mix in row_mix])])
        # candidates X_s[i] · X_t[j], one output buffer; the choice overwrites it (fresh full-size
        # temporaries, not arithmetic, are the cost on CPU)
        candidates = candidates_from_gram(gram, coef, pairs)
        values, which = kth_hardest(candidates, rank, dim=0, largest=True, scratch=True)
        if keep_positive:
            which.diagonal().fill_(pairs.index((0, 1)))
            values.diagonal().copy_(ap)
        which_flat = which.view(-1)
        set_of_pair = torch.tensor(pairs, dtype=anchors.dtype, device=anchors.device).T.contiguous()  # (2, P): row set, col set
        classes = torch.arange(n, dtype=anchors.dtype, device=anchors.device)
        row_flat = set_of_pair[0].index_select(0, which_flat).view(n, n).mul_(n).add_(classes[:, None]).view(-1).long()
        col_flat = set_of_pair[1].index_select(0, which_flat).view(n, n).mul_(n).add_(classes).view(-1).long()
        by_source = coef.transpose(0, 1).reshape(2, -1)
        row_coef = gather_rows(by_source[:kr], row_flat).view(kr, n, n)
        col_coef = gather_rows(by_source, col_flat).view(2, n, n)
        ctx.save_for_backward(anchors, positives, points, gram_rows, row_coef, col_coef, row_flat, col_flat, along, axis_sq, full_diag)
        ctx.consts = (n, kr, alpha * beta, eps, row_mix)
        ctx.mark_non_differentiable(which)
        ctx.set_materialize_grads(False)  # no zero-filled (N, N) gradient for ``which``
        return values, which

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor | None, _: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        if grad is None:  # the logits were not used
            return (None,) * 11
        anchors, positives, points, gram_rows, row_coef, col_coef, row_flat, col_flat, along, axis_sq, full_diag = ctx.saved_tensors
        n, kr, alpha_beta, eps, row_mix = ctx.consts
        gram = gram_rows.view(kr, n, 2, n).transpose(1, 2)
        d_rows = torch.empty_like(gram_rows)  # d_rows[k·N + i, l·N + j] = dK[k, l, i, j] = g·r_k·c_l
        d_gram = d_rows.view(kr, n, 2, n).transpose(1, 2)
        n_sets = 4 + (len(row_mix) if row_mix is not None else 0)
        d_coef = torch.zeros(2, n_sets * n, dtype=grad.dtype, device=grad.device)  # [k, s·N + i]
        work = torch.empty_like(grad)  # one scratch buffer for the per-entry products
        for k in range(kr):
            torch.mul(grad, row_coef[k], out=work)
            for l in range(2):
                torch.mul(work, col_coef[l], out=d_gram[k, l])
            torch.mul(gram[k, 0], col_coef[0], out=work).addcmul_(gram[k, 1], col_coef[1]).mul_(grad)  # dr_k
            d_coef[k].index_add_(0, row_flat, work.view(-1))
        for l in range(2):
            torch.mul(gram[0, l], row_coef[0], out=work)
            for k in range(1, kr):
                work.addcmul_(gram[k, l], row_coef[k])
            d_coef[l].index_add_(0, col_flat, work.mul_(grad).view(-1))  # dc_l
        if row_mix is not None:  # a summed row set passes its gradient to each of its sets
            for r, mix in enumerate(row_mix):
                for set_index in mix:
                    d_coef[:, set_index * n:(set_index + 1) * n] += d_coef[:, (4 + r) * n:(5 + r) * n]
        d_along = torch.stack([d_coef[0, 2 * n: 3 * n], d_coef[1, 3 * n: 4 * n]])  # S1's a-part, S2's p-part
        d_ap = (d_along * alpha_beta / axis_sq).sum(0)
        d_axis = -d_along * along / axis_sq * (full_diag > eps)
        if kr == 2:
            d_points = (d_rows + d_rows.T) @ points
        else:
            d_points = d_rows.T @ anchors
            d_points[:n] += d_rows @ points
        d_anchors = d_points[:n] + (2 * d_axis[0])[:, None] * anchors + d_ap[:, None] * positives
        d_positives = d_points[n:] + (2 * d_axis[1])[:, None] * positives + d_ap[:, None] * anchors
        return d_anchors, d_positives, None, None, None, None, None, None, None, None, None


def symm_npair_logits(anchors: torch.Tensor, positives: torch.Tensor, pairs: list[tuple[int, int]], anchors_only: bool,
                      rank: int, keep_positive: bool, alpha: float, beta: float, form: str, eps: float = 1e-12,
                      row_mix: tuple[tuple[int, ...], ...] | None = None) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """(N, N) chosen logits, the chosen set pair, and the share of off-diagonal choices involving a
    synthetic set where the node counted it (None: count it from ``which``).

    The compiled node (``symm.losses.kernels``) where it applies, else ``SymmNPairLogits``.
    """
    if usable(anchors, rank):
        return compiled_symm_npair_logits(anchors, positives, pairs, anchors_only, keep_positive, alpha, beta, form, eps,
                                          row_mix)
    values, which = SymmNPairLogits.apply(anchors, positives, pairs, anchors_only, rank, keep_positive, alpha, beta, form,
                                          eps, row_mix)
    return values, which, None
