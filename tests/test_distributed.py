"""Multi-process training on CPU (gloo), launched the way torchrun launches: one process per rank with
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from segdistill.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, args: list[str]) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(Path("src").resolve()),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
        }
        cmd = [sys.executable, "-m", "segdistill", *args]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    return procs


def overrides(tiny_overrides: list[str], **values: object) -> list[str]:
    keys = {k.replace("__", ".") for k in values}
    kept = [o for o in tiny_overrides if o.split("=")[0] not in keys]
    return kept + [f"{k.replace('__', '.')}={v}" for k, v in values.items()]


def test_two_processes_train_and_evaluate_like_one(tiny_overrides, tmp_path, capsys):
    """2 gloo processes, 2 images each per step: rank 0 writes the outputs, the checkpoint holds both
    ranks' RNG states, and the all-reduced evaluation of the sharded val split equals a one-process
    evaluation of the same weights exactly."""
    args = overrides(tiny_overrides, data__batch_size=2, name="ddp")
    procs = launch(2, ["train", "configs/synthetic/student.yaml", *args])
    for p in procs:
        p.wait(timeout=300)
    errors = [p.stderr.read() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert errors[1].strip() == ""  # only rank 0 talks
    run = tmp_path / "runs/ddp"
    summary = json.loads((run / "summary.json").read_text())
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [2, 4, 4] and all(torch.isfinite(torch.tensor(r["loss"])) for r in logged[:2])
    state = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    out = tmp_path / "eval.json"
    ckpt = run / "checkpoints/last.pt"
    assert main(["eval", "configs/synthetic/student.yaml", *args, "--checkpoint", str(ckpt), "--json", str(out)]) == 0
    single = json.loads(out.read_text())
    assert single["mIoU"] == summary["val"]["mIoU"] and single["iou"] == summary["val"]["iou"]


def test_a_rank_that_dies_stops_the_others_with_an_error(tiny_overrides, tmp_path):
    """SIGKILL rank 1 mid-training: rank 0 exits with one 'error: ...' line and status 2 within
    seconds instead of hanging in the next collective."""
    args = overrides(tiny_overrides, data__batch_size=2, train__iters=2000, train__log_interval=1, name="dies")
    procs = launch(2, ["train", "configs/synthetic/student.yaml", *args, "train.dist_timeout=60"])
    log = tmp_path / "runs/dies/metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 2) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs]
        time.sleep(0.05)
    os.kill(procs[1].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    procs[0].wait(timeout=90)
    waited = time.monotonic() - killed_at
    err = procs[0].stderr.read().strip().splitlines()
    assert procs[0].returncode == 2, err
    assert err[-1].startswith("error: rank 0 of 2 lost contact with the other processes"), err
    assert waited < 60, waited
    print(f"rank 0 exited {waited:.2f} s after rank 1 was killed: {err[-1]}")
    assert not (tmp_path / "runs/dies/summary.json").exists()


def test_a_killed_two_process_run_resumes_exactly(tiny_overrides, tmp_path):
    """Both ranks SIGKILLed mid-run and relaunched with --resume end with the weights and metrics of
    an uninterrupted 2-process run (each rank restores its own RNG state and log window)."""
    common = overrides(
        tiny_overrides, data__batch_size=2, train__iters=9, train__log_interval=1, train__checkpoint_interval=2
    )

    def run(name: str, kill_after: int | None = None) -> str:
        procs = launch(2, ["train", "configs/synthetic/student.yaml", *common, f"name={name}", "--resume"])
        log = tmp_path / f"runs/{name}/metrics.jsonl"
        if kill_after is not None:
            deadline = time.monotonic() + 120
            while not (log.exists() and len(log.read_text().splitlines()) >= kill_after):
                assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
                time.sleep(0.02)
            for p in procs:
                os.kill(p.pid, signal.SIGKILL)
        for p in procs:
            p.wait(timeout=300)
        errors = [p.stderr.read() for p in procs]
        if kill_after is None:
            assert [p.returncode for p in procs] == [0, 0], errors
        return errors[0]

    run("reference")
    run("killed", kill_after=5)
    assert "resumed from" in run("killed")
    a = torch.load(tmp_path / "runs/reference/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "runs/killed/checkpoints/last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])

    def records(name: str) -> list[dict]:
        lines = (tmp_path / f"runs/{name}/metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "images_per_s"} for x in lines]

    assert records("reference") == records("killed")
