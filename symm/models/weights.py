"""Pretrained weights from local files only: find the file, read it safely, load it, report.

Nothing here downloads. ``pretrained`` is either a path to a ``.pth`` state_dict or the word
``"imagenet"``, which means a backbone's standard file: torchvision's file name in the torch hub
cache (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``), or for
backbones whose weights ship inside a pip package, that package's file.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

IMAGENET = "imagenet"


@dataclass(frozen=True)
class LoadReport:
    """What loading a weights file into a backbone did.

    ``missing``: backbone keys the file lacks (left at their random init);
    ``unexpected``: file keys the backbone does not have (not used);
    ``mismatched``: keys in both but with different shapes (not loaded), as ``key: file -> model``;
    ``ignored``: the file's classifier-head keys (``fc.*`` ...), dropped by design since the
    embedding head replaces the classifier.
    """

    path: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 10) -> str:
        def show(keys: list[str]) -> str:
            more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        parts = [f"loaded {self.loaded} tensors from {self.path}"]
        for label, keys in (
            ("missing (left at random init)", self.missing),
            ("unexpected (unused)", self.unexpected),
            ("shape mismatch (not loaded)", self.mismatched),
        ):
            if keys:
                parts.append(f"{len(keys)} {label}: {show(keys)}")
        if self.ignored:
            parts.append(f"{len(self.ignored)} classifier-head keys ignored")
        return "; ".join(parts)


class IncompatibleWeightsError(RuntimeError):
    """A weights file that does not fit the backbone, raised when loading is strict."""


def hub_checkpoint_dir() -> Path:
    """Where torch hub keeps downloaded checkpoints; honours ``$TORCH_HOME``. Never downloads."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_pretrained(
    backbone: str,
    pretrained: str | os.PathLike[str],
    hub_file_names: Sequence[str] = (),
    packaged: Callable[[], Path] | None = None,
) -> Path:
    """The local file that ``pretrained`` names, or FileNotFoundError saying where to put it.

    ``hub_file_names``: the standard file names (torchvision's) looked up in the hub cache for
    ``"imagenet"``, first found wins; ``packaged``: for backbones whose ImageNet weights ship in a
    pip package, returns that file's path.
    """
    if str(pretrained) == IMAGENET:
        if packaged is not None:
            path = packaged()
            if not path.is_file():
                raise FileNotFoundError(
                    f"the ImageNet weights of backbone {backbone!r} should ship in a pip package "
                    f"but {path} does not exist; reinstall the packages in requirements.txt "
                    "(weights are never downloaded at run time)"
                )
            return path
        if not hub_file_names:
            raise FileNotFoundError(
                f"backbone {backbone!r} has no standard ImageNet weights file; pass "
                "pretrained=<path to a local state_dict .pth file> (weights are never downloaded)"
            )
        cache = hub_checkpoint_dir()
        for name in hub_file_names:
            if (cache / name).is_file():
                return cache / name
        expected = " or ".join(str(cache / name) for name in hub_file_names)
        raise FileNotFoundError(
            f"pretrained='imagenet' for backbone {backbone!r}: no weights file at {expected}. "
            "Weights are never downloaded: copy the file there (the torch hub cache, "
            f"~/.cache/torch/hub/checkpoints/{hub_file_names[0]} unless $TORCH_HOME is set), or "
            "pass pretrained=<path to the local .pth file>."
        )
    path = Path(pretrained).expanduser()
    if not path.is_file():
        hint = (
            f" With pretrained='imagenet' the torch hub cache is looked up instead: "
            f"{hub_checkpoint_dir() / hub_file_names[0]} (torchvision's file name)."
            if hub_file_names
            else ""
        )
        raise FileNotFoundError(
            f"pretrained weights file for backbone {backbone!r} not found: {path}. "
            "Weights are never downloaded: put the state_dict file (.pth) at that path or "
            f"change the path in params.yaml.{hint}"
        )
    return path


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state_dict from a ``.pth`` file, read with ``weights_only=True`` (no code is run).

    Accepts a bare state_dict or a checkpoint dict holding one under ``state_dict`` or ``model``;
    a ``module.`` prefix (DataParallel) is removed.
    """
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _fit_shape(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Drop one leading singleton dimension when that gives the expected shape.

    Caffe-converted files (BN-Inception's) store BatchNorm vectors as (1, C) instead of (C,).
    """
    if value.shape != like.shape and value.dim() == like.dim() + 1 and value.shape[0] == 1:
        if value.shape[1:] == like.shape:
            return value.squeeze(0)
    return value


def load_weights(
    module: nn.Module,
    path: str | os.PathLike[str],
    ignore_prefixes: Sequence[str] = (),
    strict: bool = True,
) -> LoadReport:
    """Load the state_dict in ``path`` into ``module`` and report what did not fit.

    Keys starting with one of ``ignore_prefixes`` (the classifier head of an ImageNet file) are
    dropped. A leading singleton dimension is squeezed (Caffe-converted BatchNorm vectors are
    (1, C)); a missing ``num_batches_tracked`` is not reported. Tensors whose shape still differs
    are not loaded. With ``strict`` any missing, unexpected or mismatched key raises
    IncompatibleWeightsError (and nothing is loaded); otherwise they are reported with
    ``warnings.warn`` and the rest is loaded.
    """
    file_state = read_state_dict(path)
    own = module.state_dict()
    ignored = sorted(k for k in file_state if k.startswith(tuple(ignore_prefixes)))
    usable = {k: v for k, v in file_state.items() if k not in set(ignored)}
    usable = {k: _fit_shape(v, own[k]) if k in own else v for k, v in usable.items()}
    mismatched = sorted(
        f"{k}: {tuple(v.shape)} -> {tuple(own[k].shape)}"
        for k, v in usable.items()
        if k in own and v.shape != own[k].shape
    )
    fits = {k: v for k, v in usable.items() if k in own and v.shape == own[k].shape}
    report = LoadReport(
        path=str(path),
        loaded=len(fits),
        # BatchNorm's batch counter is not a weight; files from old PyTorch versions lack it
        missing=sorted(k for k in own if k not in usable and not k.endswith(".num_batches_tracked")),
        unexpected=sorted(k for k in usable if k not in own),
        mismatched=mismatched,
        ignored=ignored,
    )
    if not report.complete:
        if strict:
            raise IncompatibleWeightsError(
                f"weights file does not fit the backbone: {report.summary()}. "
                "Pass pretrained_strict=False to load what fits anyway."
            )
        warnings.warn(f"pretrained weights partly loaded: {report.summary()}", stacklevel=3)
    module.load_state_dict(fits, strict=False)
    return report
