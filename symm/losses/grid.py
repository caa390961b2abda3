"""Chosen similarities (or squared distances) on the (..., N, N) grid as one autograd node.

After a choice of sets per entry, every loss needs V[b, i, j] = Σ_kl r_k K_kl c_l (+ the two
squared norms for distances): r, c the chosen sets' coefficients on a_i, p_i / a_j, p_j, K the
Gram blocks. Written with autograd this records broadcast products over the whole grid and
replays each in backward, with a full-size temporary per step; on CPU those temporaries (page
faults of fresh memory) cost more than the arithmetic. Here the forward runs without autograd
and the backward is the closed form: dK = g·r·c, dr = g·Σ_l K c, dc = g·Σ_k r K, the squared
norms get g, gathered back to the per-class coefficients with ``index_add_``.
``PointSets.grid_sims_autograd`` is the reference form; the tests compare both.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable


def _flat_index(sets: torch.Tensor, n: int, row: bool) -> torch.Tensor:
    """s·N + class per entry, flattened; float set indices (exact small integers) are combined in
    float and converted once (int64 arithmetic on the grid is a scalar loop on CPU)."""
    classes = torch.arange(n, device=sets.device, dtype=sets.dtype if sets.is_floating_point() else torch.long)
    flat = (sets * n).add_(classes[:, None] if row else classes).reshape(-1)
    return flat.long() if flat.is_floating_point() else flat


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[:, index] as one 1-D index_select per row (the 2-D, dim=1 form is several times slower on CPU)."""
    out = table.new_empty(table.shape[0], index.shape[0])
    for k in range(table.shape[0]):
        torch.index_select(table[k], 0, index, out=out[k])
    return out


class GridSims(torch.autograd.Function):
    """(gram_rows, coef, sq) -> V with V[b,i,j] = scale · X_r[i]·X_t[j] (+ ||X_r[i]||² + ||X_t[j]||² if sq).

    ``gram_rows``: (kr·N, 2N), rows [A; P] (kr = 2) or A (kr = 1), columns [A; P].
    ``coef``: (S, 2, N) set coefficients; ``sq``: (S, N) squared norms or None.
    ``row_sets``: (B, N, N) chosen row set per entry, or None for "batch b's rows are the real
    set b" (B = kr; the real sets' coefficients are the constant identity and get no gradient).
    ``col_sets``: (B, N, N) chosen column set per entry. Set indices may be integer or float tensors.
    """

    @staticmethod
    def forward(ctx: Any, gram_rows: torch.Tensor, coef: torch.Tensor, sq: torch.Tensor | None,  # type: ignore[override]
                row_sets: torch.Tensor | None, col_sets: torch.Tensor, scale: float) -> torch.Tensor:
        n_sets, _, n = coef.shape
        kr = gram_rows.shape[0] // n
        gram = gram_rows.view(kr, n, 2, n).transpose(1, 2)  # K[k, l, i, j]
        by_source = coef.transpose(0, 1).reshape(2, -1)  # [k, s·N + i]
        col_flat = _flat_index(col_sets, n, row=False)
        cc = gather_rows(by_source, col_flat).view(2, *col_sets.shape)
        if row_sets is None:
            if col_sets.shape[0] != kr:
                raise ValueError(f"row_sets=None needs one batch per real row set ({kr}), got {col_sets.shape[0]}")
            out = gram[:, 0] * cc[0]
            out.addcmul_(gram[:, 1], cc[1])
            row_flat, rc, row_terms = None, None, None
        else:
            row_flat = _flat_index(row_sets, n, row=True)
            rc = gather_rows(by_source[:kr], row_flat).view(kr, *row_sets.shape)
            row_terms = []  # Σ_k r_k K_kl, per l (saved: it is dc / g)
            for l in range(2):
                term = rc[0] * gram[0, l]
                for k in range(1, kr):
                    term.addcmul_(rc[k], gram[k, l])
                row_terms.append(term)
            out = row_terms[0] * cc[0]
            out.addcmul_(row_terms[1], cc[1])
        if scale != 1:
            out.mul_(scale)
        if sq is not None:
            sq_flat = sq.reshape(-1)
            gathered = torch.index_select(sq_flat, 0, col_flat, out=cc.new_empty(col_flat.shape))
            out += gathered.view(col_sets.shape)
            if row_flat is None:
                out += sq[:kr, :, None]
            else:
                out += torch.index_select(sq_flat, 0, row_flat, out=gathered).view(row_sets.shape)
        ctx.save_for_backward(gram_rows, cc, col_flat, rc, row_flat, *(row_terms or ()))
        ctx.consts = (n_sets, n, kr, scale, sq is not None, None if sq is None else sq.shape[0])
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        gram_rows, cc, col_flat, rc, row_flat, *row_terms = ctx.saved_tensors
        n_sets, n, kr, scale, with_sq, sq_sets = ctx.consts
        gram = gram_rows.view(kr, n, 2, n).transpose(1, 2)
        g = grad * scale if scale != 1 else grad
        d_gram_rows = torch.empty_like(gram_rows)
        d_gram = d_gram_rows.view(kr, n, 2, n).transpose(1, 2)
        d_coef = torch.zeros(2, n_sets * n, dtype=grad.dtype, device=grad.device)
        if row_flat is None:  # batch b = real row set b
            work = torch.empty_like(g)  # one scratch buffer: fresh full-size temporaries are the cost on CPU
            for l in range(2):
                torch.mul(g, cc[l], out=d_gram[:, l])
                d_coef[l].index_add_(0, col_flat, torch.mul(g, gram[:, l], out=work).reshape(-1))
        else:
            for k in range(kr):
                gr = g * rc[k]
                for l in range(2):
                    if gr.shape[0] > 1:
                        d_gram[k, l] = (gr * cc[l]).sum(0)
                    else:
                        torch.mul(gr[0], cc[l, 0], out=d_gram[k, l])
                col_term = gram[k, 0] * cc[0]
                col_term.addcmul_(gram[k, 1], cc[1]).mul_(g)
                d_coef[k].index_add_(0, row_flat, col_term.reshape(-1))
            for l in range(2):
                d_coef[l].index_add_(0, col_flat, (g * row_terms[l]).reshape(-1))
        d_coef = d_coef.view(2, n_sets, n).transpose(0, 1)
        d_sq = None
        if with_sq:
            d_sq_flat = torch.zeros(sq_sets * n, dtype=grad.dtype, device=grad.device)
            d_sq_flat.index_add_(0, col_flat, grad.reshape(-1))
            if row_flat is None:
                d_sq_flat[: kr * n] += grad.sum(-1).reshape(-1)
            else:
                d_sq_flat.index_add_(0, row_flat, grad.reshape(-1))
            d_sq = d_sq_flat.view(sq_sets, n)
        return d_gram_rows, d_coef, d_sq, None, None, None


def grid_values(gram_rows: torch.Tensor, coef: torch.Tensor, sq: torch.Tensor | None, row_sets: torch.Tensor | None,
                col_sets: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``GridSims`` for selections of shape (..., N, N) (leading dims flattened into the batch)."""
    shape = col_sets.shape
    flat = col_sets.reshape(-1, *shape[-2:])
    rows = None if row_sets is None else row_sets.reshape(-1, *shape[-2:])
    return GridSims.apply(gram_rows, coef, sq, rows, flat, scale).view(shape)
