"""The trainer on prepared image benchmarks, the recipes, on-disk checkpoints and the GPU switches.

References: the paper recipe's values as documented in /work/shared/method.md §7 (Adam 1e-4 halved
every 5,000 steps, coupled weight decay 5e-3 on all weights, 64 classes × 2, 227 px) checked on the
*built* torch objects; exact resume is checked against an uninterrupted run of the same seed
(bit-identical parameters on CPU); the bf16 check reads the dtype torch's own autocast produced.
Data: symm.data.fakes' tiny CUB-200-2011 layout, prepared into the packed format.
"""
import copy
from pathlib import Path

import pytest
import torch
import yaml

from symm import checkpoint as ckpt
from symm.config import EvalConfig, ModelConfig, OptimizerConfig, TrainConfig, parse_science_params
from symm.data.build import prepare_from_settings
from symm.data.fakes import make_fake_cub
from symm.data.trial import PackedData, make_sampler, model_input_preset, open_prepared
from symm.methods import create_method
from symm.models import create_model
from symm.training import build_runner, train_trial

REPO = Path(__file__).resolve().parent.parent
METHOD = {"kind": "metric_loss", "options": {"loss": "npair", "negatives": "symm", "symm_mode": "official"}}
SMALL = ModelConfig(backbone="small_cnn", embedding_dim=8, options={"width": 4})

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def params(**top):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.update(top)
    return raw


# ------------------------------------------------------------------------------------- recipes


def test_paper_recipe_builds_the_documented_optimiser_schedule_and_weight_decay():
    science = parse_science_params(params(recipe="paper", datasets=["cub"], sweep={
        **params()["sweep"], "datasets": ["cub"]}))
    assert (science.model.backbone, science.model.embedding_dim, science.model.pretrained) == ("googlenet", 512, "imagenet")
    assert (science.train.steps, science.train.classes_per_batch, science.train.images_per_class) == (10_000, 64, 2)
    assert science.train.augmentation == "official"
    model = create_model("small_cnn", embedding_dim=8, width=4)  # the optimiser does not depend on the backbone
    method = create_method("metric_loss", loss="npair", negatives="symm")
    method.configure_optimizers(model, science.train.optimizer)
    opt, sched = method.optimizer, method.scheduler
    assert type(opt) is torch.optim.Adam  # coupled: Adam's L2-in-the-gradient, not AdamW
    assert opt.defaults["lr"] == 1e-4 and opt.defaults["weight_decay"] == 5e-3
    covered = {id(p) for g in opt.param_groups for p in g["params"]}
    assert covered == {id(p) for p in model.parameters()}  # all weights, biases and BN too
    assert all(g["weight_decay"] == 5e-3 for g in opt.param_groups)
    assert isinstance(sched, torch.optim.lr_scheduler.StepLR) and (sched.step_size, sched.gamma) == (5000, 0.5)
    lrs = {}
    for step in range(10_000):
        lrs[step] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    assert lrs[0] == lrs[4999] == 1e-4 and lrs[5000] == lrs[9999] == pytest.approx(5e-5)
    assert model_input_preset("official").train.size == 227
    assert method.loss.reg_lambda == 0.002  # the paper's L2 embedding term: the N-pair loss's default


def test_mlrc_recipe_builds_rmsprop_and_frozen_bn():
    raw = params(recipe="mlrc")
    raw["sweep"] = {**raw["sweep"], "datasets": ["cub"]}
    raw["datasets"] = ["cub"]
    raw["sweep"]["methods"] = ["npair", "symm_npair", "triplet", "symm_triplet"]  # DAML/HDML need 2 per class
    science = parse_science_params(raw)
    assert (science.train.classes_per_batch, science.train.images_per_class) == (8, 4)  # 32 images, as MLRC
    assert (science.model.backbone, science.model.embedding_dim, science.model.freeze_bn) == ("bn_inception", 128, True)
    method = create_method("metric_loss", loss="npair")
    method.configure_optimizers(create_model("small_cnn", embedding_dim=4, width=2), science.train.optimizer)
    assert type(method.optimizer) is torch.optim.RMSprop and method.optimizer.defaults["lr"] == 1e-6
    assert science.train.augmentation == "standard"


# ------------------------------------------------------------------------------- real-data path


@pytest.fixture(scope="module")
def fake_cub(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    info = make_fake_cub(raw, classes=(1, 2, 3, 4, 5, 6, 101, 102, 103, 104), per_class=4, defects=False)
    out = tmp_path_factory.mktemp("cub")
    prepare_from_settings("cub", out, {"short_side": 40, "val_classes": 2, "seed": 0, "storage": "raw"},
                          root=info.root, workers=1, progress=False)
    return out


def train_cfg(steps, **kw):
    return TrainConfig(steps=steps, eval_every=2, classes_per_batch=2, augmentation=kw.pop("augmentation", "official"),
                       optimizer=OptimizerConfig(lr=1e-3, weight_decay=5e-3, schedule={"name": "step", "every": 3}), **kw)


def run_packed(fake_cub, steps, workers=1, **kw):
    data = open_prepared(fake_cub, kw.pop("augmentation", "official"), num_workers=workers)
    return train_trial(method_spec=METHOD, model_cfg=SMALL, train_cfg=train_cfg(steps, augmentation=data.preset.name),
                       eval_cfg=EvalConfig(ks=[1, 2], batch_size=8), data=data, seed=0, **kw)


def test_trains_on_a_packed_benchmark_with_the_official_augmentation(fake_cub):
    data = open_prepared(fake_cub, "official", num_workers=0)
    assert isinstance(data, PackedData) and data.in_channels == 3
    shapes = []
    loader = data.train_loader(make_sampler(data.train_labels, 2, 2, 0), steps=1, seed=0, device=torch.device("cpu"))
    for images, labels in loader:
        shapes.append(tuple(images.shape))
        assert labels[0] == labels[1] and labels[2] == labels[3] and labels[0] != labels[2]  # N-pair batch
        assert -3 < float(images.mean()) < 3  # ImageNet-normalised, not caffe-style 0..255
    assert shapes == [(4, 3, 227, 227)]
    result = run_packed(fake_cub, 4, workers=0)
    assert [h["step"] for h in result.history] == [2, 4] and result.selection == "validation"
    assert {"recall_at_1", "nmi", "map_at_r"} <= set(result.test)
    assert all("test_diagnostic" not in h for h in result.history)  # test used once, at the end


def test_four_per_class_batches_train_on_a_packed_benchmark(fake_cub):
    """The mlrc batch shape (m = 4) through the packed loader and the standard augmentation."""
    data = open_prepared(fake_cub, "standard", num_workers=0)
    loader = data.train_loader(make_sampler(data.train_labels, 2, 4, 0), steps=1, seed=0, device=torch.device("cpu"))
    (images, labels), = list(loader)
    assert tuple(images.shape) == (8, 3, 224, 224) and labels[:4].unique().numel() == 1 and labels[0] != labels[4]
    cfg = train_cfg(2, augmentation="standard", images_per_class=4)
    result = train_trial(method_spec=METHOD, model_cfg=SMALL, train_cfg=cfg, eval_cfg=EvalConfig(ks=[1], batch_size=8),
                         data=data, seed=0)
    assert [h["step"] for h in result.history] == [2] and 0.0 <= result.history[-1]["train"]["synthetic_share"] <= 1.0


def test_resume_from_a_checkpoint_file_is_exact_on_packed_data(fake_cub, tmp_path):
    """k steps, crash after the checkpoint, resume to 2k == 2k uninterrupted (bit-identical parameters)."""
    straight = run_packed(fake_cub, 4)

    class Crash(Exception):
        pass

    def save_then_crash(event):
        ckpt.save_checkpoint(event.checkpoint(), tmp_path / "state.pt")
        raise Crash

    with pytest.raises(Crash):
        run_packed(fake_cub, 4, on_eval=save_then_crash)  # stops at step 2
    state = ckpt.load_checkpoint(tmp_path / "state.pt")
    assert state["step"] == 2 and state["loader"]["step"] == 2
    resumed = run_packed(fake_cub, 4, resume_state=state)
    assert resumed.history == straight.history and resumed.test == straight.test
    for key, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


# --------------------------------------------------------------------------------- checkpoints


def test_interrupted_checkpoint_write_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    ckpt.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def crash_midway(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        f.truncate(f.tell() // 2)  # half the bytes are on disk, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = ckpt.load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]  # no temp file left behind
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")


# -------------------------------------------------------------------------------- GPU switches


def test_gpu_switches_are_off_by_default():
    from pipelines.settings import ExecutionSettings

    science = parse_science_params(params())
    assert science.train.amp is False
    assert ExecutionSettings().channels_last is False and ExecutionSettings().compile is False
    model = create_model("small_cnn", embedding_dim=4, width=2)
    assert build_runner(model) is model  # the default path calls the model itself


def test_bf16_autocast_and_channels_last_on_cpu():
    torch.manual_seed(0)
    model = create_model("small_cnn", embedding_dim=4, in_channels=3, width=2)
    x = torch.randn(2, 3, 16, 16)
    reference = model(x)
    seen = []
    model.features[0][0].register_forward_hook(lambda m, i, o: seen.append((o.dtype, o.is_contiguous(memory_format=torch.channels_last))))
    runner = build_runner(copy.deepcopy(model), amp=True, channels_last=True)
    runner.model.features[0][0].register_forward_hook(lambda m, i, o: seen.append((o.dtype, o.is_contiguous(memory_format=torch.channels_last))))
    out = runner(x)
    assert out.dtype == torch.float32  # the loss sees fp32
    assert seen[-1] == (torch.bfloat16, True)  # the conv ran in bf16 on NHWC
    torch.testing.assert_close(out, reference, rtol=0.05, atol=0.05)  # bf16 precision
    assert runner.model.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert isinstance(build_runner(create_model("small_cnn", embedding_dim=4, width=2), compile=True),
                      torch._dynamo.eval_frame.OptimizedModule)


def test_amp_training_step_runs_on_cpu(fake_cub):
    data = open_prepared(fake_cub, "standard", num_workers=0)
    cfg = train_cfg(2, augmentation="standard", amp=True)
    result = train_trial(method_spec=METHOD, model_cfg=SMALL, train_cfg=cfg, eval_cfg=EvalConfig(ks=[1], batch_size=8),
                         data=data, seed=0, channels_last=True)
    assert torch.isfinite(torch.tensor(result.history[-1]["train"]["loss"]))
    torch.manual_seed(0)  # the trainer's initial weights (seed_everything(0), then create_model)
    initial = create_model("small_cnn", embedding_dim=8, in_channels=3, width=4).features[0][0].weight
    trained = result.model.features[0][0].weight
    assert trained.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(trained, initial)  # the optimiser updated the channels-last weights
    assert all(v.dtype == torch.float32 for v in result.model.state_dict().values() if v.is_floating_point())
