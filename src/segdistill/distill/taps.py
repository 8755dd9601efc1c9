"""Forward hooks that capture the outputs (or inputs) of named modules of any ``nn.Module``.

A tap names a module as ``model.named_modules()`` lists it (``head.classifier``); with the suffix
``:input`` (``decode_head.classifier:input``) it captures the module's first positional input instead
of its output: the features a classifier reads, in models where no module outputs them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..base.schema import closest
from ..errors import UserError
from ..models.sources import INPUT_SUFFIX


def split_tap(spec: str) -> tuple[str, bool]:
    """``(module name, reads the input)`` of a tap: ``"a.b:input"`` -> ``("a.b", True)``."""
    if spec.endswith(INPUT_SUFFIX):
        return spec[: -len(INPUT_SUFFIX)], True
    return spec, False


def find_module(model: nn.Module, name: str, side: str = "model") -> nn.Module:
    """``model``'s submodule called ``name`` (a tap: ``:input`` allowed); a UserError listing the
    closest names otherwise."""
    name, _ = split_tap(name)
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    close = closest(name, [n for n in modules if n], n=5, cutoff=0.4)
    hint = f"closest: {', '.join(close)}" if close else "segdistill taps CONFIG lists them"
    raise UserError(f"{side} has no module named {name!r} ({hint})")


def _as_tensor(output: object, name: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):  # ours / torchvision ("out"), a transformers output (first tensor field)
        if "out" in output:
            return output["out"]
        tensors = [v for v in output.values() if isinstance(v, torch.Tensor)]
        if tensors:
            return tensors[0]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise UserError(f"tap {name!r} captured a {type(output).__name__}, not a tensor")


class TapRecorder:
    """Registers a forward hook per tap: ``{tap name: module name}``; ``recorder.maps`` holds the
    latest output of each (``B x C x h x w``). ``clear()`` before each forward; ``remove()`` the hooks."""

    def __init__(self, model: nn.Module, taps: Mapping[str, str], side: str = "model") -> None:
        self.maps: dict[str, torch.Tensor] = {}
        self.side = side
        self.taps = dict(taps)
        self.handles = []
        for tap, module_name in taps.items():
            module = find_module(model, module_name, side)
            self.handles.append(module.register_forward_hook(self._hook(tap, module_name)))

    def _hook(self, tap: str, module_name: str):
        _, reads_input = split_tap(module_name)

        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            if reads_input:
                if not inputs:
                    raise UserError(f"tap {module_name!r}: the module was called without a positional input")
                self.maps[tap] = _as_tensor(inputs[0], module_name)
            else:
                self.maps[tap] = _as_tensor(output, module_name)

        return hook

    def clear(self) -> None:
        self.maps = {}

    def collect(self) -> dict[str, torch.Tensor]:
        missing = [self.taps[t] for t in self.taps if t not in self.maps]
        if missing:
            raise UserError(f"{self.side} modules {missing} did not run during the forward pass; tap other modules")
        return dict(self.maps)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


@torch.no_grad()
def probe_channels(
    model: nn.Module, taps: Mapping[str, str], input_size: tuple[int, int] = (64, 64), side: str = "model"
) -> dict[str, int]:
    """Run one eval-mode forward on zeros and return ``{tap: channels}`` for each tap."""
    recorder = TapRecorder(model, taps, side)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, 3, *input_size, device=device))
        return {tap: value.shape[1] for tap, value in recorder.collect().items()}
    finally:
        recorder.remove()
        model.train(was_training)


@dataclass(frozen=True)
class ModuleShape:
    """One module of a model after a probe forward: its name (what a tap names), class, and the
    shapes of its first input and its output (``None`` when not a tensor or the module did not run)."""

    name: str
    kind: str
    input: tuple[int, ...] | None
    output: tuple[int, ...] | None


def _shape(value: object) -> tuple[int, ...] | None:
    try:
        return tuple(_as_tensor(value, "").shape)
    except UserError:
        return None


@torch.no_grad()
def module_shapes(model: nn.Module, input_size: tuple[int, int]) -> list[ModuleShape]:
    """Every named module of ``model`` with the shapes it saw in one eval-mode forward pass of a
    ``1 x 3 x H x W`` zero image (an auxiliary head that runs only in training runs too)."""
    seen: dict[str, tuple] = {}
    handles = []
    for name, module in model.named_modules():
        if name:

            def hook(module: nn.Module, inputs: tuple, output: object, name: str = name) -> None:
                seen[name] = (_shape(inputs[0]) if inputs else None, _shape(output))

            handles.append(module.register_forward_hook(hook))
    was_training, had_aux = model.training, getattr(model, "aux_in_eval", None)
    model.eval()
    if had_aux is not None:
        model.aux_in_eval = True
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, 3, *input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
        if had_aux is not None:
            model.aux_in_eval = had_aux
    return [
        ModuleShape(name, type(module).__name__, *seen.get(name, (None, None)))
        for name, module in model.named_modules()
        if name
    ]
