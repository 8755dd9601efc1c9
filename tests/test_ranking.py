"""`segdistill rank`: do two bench grids order their common methods alike?"""

import subprocess
import sys
from itertools import combinations

import pytest

from segdistill.errors import UserError
from segdistill.report.ranking import compare_rankings, mean_miou

HEADER = "method,seed,status,mIoU,pixel_acc,train_seconds,iters,road\n"


def write_grid(path, rows):
    """``rows``: (method, seed, status, mIoU or '') as bench writes them."""
    path.write_text(HEADER + "".join(f"{m},{s},{st},{v},0.8,1.0,10,0.5\n" for m, s, st, v in rows))
    return path


def kendall_tau_a(a, b):
    """Independent formula: tau-a = (concordant - discordant) / pairs, with numbers not methods."""
    keys = sorted(set(a) & set(b))
    sign = [((a[x] > a[y]) - (a[x] < a[y])) * ((b[x] > b[y]) - (b[x] < b[y])) for x, y in combinations(keys, 2)]
    return sum(sign) / len(sign)


def test_mean_over_finished_runs_and_diverged_runs_left_out(tmp_path):
    path = write_grid(
        tmp_path / "a.csv",
        [("baseline", 0, "finished", 0.30), ("baseline", 1, "finished", 0.40), ("bpkd", 0, "diverged at step 62", ""),
         ("bpkd", 1, "finished", 0.02)],
    )  # fmt: skip
    assert mean_miou(path) == pytest.approx({"baseline": 0.35, "bpkd": 0.02})


def test_same_order_reversed_pair_and_methods_held_by_one_grid_only():
    a = {"baseline": 0.39, "kd": 0.40, "apd": 0.43, "cwd": 0.47, "at": 0.09}
    b = {"baseline": 0.41, "kd": 0.40, "apd": 0.45, "cwd": 0.50}
    result = compare_rankings(a, b)
    assert result.methods == ["cwd", "apd", "kd", "baseline"]  # best first by a; at is in a only
    assert result.discordant == [("kd", "baseline")]
    assert result.concordant == 5 and result.ties == 0
    assert result.tau == pytest.approx(kendall_tau_a(a, b)) == pytest.approx(4 / 6)
    assert [result.rank(b, m) for m in result.methods] == [1, 2, 4, 3]
    assert compare_rankings(a, a).tau == 1.0
    assert compare_rankings(a, {m: -v for m, v in a.items()}).tau == -1.0


def test_bad_inputs_are_one_line_errors_naming_the_file(tmp_path):
    with pytest.raises(UserError, match="bench results not found: .*missing.csv"):
        mean_miou(tmp_path / "missing.csv")
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match=r"other.csv: not a bench results.csv \(no column mIoU, method, status\)"):
        mean_miou(other)
    bad = write_grid(tmp_path / "bad.csv", [("kd", 0, "finished", "x")])
    with pytest.raises(UserError, match=r"bad.csv:2: mIoU 'x' is not a number"):
        mean_miou(bad)
    empty = write_grid(tmp_path / "empty.csv", [("kd", 0, "diverged at step 3", "")])
    with pytest.raises(UserError, match="empty.csv: no finished run"):
        mean_miou(empty)
    with pytest.raises(UserError, match="share 1 method"):
        compare_rankings({"kd": 0.4, "apd": 0.5}, {"kd": 0.3})


def test_cli_prints_tau_and_the_reversed_pairs(tmp_path):
    a = write_grid(tmp_path / "a.csv", [("baseline", 0, "finished", 0.39), ("kd", 0, "finished", 0.40),
                                        ("apd", 0, "finished", 0.43)])  # fmt: skip
    b = write_grid(tmp_path / "b.csv", [("baseline", 0, "finished", 0.41), ("kd", 0, "finished", 0.40),
                                        ("apd", 0, "finished", 0.45)])  # fmt: skip
    cmd = [sys.executable, "-m", "segdistill", "rank"]
    done = subprocess.run([*cmd, str(a), str(b)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    printed = " ".join((done.stdout + done.stderr).split())  # rich wraps long lines
    expected = "Kendall tau 0.333 over 3 methods (2 pairs in the same order, 1 reversed, 0 tied); reversed: kd/baseline"
    assert expected in printed
    failed = subprocess.run([*cmd, str(a), str(tmp_path / "none.csv")], capture_output=True, text=True)
    assert failed.returncode != 0
    assert failed.stderr.strip().splitlines() == [f"error: bench results not found: {tmp_path / 'none.csv'}"]
