"""DAML and HDML (method.md §6): every term against a numpy re-derivation, optimiser wiring,
running means, short glyph runs and exact resume.

References: numpy re-derivations of the formulas in method.md §6 and of the released code's
arithmetic (wzzheng/HDML; the DAML Chainer release), written independently of symm/methods;
torch.autograd for the expected gradients of each loss; Adam's first-step size (|Δθ| = lr for
every parameter with a non-zero gradient) for the learning rates.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from symm.config import EvalConfig, ModelConfig, OptimizerConfig, TrainConfig
from symm.methods import DAMLMethod, HDMLMethod, create_method
from symm.methods.base import RunningMean
from symm.methods.daml import DAMLGenerator
from symm.methods.hdml import HDMLGenerator, hardness_aware_pull

LABELS = torch.tensor([7, 3, 7, 5, 3, 5])  # anchors 7@0, 3@1, 5@3; positives 7@2, 3@4, 5@5
ORDER = [0, 1, 3, 2, 4, 5]
N = 3


class Toy(nn.Module):
    """model.features -> pooled 'backbone' features; model.embedding -> the linear head."""

    def __init__(self, in_dim: int = 5, feature_dim: int = 6, embedding_dim: int = 4) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.backbone = nn.Linear(in_dim, feature_dim)
        self.embedding = nn.Linear(feature_dim, embedding_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.features(x))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _ce(logits: np.ndarray, target: np.ndarray) -> float:
    shifted = logits - logits.max(1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return float(-logp[np.arange(len(target)), target].mean())


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _lin(x: np.ndarray, layer: nn.Linear) -> np.ndarray:
    return x @ _np(layer.weight).T + _np(layer.bias)


def _setup(method, seed: int = 0):
    torch.manual_seed(seed)
    model = Toy().double()
    images = torch.randn(6, 5, dtype=torch.float64)
    method.setup(model, total_steps=10, train_labels=torch.tensor([3, 5, 7, 9]))
    method.double()
    method.configure_optimizers(model, OptimizerConfig(lr=1e-3))
    return model, images


def _numpy_pull(anchor, positive, negative, j_avg, alpha):
    d_pos = np.linalg.norm(anchor - positive, axis=-1)
    d_neg = np.linalg.norm(anchor - negative, axis=-1)
    lam = np.where(d_pos < d_neg, (d_pos + (d_neg - d_pos) * np.exp(-alpha / j_avg)) / d_neg, 1.0)
    return anchor + lam[..., None] * (negative - anchor), lam


# ------------------------------------------------------------------------------ HDML: λ0, pull


@pytest.mark.parametrize("j_avg", [1e6, 0.5, 3.0])  # 1e6: the release's start value, before any window is full
def test_lambda0_and_pulled_negative_match_numpy(j_avg):
    gen = torch.Generator().manual_seed(1)
    anchor, positive, negative = (torch.randn(40, 5, generator=gen, dtype=torch.float64) for _ in range(3))
    negative[:5] = anchor[:5] + 0.1 * (negative[:5] - anchor[:5])  # d⁺ ≥ d⁻: must stay unpulled
    pulled, lam, mask = hardness_aware_pull(anchor, positive, negative, j_avg, alpha=7.0)
    ref_pulled, ref_lam = _numpy_pull(_np(anchor), _np(positive), _np(negative), j_avg, 7.0)
    np.testing.assert_allclose(_np(lam), ref_lam, rtol=1e-12)
    np.testing.assert_allclose(_np(pulled), ref_pulled, rtol=1e-12, atol=1e-12)
    d_pos, d_neg = (np.linalg.norm(_np(anchor) - _np(x), axis=1) for x in (positive, negative))
    assert mask.tolist() == (d_pos < d_neg).tolist() and not mask[:5].any() and mask.any()
    np.testing.assert_array_equal(_np(pulled)[:5], _np(negative)[:5])  # ẑ⁻ = z⁻ exactly
    # the pulled negative lies at distance d⁺ + (d⁻ − d⁺)e^(−α/J_avg) from the anchor
    got = np.linalg.norm(_np(pulled) - _np(anchor), axis=1)[~d_neg.__le__(d_pos)]
    want = (d_pos + (d_neg - d_pos) * math.exp(-7.0 / j_avg))[~d_neg.__le__(d_pos)]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    if j_avg == 1e6:
        assert np.abs(ref_lam - 1).max() < 1e-4  # "starts very large so nothing is pulled at first"


def test_running_mean_refreshes_once_per_window_and_skips_nan():
    mean = RunningMean(window=3, initial=1e6)
    seen = []
    for value in [1.0, 2.0, float("nan"), 3.0, 10.0, 20.0, 30.0, 5.0]:
        seen.append(mean.read())
        mean.update(value)
    assert seen == [1e6, 1e6, 1e6, 1e6, 2.0, 2.0, 2.0, 20.0]
    clone = RunningMean(3, 1e6)
    clone.load_state_dict(mean.state_dict())
    clone.update(6.0), mean.update(6.0)
    assert clone.read() == mean.read()


@pytest.mark.parametrize("variant", ["released", "paper"])
def test_hdml_running_means_follow_the_schedule(variant):
    method = HDMLMethod("npair", variant=variant, window=2, beta=50.0, alpha=3.0)
    model, images = _setup(method)
    logs = [method.training_step(model, images, LABELS, step) for step in range(6)]
    for step in range(6):
        window = (step // 2) * 2 - 2  # the last full window before this step
        if step < 2:
            assert logs[step]["j_avg"] == 1e6 and logs[step]["j_gen_avg"] == 1e6
            continue
        metric = [logs[s]["j_real"] * (logs[s]["real_weight"] if variant == "released" else 1.0) for s in (window, window + 1)]
        assert logs[step]["j_avg"] == pytest.approx(np.mean(metric), rel=1e-12)
        assert logs[step]["j_gen_avg"] == pytest.approx(np.mean([logs[s]["j_gen"] for s in (window, window + 1)]), rel=1e-12)
        assert logs[step]["real_weight"] == pytest.approx(math.exp(-50.0 / logs[step]["j_gen_avg"]), rel=1e-12)
    assert logs[0]["lambda0"] == pytest.approx(1.0, abs=1e-5) and logs[5]["lambda0"] < 0.999  # pulled once J_avg exists


# -------------------------------------------------------------------------------- shapes


def test_generator_shapes():
    assert HDMLGenerator(16, 96, hidden_dim=512)(torch.randn(7, 16)).shape == (7, 96)
    hdml = HDMLGenerator(16, 96)
    assert [type(m) for m in hdml] == [nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Linear]
    assert (hdml[0].in_features, hdml[0].out_features, hdml[3].out_features) == (16, 512, 96)
    daml = DAMLGenerator(16)
    assert daml(torch.randn(5, 16), torch.randn(5, 16), torch.randn(5, 16)).shape == (5, 16)
    assert (daml[0].in_features, daml[0].out_features, daml[2].out_features) == (48, 16, 16)


# ------------------------------------------------------------------------ HDML: each term


def _numpy_generator(x: np.ndarray, gen: HDMLGenerator) -> np.ndarray:
    h = np.maximum(_lin(x, gen[0]), 0)
    h = (h - h.mean(0)) / np.sqrt(h.var(0) + gen[2].eps) * _np(gen[2].weight) + _np(gen[2].bias)
    return _lin(h, gen[3])


@pytest.mark.parametrize("base_loss", ["npair", "triplet"])
@pytest.mark.parametrize("variant", ["released", "paper"])
def test_hdml_terms_match_numpy(base_loss, variant):
    method = HDMLMethod(base_loss, variant=variant, alpha=3.0, beta=1e4)
    model, images = _setup(method)
    method.j_avg.mean, method.j_gen.mean = 2.0, 5e3  # as if a window had been collected
    terms = method.losses(model, images, LABELS)

    feats = np.tanh(_lin(_np(images), model.backbone))[ORDER]
    z = _lin(feats, model.embedding)
    cls = np.searchsorted([3, 5, 7, 9], LABELS.numpy()[ORDER])
    n = N
    if base_loss == "npair":
        a, p = z[:n], z[n:]
        pulled, lam = _numpy_pull(np.repeat(a[:, None], n, 1), np.repeat(p[:, None], n, 1), np.repeat(p[None], n, 0), 2.0, 3.0)
        y = _numpy_generator(np.concatenate([z, a, pulled.reshape(n * n, -1)]), method.generator)
        y_syn = y[2 * n:]
        logits = _lin(y_syn, method.classifier)
        ce = _ce(logits[n:], np.tile(cls[n:], n)) + _ce(logits[:n], cls[:n])
        zq = _lin(y_syn, model.embedding)
        zq_anc, zq_neg = zq[:n], zq[n:].reshape(n, n, -1)
        rows = np.einsum("id,ijd->ij", zq_anc, zq_neg)
        j_syn = _ce(rows, np.arange(n)) + 0.002 / 4 * ((zq_anc**2).sum(1).mean() + (zq_neg**2).sum(-1).mean())
        j_real = _ce(a @ p.T, np.arange(n)) + 0.002 / 4 * ((a**2).sum(1).mean() + (p**2).sum(1).mean())
        lam = lam[~np.eye(n, dtype=bool)]
    else:
        pts = np.arange(2 * n)
        u, w = np.nonzero(pts[:, None] % n != pts[None, :] % n)
        v = (u + n) % (2 * n)
        pulled, lam = _numpy_pull(z[u], z[v], z[w], 2.0, 3.0)
        y = _numpy_generator(np.concatenate([z, z, pulled]), method.generator)
        y_syn = y[2 * n:]
        ce = _ce(_lin(y_syn, method.classifier), np.concatenate([cls, cls[w]]))
        zq = _unit(_lin(y_syn, model.embedding))
        zq_pts, zq_neg = zq[: 2 * n], zq[2 * n:]
        hinge = lambda x, q, r: np.maximum(((x - q) ** 2).sum(1) - ((x - r) ** 2).sum(1) + 0.2, 0).mean()  # noqa: E731
        j_syn = hinge(zq_pts[u], zq_pts[v], zq_neg)
        zn = _unit(z)
        j_real = hinge(zn[u], zn[v], zn[w])
    recon = y[: 2 * n]
    if variant == "released":
        j_recon, j_soft = 0.5 * ((recon - feats) ** 2).sum(), 1e4 * 0.5 * ce
    else:
        j_recon, j_soft = ((recon - feats) ** 2).sum(1).mean(), 0.5 * ce
    weight = math.exp(-1e4 / 5e3)
    expected = {"j_real": j_real, "j_syn": j_syn, "j_recon": j_recon, "j_soft": j_soft, "j_gen": j_recon + j_soft,
                "j_metric": weight * j_real + (1 - weight) * j_syn, "real_weight": weight,
                "classifier_ce": _ce(_lin(feats, method.classifier), cls)}
    for key, value in expected.items():
        assert float(terms[key].detach() if torch.is_tensor(terms[key]) else terms[key]) == pytest.approx(value, rel=1e-9), key
    np.testing.assert_allclose(_np(terms["lambda0"]), lam, rtol=1e-10)


# ------------------------------------------------------------------------ DAML: each term


def _numpy_daml_generator(x: np.ndarray, gen: DAMLGenerator) -> np.ndarray:
    return np.maximum(_lin(np.maximum(_lin(x, gen[0]), 0), gen[2]), 0)


@pytest.mark.parametrize("base_loss", ["npair", "triplet"])
def test_daml_terms_match_numpy(base_loss):
    method = DAMLMethod(base_loss, lambda1=0.7, lambda2=2.0, adv_margin=0.3)
    model, images = _setup(method)
    with torch.no_grad():  # the release's N(0, 0.02) init leaves most ReLUs at 0: widen it for the test
        for layer in (method.generator[0], method.generator[2]):
            layer.weight.normal_(0, 0.7)
            layer.bias.uniform_(0, 0.3)
    terms = method.losses(model, images, LABELS)
    z = _lin(np.tanh(_lin(_np(images), model.backbone)), model.embedding)[ORDER]
    n = N
    if base_loss == "npair":
        a, p = z[:n], z[n:]
        rows, cols = np.nonzero(~np.eye(n, dtype=bool))
        anchor, positive, negative = a[rows], p[rows], p[cols]
        fake = _numpy_daml_generator(np.concatenate([anchor, positive, negative], 1), method.generator)
        cand = np.repeat(p[None], n, 0)
        cand[rows, cols] = fake
        j_m = _ce(np.einsum("id,ijd->ij", a, cand), np.arange(n)) + 0.002 / 4 * ((a**2).sum(1).mean() + (p**2).sum(1).mean())
        fake_metric = fake
    else:
        x = _unit(z)
        pts = np.arange(2 * n)
        u, w = np.nonzero(pts[:, None] % n != pts[None, :] % n)
        anchor, positive, negative = x[u], x[(u + n) % (2 * n)], x[w]
        fake = _numpy_daml_generator(np.concatenate([anchor, positive, negative], 1), method.generator)
        fake_metric = _unit(fake)
        j_m = np.maximum(((anchor - positive) ** 2).sum(1) - ((anchor - fake_metric) ** 2).sum(1) + 0.2, 0).mean()
    assert (fake > 0).mean() > 0.3  # the check is not vacuous
    j_hard = ((fake - anchor) ** 2).sum(1).mean()
    j_reg = ((fake - negative) ** 2).sum(1).mean()
    j_adv = np.maximum(((fake_metric - anchor) ** 2).sum(1) - ((positive - anchor) ** 2).sum(1) - 0.3, 0).mean()
    expected = {"j_m": j_m, "j_hard": j_hard, "j_reg": j_reg, "j_adv": j_adv, "j_gen": j_hard + 0.7 * j_reg + 2.0 * j_adv}
    for key, value in expected.items():
        assert float(terms[key].detach() if torch.is_tensor(terms[key]) else terms[key]) == pytest.approx(value, rel=1e-9), key
    assert j_adv > 0


# ------------------------------------------------------------------------ optimiser wiring


def _grads(loss, params):
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True), params)]


@pytest.mark.parametrize("base_loss", ["npair", "triplet"])
def test_hdml_each_module_is_stepped_by_its_own_loss(base_loss):
    method = HDMLMethod(base_loss, alpha=3.0, beta=1e4)
    model, images = _setup(method)
    method.j_avg.mean, method.j_gen.mean = 2.0, 5e3
    terms = method.losses(model, images, LABELS)
    metric, gen, cls = list(model.parameters()), list(method.generator.parameters()), list(method.classifier.parameters())
    want = {"metric": _grads(terms["j_metric"], metric), "gen": _grads(terms["j_gen"], gen), "cls": _grads(terms["classifier_ce"], cls)}
    leak = _grads(terms["j_metric"], gen)  # the metric loss does reach the generator in the graph...
    assert max(g.abs().max() for g in leak) > 1e-8
    before = [p.detach().clone() for p in metric + gen + cls]
    method.training_step(model, images, LABELS, step=0)
    for name, params in (("metric", metric), ("gen", gen), ("cls", cls)):
        for param, grad in zip(params, want[name]):  # ...but only J_gen's gradient is applied to it
            torch.testing.assert_close(param.grad, grad, rtol=1e-9, atol=1e-12)
    moved = [not torch.equal(b, p) for b, p in zip(before, metric + gen + cls)]
    assert all(moved)
    # learning rates: metric = the recipe's, generator 1e-2, classifier 1e-3 (fixed, no weight decay)
    assert [method.optimizers.lr(k) for k in ("metric", "generator", "classifier")] == [1e-3, 1e-2, 1e-3]
    step = [(p - b).abs().max().item() for b, p in zip(before, metric + gen + cls)]
    assert max(step[len(metric):len(metric) + len(gen)]) == pytest.approx(1e-2, rel=1e-3)
    assert max(step[-len(cls):]) == pytest.approx(1e-3, rel=1e-3)


@pytest.mark.parametrize("update", ["joint", "separate"])
def test_daml_phases_learning_rates_and_gradients(update):
    method = DAMLMethod("npair", update=update, warmup_steps=1)
    model, images = _setup(method)
    backbone, head, gen = list(model.backbone.parameters()), list(model.embedding.parameters()), list(method.generator.parameters())

    def deltas(step):
        before = [p.detach().clone() for p in backbone + head + gen]
        logs = method.training_step(model, images, LABELS, step)
        after = [p.detach() for p in backbone + head + gen]
        d = [(a - b).abs().max().item() for a, b in zip(after, before)]
        return logs, max(d[: len(backbone)]), max(d[len(backbone): len(backbone) + len(head)]), max(d[-len(gen):])

    logs, d_backbone, d_head, d_gen = deltas(0)  # warm-up: the metric alone at the recipe's lr
    assert logs["joint_phase"] == 0.0 and d_gen == 0.0
    assert d_backbone == pytest.approx(1e-3, rel=1e-3) and d_head == pytest.approx(1e-3, rel=1e-3)

    with torch.no_grad():
        for layer in (method.generator[0], method.generator[2]):
            layer.weight.normal_(0, 0.7)
    terms = method.losses(model, images, LABELS)
    total = terms["j_m"] + terms["j_gen"]
    want_gen = _grads(total if update == "joint" else terms["j_gen"], gen)
    want_metric = _grads(total if update == "joint" else terms["j_m"], backbone + head)
    assert max(g.abs().max() for g in _grads(terms["j_m"], gen)) > 1e-8  # so 'joint' and 'separate' really differ
    logs, d_backbone, d_head, d_gen = deltas(1)  # joint: fresh Adam per group; first step moves by exactly its lr
    assert logs["joint_phase"] == 1.0
    assert d_backbone == pytest.approx(1e-6, rel=1e-3)  # backbone lr/1000
    assert d_head == pytest.approx(1e-3, rel=1e-3)  # head lr
    assert d_gen == pytest.approx(1e-4, rel=1e-3)  # generator lr/10
    for param, grad in zip(gen + backbone + head, want_gen + want_metric):
        torch.testing.assert_close(param.grad, grad, rtol=1e-9, atol=1e-12)


def test_daml_warmup_is_a_fraction_of_training():
    method = DAMLMethod("triplet")
    method.setup(Toy(), total_steps=400, train_labels=LABELS)
    assert method.warmup_steps == 80 and method.phase(79) == "warmup" and method.phase(80) == "joint"


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="base_loss"):
        create_method("hdml", base_loss="lifted")
    with pytest.raises(ValueError, match="variant"):
        create_method("hdml", variant="paperish")
    with pytest.raises(ValueError, match="preset"):
        create_method("hdml", preset="mnist")
    with pytest.raises(ValueError, match="update"):
        create_method("daml", update="alternate")
    with pytest.raises(ValueError, match="unknown option"):
        create_method("daml", base_loss="triplet", marginn=0.1)
    assert create_method("hdml", preset="cub").beta == 5e3 and create_method("hdml", base_loss="triplet").alpha == 7.0


# ------------------------------------------------------------------- trainer: glyphs, resume


def _train(data, spec, steps, seed=0, **kw):
    from symm.training import train_trial

    return train_trial(
        method_spec=spec, model_cfg=ModelConfig(backbone="small_cnn", embedding_dim=kw.pop("embedding_dim", 16),
                                                options={"width": kw.pop("width", 8)}),
        train_cfg=TrainConfig(steps=steps, eval_every=kw.pop("eval_every", steps), optimizer=OptimizerConfig(lr=kw.pop("lr", 2e-3)),
                              classes_per_batch=kw.pop("classes_per_batch", 4), augmentation="affine" if kw.pop("augment", True) else "none"),
        eval_cfg=EvalConfig(ks=[1], batch_size=512), data=data, seed=seed, **kw,
    )


SPECS = {  # the params.yaml entries' defaults (release settings)
    "daml_triplet": {"kind": "daml", "options": {"base_loss": "triplet"}},
    "daml_npair": {"kind": "daml", "options": {"base_loss": "npair"}},
    "hdml_triplet": {"kind": "hdml", "options": {"base_loss": "triplet"}},
    "hdml_npair": {"kind": "hdml", "options": {"base_loss": "npair"}},
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_short_glyph_run_beats_the_untrained_model(glyphs, name, one_torch_thread):
    from symm.evaluation import evaluate
    from symm.models import create_model
    from symm.training import embed, seed_everything

    seed_everything(0)  # the same initial weights train_trial starts from
    untrained = create_model("small_cnn", embedding_dim=16, in_channels=1, width=8)
    before = evaluate(embed(untrained, glyphs["test"][0], 512), glyphs["test"][1], ks=[1], seed=0)["recall_at_1"]
    result = _train(glyphs, SPECS[name], steps=400, eval_every=200, classes_per_batch=16, lr=5e-3, augment=False)
    assert result.test["recall_at_1"] > before + 0.01, (name, before, result.test["recall_at_1"])
    assert result.history[-1]["train"]["lr"] > 0


@pytest.mark.parametrize("spec", [
    {"kind": "daml", "options": {"base_loss": "npair", "warmup_steps": 4}},
    {"kind": "hdml", "options": {"base_loss": "npair", "window": 3}},
], ids=["daml", "hdml"])
def test_stop_and_resume_equals_uninterrupted(digits, spec, one_torch_thread):
    saved = {}
    straight = _train(digits, spec, steps=16, eval_every=8,
                      on_eval=lambda e: saved.setdefault(e.step, e.checkpoint()) if e.step == 8 else None)
    state = saved[8]["method"]
    assert "generator.0.weight" in state["modules"] and state["optimizers"]["optimizers"]
    if spec["kind"] == "hdml":  # mid-window: the partial window must travel with the checkpoint
        assert len(state["running"]["j_avg"]["values"]) == 8 % 3 and state["running"]["j_avg"]["mean"] != 1e6
    resumed = _train(digits, spec, steps=16, eval_every=8, resume_state=saved[8])
    assert resumed.history == straight.history
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)


def test_hdml_trains_under_the_bf16_and_channels_last_switches(digits, one_torch_thread):
    """HDML calls model.features / model.embedding itself: the GPU switches' wrapper must expose
    both (reference: the same trial with the switches off runs; here only finiteness and that the
    backbone moved, since bf16 changes the arithmetic)."""
    from symm.training import train_trial

    spec = {"kind": "hdml", "options": {"base_loss": "npair", "window": 3}}
    cfg = TrainConfig(steps=4, eval_every=4, optimizer=OptimizerConfig(lr=2e-3), classes_per_batch=4,
                      augmentation="none", amp=True)
    model_cfg = ModelConfig(backbone="small_cnn", embedding_dim=16, options={"width": 8})
    result = train_trial(method_spec=spec, model_cfg=model_cfg, train_cfg=cfg, eval_cfg=EvalConfig(ks=[1], batch_size=512),
                         data=digits, seed=0, channels_last=True)
    assert all(math.isfinite(v) for v in result.history[-1]["train"].values())
    assert result.model.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
