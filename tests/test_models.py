"""Backbones by name: shapes and gradients, local pretrained weights, BatchNorm freezing."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from symm.models import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EmbeddingModel,
    IncompatibleWeightsError,
    create_model,
    read_state_dict,
)

IMAGENET_BACKBONES = {"googlenet": 1024, "bn_inception": 1024, "resnet50": 2048, "efficientnet_lite0": 1280}
SIZE = 32  # every backbone accepts 32 px (stride 32: 1x1 feature maps)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny inputs gain nothing from threads, and on a busy 2-core machine threads thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images(batch: int = 2, channels: int = 3, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _options(name: str) -> dict:
    return {"in_channels": 3, "width": 8} if name == "small_cnn" else {}


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_registry_has_the_issue_backbones():
    assert set(IMAGENET_BACKBONES) | {"small_cnn"} <= set(BACKBONES.names())
    with pytest.raises(ValueError, match="known backbones: .*bn_inception"):
        create_model("inception_v9")


@pytest.mark.parametrize("name", BACKBONES.names())
def test_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name, embedding_dim=16, **_options(name)).train()
    out = model(_images())
    assert out.shape == (2, 16) and torch.isfinite(out).all()
    out.square().sum().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{pname} has a non-finite gradient"
    if name in IMAGENET_BACKBONES:
        assert isinstance(model, EmbeddingModel)
        head = model.embedding
        assert (head.in_features, head.out_features) == (IMAGENET_BACKBONES[name], 16)
        assert torch.count_nonzero(head.bias) == 0
        bound = (6 / (head.in_features + head.out_features)) ** 0.5  # Glorot uniform
        assert head.weight.abs().max() <= bound
        assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())


def test_small_cnn_keeps_its_signature():
    model = create_model("small_cnn", embedding_dim=64, in_channels=1, width=16)
    assert model(_images(channels=1)).shape == (2, 64)


def test_grayscale_input_is_repeated_to_rgb():
    model = create_model("bn_inception", embedding_dim=8, in_channels=1).eval()
    gray = _images(channels=1)
    rgb_model = create_model("bn_inception", embedding_dim=8).eval()
    rgb_model.load_state_dict(model.state_dict())
    assert torch.allclose(model(gray), rgb_model(gray.expand(-1, 3, -1, -1)))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(_images(channels=3))


# --- pretrained weights from local files -------------------------------------------------------
# Each reference builds a randomly initialised network in its upstream format (the file an
# ImageNet checkpoint would be) and a function computing its feature maps, to compare with ours.


def _torchvision_googlenet():
    net = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True, transform_input=True)
    net.eval()
    captured = {}
    net.inception5b.register_forward_hook(lambda m, i, o: captured.update(out=o))

    def features(x):
        net(x)
        return captured["out"]

    return net.state_dict(), features


def _torchvision_resnet50():
    net = torchvision.models.resnet50(weights=None).eval()
    trunk = nn.Sequential(*list(net.children())[:-2])  # up to layer4
    return net.state_dict(), trunk


def _efficientnet_package():
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0").eval()  # the package's own: static padding for 224
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))

    def features(x):  # ImageNet-normalised RGB -> the TensorFlow scaling the weights were made for
        return net.extract_features(((x * std + mean) * 255 - 127) / 128)

    return net.state_dict(), features


def _our_bn_inception():
    model = create_model("bn_inception").eval()
    state = {**model.backbone.state_dict(), "last_linear.weight": torch.zeros(1000, 1024)}
    return state, model.backbone


REFERENCES = {
    "googlenet": _torchvision_googlenet,
    "resnet50": _torchvision_resnet50,
    "efficientnet_lite0": _efficientnet_package,
    "bn_inception": _our_bn_inception,
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_pretrained_round_trip(name, tmp_path):
    torch.manual_seed(1)
    state, reference_features = REFERENCES[name]()
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)

    model = create_model(name, embedding_dim=8, pretrained=path).eval()
    report = model.load_report
    assert report.complete and report.missing == [] and report.unexpected == []
    assert report.ignored, "the classifier keys of the file should be ignored, not loaded"
    assert report.loaded == len(model.backbone.state_dict())
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key

    # the package pads for 224 px inputs; ours pads per input, the same at 224
    x = _images(batch=1, size=224) if name == "efficientnet_lite0" else _images()
    with torch.no_grad():
        ours = model.backbone(x)
        theirs = reference_features(x)
        assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4)
        # the whole model: same weights, same head -> same embeddings
        again = create_model(name, embedding_dim=8, pretrained=path).eval()
        again.embedding.load_state_dict(model.embedding.state_dict())
        assert torch.equal(again(x), model(x))


def test_imagenet_is_looked_up_in_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        create_model("resnet50", pretrained="imagenet")
    message = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in message
    assert "never downloaded" in message

    state, _ = _our_bn_inception()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / "bn_inception-52deb4733.pth")
    model = create_model("bn_inception", pretrained="imagenet")
    assert Path(model.load_report.path) == cache / "bn_inception-52deb4733.pth"
    assert model.load_report.complete


def test_missing_file_error_says_where_to_put_weights(tmp_path):
    missing = tmp_path / "weights" / "googlenet.pth"
    with pytest.raises(FileNotFoundError) as err:
        create_model("googlenet", pretrained=missing)
    message = str(err.value)
    assert str(missing) in message
    assert "never downloaded" in message
    assert "hub/checkpoints/googlenet-1378be20.pth" in message
    with pytest.raises(FileNotFoundError, match="no standard ImageNet weights"):
        create_model("small_cnn", pretrained="imagenet")


def test_mismatched_file_reports_keys(tmp_path):
    state, _ = _our_bn_inception()
    del state["inception_5b_pool_proj.weight"]
    state["inception_6a_1x1.weight"] = torch.zeros(3)
    state["conv2_3x3.bias"] = torch.zeros(7)
    path = tmp_path / "odd.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)  # wrapped, DataParallel

    with pytest.raises(IncompatibleWeightsError) as err:
        create_model("bn_inception", pretrained=path)
    assert "inception_5b_pool_proj.weight" in str(err.value) and "inception_6a_1x1.weight" in str(err.value)

    with pytest.warns(UserWarning, match="partly loaded"):
        model = create_model("bn_inception", pretrained=path, pretrained_strict=False)
    report = model.load_report
    assert report.missing == ["inception_5b_pool_proj.weight"]
    assert report.unexpected == ["inception_6a_1x1.weight"]
    assert report.mismatched == ["conv2_3x3.bias: (7,) -> (192,)"]
    assert report.ignored == ["last_linear.weight"]
    loaded = model.backbone.state_dict()
    assert torch.equal(loaded["conv1_7x7_s2.weight"], state["conv1_7x7_s2.weight"])


def test_caffe_style_bn_inception_file_loads(tmp_path):
    """The distributed BN-Inception weights: (1, C) BatchNorm vectors, no batch counters."""
    state, _ = _our_bn_inception()
    caffe_style = {
        k: v.unsqueeze(0) if "_bn." in k else v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    path = tmp_path / "bn_inception-52deb4733.pth"
    torch.save(caffe_style, path)
    model = create_model("bn_inception", pretrained=path)
    assert model.load_report.complete
    for key, value in model.backbone.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, state[key]), key


def test_efficientnet_lite0_ships_imagenet_weights():
    model = create_model("efficientnet_lite0", embedding_dim=8, pretrained="imagenet").eval()
    report = model.load_report
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert report.ignored == ["_fc.bias", "_fc.weight"]
    shipped = read_state_dict(report.path)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, shipped[key]), key
    with torch.no_grad():
        assert torch.isfinite(model(_images(size=64))).all()


@pytest.mark.parametrize("name", ["small_cnn", "bn_inception"])
def test_freeze_bn(name):
    torch.manual_seed(0)
    model = create_model(name, embedding_dim=8, freeze_bn=True, **_options(name))
    bns = _batch_norms(model)
    assert bns
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    model.train()
    out = model(_images())
    out.square().sum().backward()
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} changed in train mode"
    for bn in bns:
        assert not bn.training
        assert not bn.weight.requires_grad and bn.weight.grad is None and bn.bias.grad is None
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)

    # without freezing the same forward does update the running statistics
    unfrozen = create_model(name, embedding_dim=8, **_options(name)).train()
    unfrozen(_images())
    assert any(
        not torch.equal(unfrozen.state_dict()[k], v) for k, v in before.items() if "running_mean" in k
    )
