"""Whether two ``segdistill bench`` grids rank their common methods alike (e.g. the same methods on two
datasets): the mean val mIoU of each method's finished runs in each ``results.csv``, both orders,
Kendall's tau and the pairs the two order differently."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from ..errors import UserError


def mean_miou(path: Path) -> dict[str, float]:
    """Mean val mIoU (0-1) of each method's finished runs in a bench ``results.csv`` (diverged runs left out)."""
    if not path.is_file():
        raise UserError(f"bench results not found: {path}")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"method", "status", "mIoU"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{path}: not a bench results.csv (no column {', '.join(sorted(missing))})")
        values: dict[str, list[float]] = {}
        for line, row in enumerate(reader, start=2):
            if row["status"] != "finished":
                continue
            try:
                values.setdefault(row["method"], []).append(float(row["mIoU"]))
            except ValueError:
                raise UserError(f"{path}:{line}: mIoU {row['mIoU']!r} is not a number") from None
    if not values:
        raise UserError(f"{path}: no finished run")
    return {method: sum(v) / len(v) for method, v in values.items()}


@dataclass
class RankingComparison:
    """``methods``: the methods both grids hold, best first by ``a``; ``tau``: Kendall's tau-a over their
    pairs (1: the same order, -1: reversed); ``discordant``: the pairs ordered differently."""

    methods: list[str]
    a: dict[str, float]
    b: dict[str, float]
    tau: float
    concordant: int
    discordant: list[tuple[str, str]]
    ties: int

    def rank(self, means: dict[str, float], method: str) -> int:
        return 1 + sum(means[m] > means[method] for m in self.methods)


def compare_rankings(a: dict[str, float], b: dict[str, float]) -> RankingComparison:
    """Kendall's tau-a of the two orders over the methods both hold (at least 2 needed)."""
    methods = sorted((m for m in a if m in b), key=lambda m: -a[m])
    if len(methods) < 2:
        raise UserError(f"the two grids share {len(methods)} method(s); a ranking needs at least 2")
    concordant, discordant, ties = 0, [], 0
    for x, y in combinations(methods, 2):
        sign = (a[x] - a[y]) * (b[x] - b[y])
        if sign > 0:
            concordant += 1
        elif sign < 0:
            discordant.append((x, y))
        else:
            ties += 1
    pairs = len(methods) * (len(methods) - 1) // 2
    return RankingComparison(methods, a, b, (concordant - len(discordant)) / pairs, concordant, discordant, ties)
