"""Print max |segdistill - source| of the logits for every zoo case of ``tests/test_zoo_convert.py``
(R50, ``2 x 3 x 65 x 89``, randomised statistics), as a Markdown table.

    python tests/zoo_reference/measure_differences.py
"""

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_zoo_convert import CASES, our_logits, source_logits, write_source  # noqa: E402

from segdistill.models.zoo import build_from_section, convert_checkpoint  # noqa: E402

print("| case | converted | max |logit| | max diff, main | max diff, aux |")
print("|---|---|---:|---:|---:|")
for case in sorted(CASES):
    with tempfile.TemporaryDirectory() as folder:
        source = write_source(case, Path(folder) / "zoo.pth")
        converted = convert_checkpoint(Path(folder) / "zoo.pth", CASES[case][1])
    ours = build_from_section(converted.section)
    ours.load_state_dict(converted.state)
    x = torch.randn(2, 3, 65, 89, generator=torch.Generator().manual_seed(1))
    (main, aux), (our_main, our_aux) = source_logits(CASES[case][1], source, x), our_logits(ours, x)
    aux_diff = "-" if aux is None else f"{(aux - our_aux).abs().max().item():.1e}"
    diff = (main - our_main).abs().max().item()
    print(f"| {case} | {converted.title} | {main.abs().max().item():.1f} | {diff:.1e} | {aux_diff} |")
