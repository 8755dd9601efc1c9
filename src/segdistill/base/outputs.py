"""Model-output normalisation, the one place that reads what any segmentation model returns."""

from __future__ import annotations

from collections.abc import Mapping

import torch

# Keys of a mapping output (ours and torchvision: out / aux; transformers: logits / auxiliary_logits).
MAIN_KEYS = ("out", "logits")
AUX_KEYS = ("aux", "auxiliary_logits", "aux_logits")


def split_output(output: object) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(main logits, auxiliary logits)`` of any segmentation model's output:

    - a tensor: the logits, no auxiliaries;
    - a mapping (ours and torchvision's ``{"out", "aux"}``; a transformers output with ``logits``
      and, when it carries them, ``auxiliary_logits``);
    - a tuple or list: the first tensor is the main logits, later ``B x K x h x w`` tensors are
      auxiliaries (image-level outputs such as smp's classification head are left out).

    The logits may be on a coarser grid than the input (SegFormer's are at 1/4): callers upsample
    them bilinearly (``align_corners=False``), as the libraries do for inference."""
    if isinstance(output, torch.Tensor):
        return output, []
    if isinstance(output, Mapping):
        main = next((output[k] for k in MAIN_KEYS if isinstance(output.get(k), torch.Tensor)), None)
        if main is None:
            raise ValueError(f"model output mapping has no 'out' or 'logits' key (keys: {list(output)})")
        aux = [output[k] for k in AUX_KEYS if isinstance(output.get(k), torch.Tensor)]
        return main, aux
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        main = output[0]
        aux = [x for x in output[1:] if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == main.shape[1]]
        return main, aux
    raise ValueError(f"cannot find logits in model output of type {type(output).__name__}")


def output_logits(output: object) -> torch.Tensor:
    """The main logits of any segmentation model's output (:func:`split_output`)."""
    return split_output(output)[0]
