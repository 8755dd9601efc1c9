"""Forward hooks that capture the outputs of named modules of any ``nn.Module``."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..base.schema import closest
from ..errors import UserError


def find_module(model: nn.Module, name: str, side: str = "model") -> nn.Module:
    """``model``'s submodule called ``name``; a UserError listing the closest names otherwise."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    close = closest(name, [n for n in modules if n], n=5, cutoff=0.4)
    hint = f"closest: {', '.join(close)}" if close else "list them with [n for n, _ in model.named_modules()]"
    raise UserError(f"{side} has no module named {name!r} ({hint})")


def _as_tensor(output: object, name: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "out" in output:
        return output["out"]
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
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
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
