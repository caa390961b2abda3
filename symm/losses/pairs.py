"""The N-pair batch contract and the similarity geometry shared by every pair-based loss.

Every label appears exactly twice: its first occurrence is the anchor, its second the positive.
The losses see the batch as point sets [A, P] (plain) or [A, P, S1, S2] (with symmetrical
synthesis; S1 = P mirrored about A, S2 = A mirrored about P), one point per class in each set.

A mirror image is a per-class linear combination of that class's anchor and positive, so every
similarity involving synthetic points is algebraic in the Gram matrix of the real points:
X_s[i] · X_t[j] = Σ_kl C[s,k,i] K[k,l,i,j] C[t,l,j] with K the (2, 2, N, N) Gram blocks of
[A; P] (one matmul) and C the (S, 2, N) coefficients. ``symm.synthesis.reflect`` is the explicit
form; tests check both agree.

Selections (hardest or k-th hardest candidate) are made without autograd on all candidates,
then only the selected similarities are recomputed with autograd: the gradient of a max is the
gradient of its winner, so this equals differentiating the max, at a fraction of the backward cost.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from symm.losses.grid import grid_values


class _Gram(torch.autograd.Function):
    """R · Rᵀ whose backward is one matmul, (G + Gᵀ) · R, instead of autograd's two."""

    @staticmethod
    def forward(ctx, points: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(points)
        return points @ points.T

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (points,) = ctx.saved_tensors
        return (grad + grad.T) @ points


def gram_matrix(points: torch.Tensor) -> torch.Tensor:
    """points · pointsᵀ with a one-matmul backward."""
    return _Gram.apply(points)


def pair_layout(labels: torch.Tensor) -> str | None:
    """'interleaved' ([a1, p1, a2, p2, ...]), 'blocked' ([a1..aN, p1..pN]) or None (another order).

    The two layouts samplers produce, with distinct anchor labels; None sends the batch to the
    general path (which also explains what is wrong).
    """
    size = labels.shape[0]
    if labels.dim() != 1 or size < 4 or size % 2:
        return None
    n = size // 2
    if labels.device.type == "cpu":  # as Python numbers: a few µs, a third of the torch calls below
        values = labels.tolist()
        if values[0::2] == values[1::2]:
            firsts, layout = values[0::2], "interleaved"
        elif values[:n] == values[n:]:
            firsts, layout = values[:n], "blocked"
        else:
            return None
        return layout if len(set(firsts)) == n else None
    if torch.equal(labels[0::2], labels[1::2]):
        firsts, layout = labels[0::2], "interleaved"
    elif torch.equal(labels[:n], labels[n:]):
        firsts, layout = labels[:n], "blocked"
    else:
        return None
    return layout if torch.unique(firsts).numel() == n else None


def pair_views(embeddings: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchors, positives) as views of ``embeddings`` in a ``pair_layout`` (no copies, cheap backward)."""
    n = embeddings.shape[0] // 2
    if layout == "interleaved":
        anchors, positives = embeddings.reshape(n, 2, -1).unbind(1)
        return anchors, positives
    return embeddings[:n], embeddings[n:]


def _pair_views(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Fast path of ``split_pairs`` for the two ``pair_layout`` layouts."""
    layout = pair_layout(labels)
    if layout is None:
        return None
    anchors, positives = pair_views(embeddings, layout)
    return anchors, positives, labels[0::2] if layout == "interleaved" else labels[: labels.shape[0] // 2]


def split_pairs(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (anchors, positives, pair_labels), classes ordered by the anchor's position."""
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be 2-D (batch, dim), got shape {tuple(embeddings.shape)}")
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"labels must be 1-D with one entry per embedding: got {tuple(labels.shape)} for "
            f"{embeddings.shape[0]} embeddings"
        )
    fast = _pair_views(embeddings, labels)
    if fast is not None:
        return fast
    unique, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    if bool((counts != 2).any()):
        bad = int((counts != 2).nonzero()[0, 0])
        count = int(counts[bad])
        raise ValueError(
            f"label {unique[bad].item()} appears {'once' if count == 1 else f'{count} times'}; pair-based losses need every "
            "label exactly twice (first = anchor, second = positive): use an N-pair batch sampler"
        )
    if unique.numel() < 2:
        raise ValueError("a pair-based loss needs at least 2 classes in the batch to have negatives")
    grouped = torch.sort(inverse, stable=True).indices  # [c0 first, c0 second, c1 first, ...]
    anchors, positives = grouped[0::2], grouped[1::2]
    by_position = torch.argsort(anchors)
    anchors, positives = anchors[by_position], positives[by_position]
    return embeddings[anchors], embeddings[positives], labels[anchors]


def candidates_from_gram(gram: torch.Tensor, coef: torch.Tensor, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """(len(pairs), N, N) X_s[i] · X_t[j] from Gram blocks K[k, l] (kr, 2, N, N) and coefficients (S, 2, N), no autograd.

    Rows of a real set are Gram row blocks; a synthetic row set costs two fused multiply-adds
    per Gram block, a synthetic column set two per pair, each written into one output buffer
    (no full-size temporaries). Row sets must be < kr or synthetic (>= 2).
    """
    n = coef.shape[-1]
    with torch.no_grad():
        row_terms = {}
        for s in sorted({s for s, _ in pairs}):  # M_s[l] = Σ_k C[s,k,i] K[k,l]
            if s < gram.shape[0]:
                row_terms[s] = gram[s]
            else:
                row_terms[s] = torch.addcmul(coef[s, 0, None, :, None] * gram[0], coef[s, 1, None, :, None], gram[1])
        out = torch.empty(len(pairs), n, n, dtype=gram.dtype, device=gram.device)
        for c, (s, t) in enumerate(pairs):
            if t < 2:
                out[c] = row_terms[s][t]
            else:
                torch.mul(row_terms[s][0], coef[t, 0], out=out[c])
                out[c].addcmul_(row_terms[s][1], coef[t, 1])
    return out


class PointSets:
    """The batch's point sets as coefficients on the real points, with a lazily computed Gram.

    ``coef[s, k, i]``: X_s[i] = coef[s, 0, i] · a_i + coef[s, 1, i] · p_i (set index >= 2 =
    synthetic); ``sq_norms[s, i]`` = ||X_s[i]||²; ``ap[i]`` = a_i · p_i. Sets may be added
    (``extend``) for row terms such as the angular loss's a_i + p_i.
    """

    def __init__(self, real: tuple[torch.Tensor, torch.Tensor], coef: torch.Tensor, sq_norms: torch.Tensor, ap: torch.Tensor) -> None:
        self.real = real
        self.coef = coef
        self.sq_norms = sq_norms
        self.ap = ap
        self._gram: torch.Tensor | None = None
        self._gram_rows: torch.Tensor | None = None
        self._anchor_gram: torch.Tensor | None = None
        self._anchor_gram_rows: torch.Tensor | None = None

    @property
    def n_sets(self) -> int:
        return self.coef.shape[0]

    @property
    def n_classes(self) -> int:
        return self.real[0].shape[0]

    @property
    def gram(self) -> torch.Tensor:
        """(2, 2, N, N) Gram blocks K[k, l] = R_k · R_lᵀ of R = [A; P], one matmul."""
        if self._gram is None:
            n = self.n_classes
            self._gram_rows = gram_matrix(torch.cat(self.real))
            self._gram = self._gram_rows.view(2, n, 2, n).transpose(1, 2)
        return self._gram

    def gram_rows(self, anchors_only: bool = False) -> torch.Tensor:
        """The Gram as a (kr·N, 2N) matrix: rows [A; P] (or A only), columns [A; P]."""
        if anchors_only and self._gram is None:
            self.anchor_gram()
            return self._anchor_gram_rows
        self.gram
        return self._gram_rows

    def anchor_gram(self) -> torch.Tensor:
        """(1, 2, N, N): [A·Aᵀ, A·Pᵀ] only (half the matmul), for selections whose rows are the anchors."""
        if self._gram is not None:
            return self.gram[:1]
        if self._anchor_gram is None:
            n = self.n_classes
            anchors = self.real[0]
            self._anchor_gram_rows = anchors @ torch.cat(self.real).T
            self._anchor_gram = self._anchor_gram_rows.view(1, n, 2, n).transpose(1, 2)
        return self._anchor_gram

    def extend(self, coef: torch.Tensor) -> int:
        """Append sets given by (S', 2, N) coefficients (no squared norms); returns the first new index."""
        first = self.n_sets
        self.coef = torch.cat([self.coef, coef])
        return first

    def candidates(self, pairs: list[tuple[int, int]], anchors_only: bool = False) -> torch.Tensor:
        """(len(pairs), N, N) similarities X_s[i] · X_t[j], without autograd (for choosing).

        Rows of a real set are Gram row blocks; a synthetic row set costs two fused
        multiply-adds per Gram block, a synthetic column set two per pair (anchors_only: every
        row set must be the anchors).
        """
        with torch.enable_grad():  # cached for the recomputation with autograd, even when called under no_grad
            gram = (self.anchor_gram() if anchors_only else self.gram).detach()
        return candidates_from_gram(gram, self.coef.detach(), pairs)

    def grid_sims(self, row_sets: torch.Tensor | None, col_sets: torch.Tensor, anchors_only: bool = False) -> torch.Tensor:
        """X_r[i] · X_t[j] with autograd, r = row_sets[..., i, j], t = col_sets[..., i, j] (shape (..., N, N)).

        One autograd node with a closed-form backward (``symm.losses.grid``). ``row_sets=None``:
        batch b of ``col_sets`` (B, N, N) has the real set b as rows.
        """
        return grid_values(self.gram_rows(anchors_only), self.coef, None, row_sets, col_sets)

    def grid_sq_distances(self, row_sets: torch.Tensor | None, col_sets: torch.Tensor) -> torch.Tensor:
        """||X_r[i] − X_t[j]||² with autograd on the grid of chosen sets (as ``grid_sims``), before clamping."""
        return grid_values(self.gram_rows(), self.coef, self.sq_norms, row_sets, col_sets, scale=-2.0)

    def grid_sims_autograd(self, row_sets: torch.Tensor, col_sets: torch.Tensor, anchors_only: bool = False) -> torch.Tensor:
        """``grid_sims`` written with autograd (the reference the fused node is tested against)."""
        gram = self.anchor_gram() if anchors_only else self.gram
        n, kr = self.n_classes, gram.shape[0]
        classes = torch.arange(n, device=row_sets.device)
        # per entry, the chosen sets' coefficients (index_select: the cheapest gather with autograd here)
        by_source = self.coef.transpose(0, 1).reshape(2, -1)  # [k, s·N + i]
        row_coef = by_source[:kr].index_select(1, (row_sets * n + classes[:, None]).reshape(-1)).view(kr, *row_sets.shape)
        col_coef = by_source.index_select(1, (col_sets * n + classes).reshape(-1)).view(2, *col_sets.shape)
        # whole-tensor products: per-block slices of the Gram would each cost a full-size zero-fill in backward
        for _ in range(row_sets.dim() - 2):  # batch dims of the selection (views, no copy)
            gram = gram.unsqueeze(2)
        return (row_coef[:, None] * col_coef[None, :] * gram).sum((0, 1))

    def point_sims(self, row_sets: torch.Tensor, row_classes: torch.Tensor, col_sets: torch.Tensor, col_classes: torch.Tensor) -> torch.Tensor:
        """X_r[i] · X_t[j] with autograd for arbitrary matching index tensors (sparse selections)."""
        gram = self.gram[:, :, row_classes, col_classes]  # (2, 2, ...)
        row_coef = self.coef[row_sets, :, row_classes]
        col_coef = self.coef[col_sets, :, col_classes]
        gram = gram.movedim((0, 1), (-2, -1))  # (..., 2, 2)
        return (row_coef[..., :, None] * gram * col_coef[..., None, :]).sum((-2, -1))

    @property
    def sims(self) -> torch.Tensor:
        """All (S, S, N, N) blocks with autograd (reference form, for tests and analyses)."""
        return torch.einsum("ski,klij,tlj->stij", self.coef, self.gram, self.coef)

    def distances(self, squared: bool) -> torch.Tensor:
        """All (S, S, N, N) distances with autograd (reference form)."""
        sq = self.sq_norms
        return to_distance(sq[:, None, :, None] + sq[None, :, None, :] - 2 * self.sims, squared)


SQRT_CLAMP = 1e-12  # squared distances below this get no gradient through sqrt (finite for duplicate points)


def to_distance(sq_dist: torch.Tensor, squared: bool) -> torch.Tensor:
    sq_dist = sq_dist.clamp_min(0)
    return sq_dist if squared else sq_dist.clamp_min(SQRT_CLAMP).sqrt()


def _real_coef(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(2, dtype=like.dtype, device=like.device)[:, :, None].expand(2, 2, n)


def real_sets(anchors: torch.Tensor, positives: torch.Tensor) -> PointSets:
    sq_norms = torch.stack([anchors, positives]).pow(2).sum(-1)
    return PointSets((anchors, positives), _real_coef(anchors.shape[0], anchors), sq_norms, (anchors * positives).sum(1))


def symmetric_sets(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    alpha: float = 2.0,
    beta: float = 1.0,
    form: str = "paper",
    rescale_to_axis_norm: bool = False,
    eps: float = 1e-12,
    with_norms: bool = True,
) -> PointSets:
    """[A, P, S1, S2] with S1 = reflect(P, axes=A), S2 = reflect(A, axes=P).

    Same arithmetic as ``symm.synthesis.reflect`` (both forms, alpha, beta, the rescale),
    expressed as coefficients on the real points. ``with_norms=False`` skips the synthetic
    points' squared norms (logit losses never use them; ``sq_norms`` then holds the real ones).
    """
    if not rescale_to_axis_norm:  # one autograd node (the rescale keeps the autograd form)
        coef, sq_norms, ap = _SymmCoefficients.apply(anchors, positives, alpha, beta, form, eps, with_norms)
        return PointSets((anchors, positives), coef, sq_norms, ap)
    return symmetric_sets_autograd(anchors, positives, alpha, beta, form, rescale_to_axis_norm, eps, with_norms)


def symmetric_sets_autograd(anchors: torch.Tensor, positives: torch.Tensor, alpha: float = 2.0, beta: float = 1.0,
                            form: str = "paper", rescale_to_axis_norm: bool = False, eps: float = 1e-12,
                            with_norms: bool = True) -> PointSets:
    """``symmetric_sets`` written with autograd (the reference the fused coefficients are tested against)."""
    n = anchors.shape[0]
    sq = torch.stack([anchors, positives]).pow(2).sum(-1)  # [||a||², ||p||²]
    ap = (anchors * positives).sum(1)
    # reflect(x, axis) = own * x + along * axis; S1: x = p, axis = a; S2: x = a, axis = p
    own = beta * (1 - alpha) if form == "paper" else -beta
    axis_sq = sq.clamp_min(eps)
    along = (beta * alpha) * ap / axis_sq  # [along_s1, along_s2]
    synth_sq = own**2 * sq.flip(0) + along * (2 * own * ap + along * sq) if with_norms or rescale_to_axis_norm else None
    if rescale_to_axis_norm:
        scale = axis_sq.sqrt() / synth_sq.clamp_min(0).sqrt().clamp_min(eps)
        along, own_part, synth_sq = along * scale, own * scale, synth_sq * scale**2
    else:
        own_part = torch.full_like(along, own)
    # coefficient rows: S1 = (along_s1, own), S2 = (own, along_s2): own off the diagonal, along on it
    eye = torch.eye(2, dtype=anchors.dtype, device=anchors.device)[:, :, None]
    synth = own_part[:, None, :] + (along - own_part)[:, None, :] * eye
    coef = torch.cat([_real_coef(n, anchors), synth])
    return PointSets((anchors, positives), coef, torch.cat([sq, synth_sq]) if with_norms else sq, ap)


class _L2Normalize(torch.autograd.Function):
    """Rows divided by max(||row||, eps) — F.normalize(x, dim=1) — with a closed-form backward.

    autograd's form (norm, clamp, expand, div) records about ten kernels forward and backward;
    at the paper's batch on CPU they cost more than the Gram matmul. Backward:
    dx = (g − y·(g·y)) / ||x|| where ||x|| >= eps (the clamp passes), g / eps elsewhere.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        denom = norm.clamp_min(eps)
        y = x / denom
        ctx.save_for_backward(y, denom, norm >= eps)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        y, denom, passes = ctx.saved_tensors
        # row dot products without a full-size temporary (fresh ones cost page faults on CPU);
        # vecdot, not a batched (1 x d)(d x 1) matmul: 16 instead of 85 us at 128 x 512
        along = torch.linalg.vecdot(grad, y).unsqueeze(1).mul_(passes)  # no gradient below eps
        return torch.addcmul(grad, y, along, value=-1).div_(denom), None


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """F.normalize(x, dim=1) (same values) as one autograd node."""
    return _L2Normalize.apply(x, eps)


class _SymmCoefficients(torch.autograd.Function):
    """(anchors, positives) -> (coef (4, 2, N), squared norms (4 or 2, N), a·p) of [A, P, S1, S2], one node.

    The autograd form records ≈ 20 small vector ops and replays each in backward; at the
    paper's batch on CPU that is a quarter of a Symm distance loss. Backward in closed form:
    S1 = along_1·a + own·p, S2 = own·a + along_2·p with along_s = αβ·(a·p)/max(||axis_s||², eps)
    and ||S_s||² = own²·||x_s||² + along_s·(2·own·a·p + along_s·||axis_s||²).
    """

    @staticmethod
    def forward(ctx, anchors: torch.Tensor, positives: torch.Tensor, alpha: float, beta: float,  # type: ignore[override]
                form: str, eps: float, with_norms: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = anchors.shape[0]
        sq = torch.stack([anchors, positives]).pow(2).sum(-1)  # [||a||², ||p||²]
        ap = (anchors * positives).sum(1)
        own = beta * (1 - alpha) if form == "paper" else -beta
        axis_sq = sq.clamp_min(eps)
        along = (beta * alpha) * ap / axis_sq
        own_part = torch.full_like(along, own)
        eye = torch.eye(2, dtype=anchors.dtype, device=anchors.device)[:, :, None]
        coef = torch.cat([_real_coef(n, anchors), own_part[:, None, :] + (along - own_part)[:, None, :] * eye])
        if with_norms:
            synth_sq = own**2 * sq.flip(0) + along * (2 * own * ap + along * sq)
            sq_norms = torch.cat([sq, synth_sq])
        else:
            sq_norms = sq
        ctx.save_for_backward(anchors, positives, sq, ap, axis_sq, along)
        ctx.consts = (alpha * beta, own, eps, with_norms)
        return coef, sq_norms, ap

    @staticmethod
    @once_differentiable
    def backward(ctx, d_coef: torch.Tensor, d_sq_norms: torch.Tensor, d_ap: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        anchors, positives, sq, ap, axis_sq, along = ctx.saved_tensors
        alpha_beta, own, eps, with_norms = ctx.consts
        d_sq = d_sq_norms[:2].clone()
        d_ap = d_ap.clone()
        d_along = torch.stack([d_coef[2, 0], d_coef[3, 1]])  # along_s is S_s's coefficient on its axis
        if with_norms:
            d_synth = d_sq_norms[2:]
            d_along += d_synth * (2 * own * ap + 2 * along * sq)
            d_ap += (2 * own) * (d_synth * along).sum(0)
            d_sq += d_synth * along * along + (own * own) * d_synth.flip(0)
        d_ap += (alpha_beta * d_along / axis_sq).sum(0)
        d_sq -= d_along * along / axis_sq * (sq >= eps)  # the clamp passes no gradient below eps
        d_anchors = torch.addcmul(d_ap[:, None] * positives, (2 * d_sq[0])[:, None], anchors)
        d_positives = torch.addcmul(d_ap[:, None] * anchors, (2 * d_sq[1])[:, None], positives)
        return d_anchors, d_positives, None, None, None, None, None
