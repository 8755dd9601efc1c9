"""Model-output normalisation: the logits of any segmentation model's output."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def output_logits(output: object) -> torch.Tensor:
    """The main logits from any segmentation model's output: a tensor, or a mapping with ``"out"``
    (ours, torchvision), or a tuple/list whose first item is the logits."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        if "out" in output:
            return output["out"]
        raise ValueError(f"model output mapping has no 'out' key (keys: {list(output)})")
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ValueError(f"cannot find logits in model output of type {type(output).__name__}")
