"""Optimiser/schedule builder: the built torch objects, checked against torch's documented semantics
and a hand re-derivation of coupled L2 weight decay (gradient of λ/2·‖w‖², tf.nn.l2_loss convention)."""
import pytest
import torch

from symm.config import OptimizerConfig
from symm.optim import build_optimizer, build_scheduler


def _lrs(cfg, steps):
    w = torch.nn.Parameter(torch.zeros(3))
    opt = build_optimizer([w], cfg)
    sched = build_scheduler(opt, cfg)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        w.grad = torch.ones_like(w)
        opt.step()
        sched.step()
    return out


def test_step_schedule_halves_every_n_steps_and_constant_stays():
    lrs = _lrs(OptimizerConfig(lr=1e-4, schedule={"name": "step", "every": 3, "gamma": 0.5}), 9)
    assert lrs == pytest.approx([1e-4] * 3 + [5e-5] * 3 + [2.5e-5] * 3)
    assert _lrs(OptimizerConfig(lr=1e-3), 5) == pytest.approx([1e-3] * 5)


def test_coupled_weight_decay_equals_an_l2_term_in_the_loss():
    """Reference: Adam on loss + λ/2·‖w‖² with no decay == Adam(weight_decay=λ) on the loss."""
    torch.manual_seed(0)
    x, start, lam = torch.randn(8, 4), torch.randn(4), 5e-3
    a, b = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    opt_a = build_optimizer([a], OptimizerConfig(lr=1e-2, weight_decay=lam))
    opt_b = build_optimizer([b], OptimizerConfig(lr=1e-2))
    for _ in range(5):
        for p, opt, extra in ((a, opt_a, 0.0), (b, opt_b, lam / 2 * (b ** 2).sum())):
            opt.zero_grad()
            ((x @ p).pow(2).mean() + extra).backward()
            opt.step()
    torch.testing.assert_close(a, b)


def test_builds_the_named_optimiser_with_its_settings():
    p = [torch.nn.Parameter(torch.zeros(2))]
    adamw = build_optimizer(p, OptimizerConfig(lr=1e-3, weight_decay=0.01, weight_decay_mode="decoupled"))
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["weight_decay"] == 0.01
    rms = build_optimizer(p, OptimizerConfig(name="rmsprop", lr=1e-6, momentum=0.9, weight_decay=1e-4))
    assert type(rms) is torch.optim.RMSprop
    assert (rms.defaults["lr"], rms.defaults["momentum"], rms.defaults["weight_decay"]) == (1e-6, 0.9, 1e-4)
    sgd = build_optimizer([{"params": p, "lr": 0.5}], OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, nesterov=True))
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["lr"] == 0.5 and sgd.defaults["nesterov"]


def test_scheduler_state_round_trips():
    cfg = OptimizerConfig(lr=1.0, schedule={"name": "step", "every": 2, "gamma": 0.5})
    w = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([w], cfg)
    sched = build_scheduler(opt, cfg)
    for _ in range(3):
        opt.step()
        sched.step()
    w2 = torch.nn.Parameter(torch.zeros(1))
    opt2 = build_optimizer([w2], cfg)
    sched2 = build_scheduler(opt2, cfg)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    opt2.step()
    sched2.step()
    opt.step()
    sched.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 0.25
