"""Models from other libraries, built by name, used as they are (no wrapper).

A model section names its ``source``:

- ``segdistill``: our PSP/ASPP heads on timm backbones (:func:`~segdistill.models.build_segmentor`);
- ``torchvision``: a builder of ``torchvision.models.segmentation`` (``deeplabv3_resnet101``,
  ``lraspp_mobilenet_v3_large``, ...) with its keyword arguments;
- ``smp``: an architecture of segmentation_models_pytorch (``Unet``, ``FPN``, ``DeepLabV3Plus``, ...)
  with its keyword arguments (``encoder_name``, ...);
- ``hf``: a transformers semantic-segmentation model: from a local folder written by
  ``save_pretrained`` (or a hub id when online), or a class built from config keys with random weights;
- ``python``: ``package.module:callable`` returning an ``nn.Module``.

The built model is the library's own module: its state-dict keys and module names (the taps) are
the library's. Its output (a tensor, a dict with ``out``/``aux``, a transformers output with
``logits``, a tuple) is normalised in one place, :func:`segdistill.base.outputs.split_output`.
The class count is passed under each library's own name (``num_classes``, ``classes``,
``num_labels``) unless the keyword arguments give it.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import segmentation

from ..base.outputs import split_output
from ..base.schema import did_you_mean
from ..errors import UserError
from .segmentor import Segmentor

SOURCES = ("segdistill", "torchvision", "smp", "hf", "python")
EXTRAS = {"smp": ("segmentation_models_pytorch", "smp"), "hf": ("transformers", "hf")}
INPUT_SUFFIX = ":input"  # a tap on the input of a module instead of its output


def _library(source: str, key: str) -> Any:
    module, extra = EXTRAS[source]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"{key}.source={source} needs the {module} package: pip install 'segdistill[{extra}]'") from exc


def _parameters(fn: Any) -> tuple[set[str], bool] | None:
    """The named parameters of ``fn`` and whether it also takes ``**kwargs`` (None: no signature)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    params = signature.parameters.values()
    named = {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def _call(fn: Any, kwargs: dict[str, Any], what: str, key: str, also: Any = None) -> nn.Module:
    """``fn(**kwargs)`` with a keyword the callable does not take named in one line. ``also``: a class
    whose constructor receives ``fn``'s ``**kwargs`` (torchvision's builders pass them on, or drop them
    silently); its named parameters are then the only other keywords allowed."""
    found = _parameters(fn)
    if found is not None:
        named, open_ended = found
        if also is not None:
            named |= (_parameters(also) or (set(), False))[0]
            open_ended = False
        for name in kwargs if not open_ended else ():
            if name not in named:
                hint = did_you_mean(name, sorted(named))
                raise UserError(f"{key}.kwargs.{name}: {what} takes no argument {name!r}{hint}")
    try:
        model = fn(**kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"{key}: {what} failed with these kwargs: {str(exc).splitlines()[0]}") from exc
    if not isinstance(model, nn.Module):
        raise UserError(f"{key}: {what} returned a {type(model).__name__}, not a torch nn.Module")
    return model


def build_torchvision(arch: str, num_classes: int, kwargs: Mapping[str, Any], key: str = "model") -> nn.Module:
    """``torchvision.models.segmentation.<arch>(num_classes=..., weights=None, weights_backbone=None,
    **kwargs)``: no download unless ``kwargs`` asks for weights."""
    builders = [
        n for n in dir(segmentation) if n.islower() and not n.startswith("_") and callable(getattr(segmentation, n))
    ]
    builders = [n for n in builders if "_" in n]  # the model builders (deeplabv3_resnet50, ...), not the modules
    if arch not in builders:
        raise UserError(
            f"{key}.arch: torchvision has no segmentation builder {arch!r}{did_you_mean(arch, builders)}; "
            f"builders: {', '.join(builders)}"
        )
    args = {"num_classes": num_classes, "weights": None, "weights_backbone": None, **kwargs}
    builder = getattr(segmentation, arch)
    model_class = inspect.signature(builder).return_annotation
    also = model_class if isinstance(model_class, type) else nn.Module
    return _call(builder, args, f"torchvision.models.segmentation.{arch}", key, also=also)


def build_smp(arch: str, num_classes: int, kwargs: Mapping[str, Any], key: str = "model") -> nn.Module:
    """``segmentation_models_pytorch.<arch>(classes=..., encoder_weights=None, **kwargs)``."""
    smp = _library("smp", key)
    archs = sorted(n for n in dir(smp) if n[:1].isupper() and isinstance(getattr(smp, n), type))
    archs = [n for n in archs if issubclass(getattr(smp, n), nn.Module)]
    if arch not in archs:
        raise UserError(
            f"{key}.arch: smp has no architecture {arch!r}{did_you_mean(arch, archs)}; "
            f"architectures: {', '.join(archs)}"
        )
    args = {"classes": num_classes, "encoder_weights": None, **kwargs}
    return _call(getattr(smp, arch), args, f"segmentation_models_pytorch.{arch}", key)


def build_hf(
    arch: str | None, pretrained: bool | str, num_classes: int, kwargs: Mapping[str, Any], key: str = "model"
) -> nn.Module:
    """A transformers semantic-segmentation model.

    ``pretrained`` a folder written by ``save_pretrained`` (or a hub id when online): loaded with
    ``from_pretrained(pretrained, num_labels=..., **kwargs)`` through ``arch`` (a class name) or
    ``AutoModelForSemanticSegmentation``. Without ``pretrained``: ``arch``'s config class built from
    ``kwargs`` (config keys), random weights."""
    transformers = _library("hf", key)
    cls = _hf_class(transformers, arch, key) if arch else transformers.AutoModelForSemanticSegmentation
    if isinstance(pretrained, str):
        local = Path(pretrained)
        looks_local = local.is_absolute() or pretrained.startswith(".") or local.exists()
        if looks_local and not (local / "config.json").is_file():
            raise UserError(
                f"{key}.pretrained: {pretrained} is not a folder written by save_pretrained (no config.json)"
            )
        try:
            return cls.from_pretrained(pretrained, num_labels=num_classes, **kwargs)
        except OSError as exc:
            raise UserError(
                f"{key}.pretrained: cannot load {pretrained!r} (not a local folder, and the hub is not reachable "
                f"or has no such model): {str(exc).splitlines()[0]}"
            ) from exc
        except (RuntimeError, ValueError, TypeError) as exc:
            raise UserError(
                f"{key}.pretrained: {pretrained} does not load as {getattr(cls, '__name__', cls)} with "
                f"num_labels={num_classes} ({str(exc).splitlines()[0][:200]}); a checkpoint with another class "
                f"count needs {key}.kwargs.ignore_mismatched_sizes=true"
            ) from exc
    if pretrained:
        raise UserError(f"{key}.pretrained: source hf takes a folder or hub id here, not {pretrained!r}")
    if not arch:
        raise UserError(f"{key}: source hf needs {key}.pretrained (a folder) or {key}.arch (a model class)")
    config_class = cls.config_class
    known = set(config_class().to_dict())
    for name in kwargs:
        if name not in known:
            hint = did_you_mean(name, sorted(known))
            raise UserError(f"{key}.kwargs.{name}: {config_class.__name__} has no key {name!r}{hint}")
    try:
        config = config_class(**{"num_labels": num_classes, **kwargs})
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(
            f"{key}.kwargs: {config_class.__name__} refuses these keys: {str(exc).splitlines()[0]}"
        ) from exc
    return cls(config)


def _hf_class(transformers: Any, arch: str, key: str) -> Any:
    names = [n for n in dir(transformers) if n.endswith("ForSemanticSegmentation")]
    if arch == "AutoModelForSemanticSegmentation":
        return transformers.AutoModelForSemanticSegmentation
    if arch not in names:
        raise UserError(
            f"{key}.arch: transformers has no semantic-segmentation class {arch!r}{did_you_mean(arch, names)}"
        )
    return getattr(transformers, arch)


def build_python(target: str, num_classes: int, kwargs: Mapping[str, Any], key: str = "model") -> nn.Module:
    """``package.module:callable(**kwargs)``; ``num_classes`` is passed when the callable takes a
    ``num_classes`` argument that ``kwargs`` does not set. The current directory is importable (as
    with ``python -m``), so a user's own ``my_models.py`` works from where the command runs."""
    if target.count(":") != 1:
        raise UserError(f"{key}.arch: source python needs 'package.module:callable', got {target!r}")
    module_name, attr = target.split(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"{key}.arch: cannot import {module_name!r} ({exc})") from exc
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise UserError(f"{key}.arch: {module_name} has no {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise UserError(f"{key}.arch: {target} is not callable")
    args = dict(kwargs)
    try:
        takes_classes = "num_classes" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_classes = False
    if takes_classes and "num_classes" not in args:
        args["num_classes"] = num_classes
    return _call(fn, args, target, key)


# ----------------------------------------------------------------------------------------------------
# default taps and the output check


def _kind(module: nn.Module) -> str:
    return type(module).__name__


def class_score_convs(model: nn.Module, num_classes: int) -> list[str]:
    """Names of the convolutions with ``num_classes`` output channels, in registration order."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
        and getattr(m, "out_channels", getattr(m, "out_features", 0)) == num_classes
    ]


# Families whose classifier is not a single convolution: the class scores are a module's output and
# the features the classifier reads are named explicitly.
FAMILY_TAPS: dict[str, dict[str, str]] = {
    # torchvision LR-ASPP: scores = low_classifier(low) + high_classifier(high); the head sums them
    "LRASPP": {"feat": "classifier.high_classifier" + INPUT_SUFFIX, "logits": "classifier"},
}

# Our segmentors: the release taps the PSP output after Dropout2d (the same tensor as the
# classifier's input) and the classifier.
SEGMENTOR_TAPS = {"feat": "head.dropout", "logits": "head.classifier"}
SEGMENTOR_AUX_TAP = "aux_head.classifier"


def default_taps(model: nn.Module, num_classes: int) -> dict[str, str]:
    """The taps a method reads when the config names none: ``feat`` (the features the classifier
    reads), ``logits`` (the class scores at the classifier's grid) and, when the model has an
    auxiliary classifier, ``aux_logits``.

    Ours: :data:`SEGMENTOR_TAPS`. Families in :data:`FAMILY_TAPS` by class name. Any other model:
    the last convolution with ``num_classes`` outputs whose name has no ``aux`` is the classifier
    (``logits``), its input the ``feat``; the last such convolution with ``aux`` in its name the
    auxiliary classifier."""
    if isinstance(model, Segmentor):
        taps = dict(SEGMENTOR_TAPS)
        if model.aux_head is not None:
            taps["aux_logits"] = SEGMENTOR_AUX_TAP
        return taps
    convs = class_score_convs(model, num_classes)
    main = [n for n in convs if "aux" not in n.lower()]
    aux = [n for n in convs if "aux" in n.lower()]
    family = FAMILY_TAPS.get(_kind(model))
    if family is not None:
        taps = dict(family)
    elif main:
        taps = {"feat": main[-1] + INPUT_SUFFIX, "logits": main[-1]}
    else:
        raise UserError(
            f"{_kind(model)} has no convolution with {num_classes} output channels to tap as its classifier; "
            "name the taps in distill.student_taps / distill.teacher_taps (segdistill taps CONFIG lists the modules)"
        )
    if aux:
        taps["aux_logits"] = aux[-1]
    return taps


@torch.no_grad()
def check_segmentation_output(model: nn.Module, num_classes: int, size: tuple[int, int], key: str = "model") -> None:
    """One eval-mode forward of a ``1 x 3 x H x W`` zero image: the main output must be per-pixel class
    scores ``1 x num_classes x h x w``; else one line naming ``key``."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        output = model(torch.zeros(1, 3, *size, device=device))
    except RuntimeError as exc:
        raise UserError(
            f"{key}: the model fails on a 1 x 3 x {size[0]} x {size[1]} input: {str(exc).splitlines()[0]}"
        ) from exc
    finally:
        model.train(was_training)
    try:
        logits, _ = split_output(output)
    except ValueError as exc:
        raise UserError(f"{key}: {exc}") from exc
    if logits.dim() != 4:
        raise UserError(
            f"{key}: the model returns a {' x '.join(map(str, logits.shape))} tensor, not per-pixel class scores "
            f"B x K x h x w"
        )
    if logits.shape[1] != num_classes:
        raise UserError(
            f"{key}: the model returns {logits.shape[1]} channels of class scores, not {key}.num_classes={num_classes}"
        )
