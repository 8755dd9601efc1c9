"""Exact resume after SIGKILL, atomic checkpoints with a fallback, the divergence guard."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from segdistill.cli import main
from segdistill.engine.checkpoint import (
    load_latest_checkpoint,
    load_training_checkpoint,
    save_training_checkpoint,
    state_digest,
)
from segdistill.errors import TrainingStopped, UserError

TIMING = {"images_per_s", "train_seconds", "seconds"}


def records(run: Path) -> list[dict]:
    """metrics.jsonl without the timing fields."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    out = []
    for line in lines:
        record = json.loads(line)
        out.append({k: v for k, v in record.items() if k not in TIMING})
    return out


def logged_steps(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(x).get("step", 0) for x in path.read_text().splitlines() if x.endswith("}")]
    return max(steps, default=0)


def assert_same_state(a: dict, b: dict, where: str = "") -> None:
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture
def teacher_checkpoint(tiny_overrides, tmp_path) -> str:
    assert (
        main(["train", "configs/synthetic/student.yaml", *tiny_overrides, "name=teacher", "model.head_channels=24"])
        == 0
    )
    return str(tmp_path / "runs/teacher/checkpoints/last.pt")


@pytest.mark.slow
def test_killed_and_resumed_runs_end_bitwise_equal(tiny_overrides, teacher_checkpoint, tmp_path):
    """An APD distillation (student, its optimizer, the teacher adapter and its own Adam, dropout RNG,
    mid-epoch sampler position, a half-summed log window) is SIGKILLed at several points and resumed
    with the same command; it ends with the same weights, optimizer states and metrics as a run that
    was never interrupted."""
    common = [
        *[o for o in tiny_overrides if not o.startswith(("train.iters", "train.log_interval"))],
        "teacher.backbone=mobilenetv2_100",
        "teacher.backbone_kwargs={}",
        "teacher.head_channels=24",
        "teacher.ppm_channels=8",
        f"teacher.weights={teacher_checkpoint}",
        "distill.options.apd.adapter_channels=16",
        "train.iters=13",  # 8 train images, batch 4: 2 batches an epoch, so kills land mid-epoch too
        "train.log_interval=2",  # checkpoints at odd steps fall inside a log window
        "train.checkpoint_interval=3",
        "train.eval_interval=6",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path("src").resolve())}

    def command(name: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "segdistill",
            "distill",
            "configs/synthetic/apd.yaml",
            *common,
            f"name={name}",
            "--resume",
        ]

    reference = tmp_path / "runs/reference"
    subprocess.run(command("reference"), env=env, check=True, capture_output=True)

    killed = tmp_path / "runs/killed"
    ckpt = killed / "checkpoints"

    def writing() -> bool:  # a checkpoint is being written (its temporary file exists)
        return ckpt.is_dir() and any(p.suffix == ".tmp" for p in ckpt.iterdir())

    # Kill once the log shows step N (before any checkpoint, mid-epoch, after an evaluation, inside a
    # log window, just before the end), and once in the middle of writing a checkpoint.
    kill_when = [("step", 1), ("step", 4), ("write", None), ("step", 9), ("step", 12)]
    starts = []
    for kind, target in kill_when:
        proc = subprocess.Popen(command("killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if (logged_steps(killed) >= target) if kind == "step" else writing():
                break
            time.sleep(0.005 if kind == "step" else 0)
        assert proc.poll() is None, f"the run ended before the kill ({kind} {target})"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        found = re.search(r"resumed\s+from.*?at\s+step\s+(\d+)", proc.stderr.read().decode(), re.S)
        starts.append(int(found.group(1)) if found else 0)
        print(f"attempt {len(starts)}: started at step {starts[-1]}, killed at {kind} {target or ''}".rstrip())
    final = subprocess.run(command("killed"), env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-2000:]
    assert "resumed from" in final.stderr
    assert len(set(starts)) >= 3  # the attempts resumed from different checkpoints
    assert not list(ckpt.glob("*.tmp"))  # a temporary file left by a kill is removed on resume

    a = load_training_checkpoint(reference / "checkpoints/last.pt")
    b = load_training_checkpoint(killed / "checkpoints/last.pt")
    for key in ("model", "task", "optimizer", "extra_optimizers", "step", "epoch", "batch_in_epoch", "rng"):
        assert_same_state(a[key], b[key], key)
    assert records(reference) == records(killed)
    sa = json.loads((reference / "summary.json").read_text())["val"]
    sb = json.loads((killed / "summary.json").read_text())["val"]
    assert {k: v for k, v in sa.items() if k not in TIMING} == {k: v for k, v in sb.items() if k not in TIMING}


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_sigterm_saves_the_step_reached_and_resumes_exactly(tiny_overrides, tmp_path, workers):
    """SIGTERM to the whole process group (as a scheduler sends it; with a DataLoader worker too):
    the run finishes its step, saves a checkpoint at it (there is no interval checkpoint here) and
    exits with 143 and one line; resumed, it ends bitwise equal to a run never stopped."""
    common = [
        *[o for o in tiny_overrides if not o.startswith(("train.iters", "train.log_interval"))],
        "train.iters=40",
        "train.log_interval=1",
        "train.checkpoint_interval=0",
        f"data.workers={workers}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path("src").resolve())}

    def command(name: str) -> list[str]:
        return [sys.executable, "-m", "segdistill", "train", "configs/synthetic/student.yaml", *common, f"name={name}"]

    subprocess.run(command("reference"), env=env, check=True, capture_output=True)
    stopped = tmp_path / "runs/stopped"
    proc = subprocess.Popen(
        command("stopped"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while logged_steps(stopped) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before the signal"
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    last = proc.stderr.read().strip().splitlines()[-1]
    found = re.fullmatch(
        r"stopped: SIGTERM at step (\d+) of 40; checkpoint saved in (.+); "
        r"run the same command with --resume to continue",
        last,
    )
    assert found, last
    step = int(found.group(1))
    assert 3 <= step < 40 and found.group(2) == str(stopped / "checkpoints/last.pt")
    assert load_training_checkpoint(stopped / "checkpoints/last.pt")["step"] == step
    resumed = subprocess.run([*command("stopped"), "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"at step {step}" in resumed.stderr
    a = load_training_checkpoint(tmp_path / "runs/reference/checkpoints/last.pt")
    b = load_training_checkpoint(stopped / "checkpoints/last.pt")
    for key in ("model", "optimizer", "step", "epoch", "batch_in_epoch", "rng"):
        assert_same_state(a[key], b[key], key)
    assert records(tmp_path / "runs/reference") == records(stopped)


def test_a_sigterm_too_late_for_its_run_stops_the_next_one():
    """A SIGTERM after a run's last step (bench goes on to its next run) is not lost: the next
    StopSignal of the process starts requested. One that ended in an exception passes nothing on."""
    from segdistill.engine.stopping import StopSignal

    with StopSignal() as first:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not first.requested and time.monotonic() < deadline:
            time.sleep(0.001)
        assert first.requested
    with pytest.raises(TrainingStopped), StopSignal() as second:
        assert second.requested
        raise TrainingStopped("SIGTERM at step 1 of 10")  # what the trainer does with it
    with pytest.raises(RuntimeError), StopSignal() as third:
        assert not third.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        raise RuntimeError("the run failed")
    with StopSignal() as fourth:
        assert not fourth.requested
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is restored


def test_how_to_continue_names_what_each_command_offers():
    from segdistill.cli import build_parser, how_to_continue

    parser = build_parser()
    assert how_to_continue(parser.parse_args(["train", "c.yaml"])).endswith("with --resume to continue")
    assert "bench reuses the finished runs" in how_to_continue(parser.parse_args(["bench", "c.yaml"]))
    assert how_to_continue(parser.parse_args(["quickstart"])).endswith("(it starts over)")
    assert "bench reuses the finished runs" in how_to_continue(parser.parse_args(["detect", "bench", "c.yaml"]))
    assert how_to_continue(parser.parse_args(["detect", "train", "c.yaml"])).endswith("with --resume to continue")


@pytest.mark.slow
def test_a_crash_with_dataloader_workers_alive_exits_promptly(tmp_path):
    """Workers ignore SIGTERM; multiprocessing's exit handler SIGTERMs and joins its children without
    a time limit, so an uncaught exception that keeps a loader's iterator alive would hang the exit.
    segdistill SIGKILLs them first: the process exits with the exception's status within seconds."""
    script = tmp_path / "crash.py"
    script.write_text(
        "from torch.utils.data import DataLoader\n"
        "from segdistill.engine.stopping import worker_ignores_stop_signal\n"
        "def batches(loader):\n"
        "    while True:\n"
        "        yield from loader\n"
        "loader = DataLoader(list(range(8)), batch_size=2, num_workers=1, persistent_workers=True,\n"
        "                    worker_init_fn=worker_ignores_stop_signal)\n"
        "it = batches(loader)\n"
        "next(it)\n"
        "raise RuntimeError('out of memory (simulated)')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path("src").resolve())}
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "out of memory (simulated)" in done.stderr
    assert time.monotonic() - start < 30


def test_batches_do_not_depend_on_workers_and_resume_mid_epoch(tiny_data):
    """The sampler's batches and every sample's augmentation are functions of (seed, epoch, position):
    the same with 0 and 2 workers, and a start offset gives the tail of the epoch without loading the head."""
    from torch.utils.data import DataLoader

    from segdistill.data.datasets import build_dataset
    from segdistill.data.sampling import EpochBatchSampler, SeededSamples
    from segdistill.data.transforms import seed_worker, train_transform

    def epoch(workers: int, epoch: int, start: int = 0) -> list[torch.Tensor]:
        data = build_dataset("cityscapes", tiny_data, "train", transform=train_transform((32, 32), seed=0))
        sampler = EpochBatchSampler(len(data), 2, seed=3)
        sampler.set_epoch(epoch)
        sampler.set_start(start)
        loader = DataLoader(SeededSamples(data), batch_sampler=sampler, num_workers=workers, worker_init_fn=seed_worker)
        return [b["image"] for b in loader]

    e0 = epoch(0, 0)
    assert len(e0) == 4
    for x, y in zip(e0, epoch(2, 0)):
        assert torch.equal(x, y)
    for x, y in zip(e0[2:], epoch(0, 0, start=2)):
        assert torch.equal(x, y)
    assert not torch.equal(torch.stack(e0), torch.stack(epoch(0, 1)))  # a new epoch: new order and augmentation


def test_sampler_shards_over_ranks():
    from segdistill.data.sampling import EpochBatchSampler

    whole = EpochBatchSampler(10, 2, seed=0)
    ranks = [EpochBatchSampler(10, 2, seed=0, rank=r, world_size=2) for r in range(2)]
    assert len(whole) == 5 and all(len(r) == 2 for r in ranks)  # 8 of 10 samples kept over 2 ranks
    shards = [s for r in ranks for batch in r for s in batch]
    assert len(set(shards)) == 8 and set(shards) <= set(whole.epoch_samples(0))


# --------------------------------------------------------------------------- checkpoint files
def small_state(value: float = 1.0) -> dict:
    return {"model": {"w": torch.full((64, 64), value)}, "step": 3, "rng": {"python": (3, (1, 2), None)}}


def test_digest_detects_a_flipped_byte_that_torch_load_does_not(tmp_path):
    path = tmp_path / "last.pt"
    save_training_checkpoint(small_state(), path)
    data = bytearray(path.read_bytes())
    raw = torch.full((64, 64), 1.0).numpy().tobytes()
    at = bytes(data).index(raw[:64]) + 100  # inside the tensor's bytes
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # torch itself loads the damaged file without complaint
    with pytest.raises(UserError, match=f"checkpoint {path} is corrupt: its content does not match its digest"):
        load_training_checkpoint(path)
    assert state_digest(small_state()) != state_digest(small_state(2.0))


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty"])
def test_a_damaged_last_falls_back_to_the_previous_with_a_warning(tmp_path, damage):
    ckpt = tmp_path / "checkpoints"
    save_training_checkpoint(small_state(1.0), ckpt / "last.pt")
    save_training_checkpoint(small_state(2.0), ckpt / "last.pt")  # the first becomes last.previous.pt
    last = ckpt / "last.pt"
    data = last.read_bytes()
    if damage == "truncated":
        last.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":
        at = data.index(torch.full((64, 64), 2.0).numpy().tobytes()[:64]) + 10
        last.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :])
    else:
        last.write_bytes(b"")
    warnings: list[str] = []
    state, path = load_latest_checkpoint(ckpt, warn=warnings.append)
    assert path.name == "last.previous.pt" and float(state["model"]["w"][0, 0]) == 1.0
    assert any(str(last) in w for w in warnings)


def test_no_intact_checkpoint_is_an_error(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="no intact checkpoint"):
        load_latest_checkpoint(tmp_path)
    assert load_latest_checkpoint(tmp_path / "empty") is None


def test_a_checkpoint_carrying_code_is_refused(tmp_path, capsys, tiny_overrides):
    """A pickle whose unpickling would run a shell command is refused before anything runs."""
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pt"
    torch.save({"model": Exploit()}, bad, pickle_module=pickle)
    code = main(["eval", "configs/synthetic/student.yaml", *tiny_overrides, "--checkpoint", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"refusing to load {bad}" in err[0]
    assert not marker.exists()


# --------------------------------------------------------------------------- the training loop
def test_resume_with_another_config_is_refused(tiny_overrides, tmp_path, capsys):
    assert main(["train", "configs/synthetic/student.yaml", *tiny_overrides, "name=r"]) == 0
    capsys.readouterr()
    code = main(["train", "configs/synthetic/student.yaml", *tiny_overrides, "name=r", "train.lr=0.5", "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "another config (train.lr: 0.02 -> 0.5)" in err[-1]


def test_a_finished_run_resumed_reports_the_same_metrics(tiny_overrides, tmp_path):
    assert main(["train", "configs/synthetic/student.yaml", *tiny_overrides, "name=r"]) == 0
    first = json.loads((tmp_path / "runs/r/summary.json").read_text())["val"]
    assert main(["train", "configs/synthetic/student.yaml", *tiny_overrides, "name=r", "--resume"]) == 0
    again = json.loads((tmp_path / "runs/r/summary.json").read_text())["val"]
    assert first["mIoU"] == again["mIoU"] and len(records(tmp_path / "runs/r")) == 3  # 2 log lines + 1 eval


class NaNAt(torch.nn.Module):
    """Wraps a task: the loss is NaN at the given (1-based) steps."""

    def __init__(self, task, bad_steps):
        super().__init__()
        self.inner = task
        self.student = task.student
        self.bad_steps = set(bad_steps)
        self.calls = 0

    def own_steps(self):
        return []

    def param_groups(self, lr, mult):
        return self.inner.param_groups(lr, mult)

    def trainable_state_dict(self):
        return {}

    def load_trainable_state_dict(self, state):
        pass

    def forward(self, images, labels):
        self.calls += 1
        out = self.inner(images, labels)
        if self.calls in self.bad_steps:
            out.losses["ce"] = out.losses["ce"] * float("nan")
            out.total = sum(out.losses.values())
        return out


def nan_trainer(tiny_overrides, extra, bad_steps):
    from segdistill.config import load_config
    from segdistill.engine.builders import build_datasets, build_loaders, build_model
    from segdistill.engine.runtime import seed_everything
    from segdistill.engine.task import SupervisedTask
    from segdistill.engine.trainer import Trainer

    config = load_config("configs/synthetic/student.yaml", [*tiny_overrides, "train.iters=6", *extra])
    seed_everything(0)
    train, val = build_datasets(config)
    loaders = build_loaders(config, train, val)
    task = NaNAt(SupervisedTask(build_model(config.model)), bad_steps)
    return Trainer(config, task, *loaders, 19, torch.device("cpu")), config


def test_a_nonfinite_loss_stops_naming_step_and_term_and_keeps_the_checkpoint(tiny_overrides):
    trainer, config = nan_trainer(tiny_overrides, ["train.checkpoint_interval=2", "name=nan"], bad_steps=[5])
    with pytest.raises(UserError, match=r"loss is not finite at step 5 \(term ce\); the last good checkpoint is"):
        trainer.fit()
    state, _ = load_latest_checkpoint(config.run_dir / "checkpoints")
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (config.run_dir / "summary.json").exists()


def test_a_nonfinite_loss_can_skip_the_batch_and_counts_skips(tiny_overrides):
    trainer, config = nan_trainer(tiny_overrides, ["train.nonfinite=skip", "name=skip"], bad_steps=[2, 3])
    metrics = trainer.fit()
    assert metrics["skipped_batches"] == 2 and trainer.step == 6
    logged = [json.loads(x) for x in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "skipped_nonfinite" in r] == [2, 3]
    assert all(torch.isfinite(p).all() for p in trainer.task.student.parameters())
    trainer, _ = nan_trainer(tiny_overrides, ["train.nonfinite=skip", "train.max_skips=1", "name=skip2"], [2, 3])
    with pytest.raises(UserError, match=r"at step 3 \(term ce\) after 1 skipped batches \(train.max_skips\)"):
        trainer.fit()
