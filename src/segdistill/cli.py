"""The ``segdistill`` command line. User errors print one ``error: ...`` line and exit with status 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .base.method_options import BENCH_METHODS
from .base.schema import fields_of
from .errors import TrainingStopped, UserError

RESUME_HELP = "continue from the newest intact checkpoint in runs/<name>/checkpoints (start if there is none)"


class ListThenOverrides(argparse.Action):
    """A ``nargs="+"`` option after which ``key=value`` overrides may still follow.

    argparse hands every word up to the next option to a ``nargs="+"`` option, so
    ``bench CONFIG --seeds 0 1 2 train.iters=100`` would read the override as a seed. This action keeps
    the words with ``=`` aside (``main`` appends them to the overrides) and converts and checks the rest
    itself, with argparse's own messages.
    """

    def __init__(self, *args, convert=str, allowed: tuple[str, ...] | None = None, **kwargs) -> None:
        super().__init__(*args, nargs="+", **kwargs)
        self.convert = convert
        self.allowed = allowed

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        overrides = [v for v in values if "=" in v]
        items = [v for v in values if "=" not in v]
        if not items:
            parser.error(f"argument {option_string}: expected at least one argument")
        converted = []
        for item in items:
            try:
                value = self.convert(item)
            except ValueError:
                parser.error(f"argument {option_string}: invalid {self.convert.__name__} value: {item!r}")
            if self.allowed is not None and value not in self.allowed:
                choices = ", ".join(map(repr, self.allowed))
                parser.error(f"argument {option_string}: invalid choice: {item!r} (choose from {choices})")
            converted.append(value)
        setattr(namespace, self.dest, converted)
        namespace.trailing_overrides = [*getattr(namespace, "trailing_overrides", []), *overrides]


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` job, or a single process (the summary table is printed once)."""
    return os.environ.get("RANK", "0") == "0"


def _print_metrics(console: Console, title: str, metrics: dict, class_names: list[str]) -> None:
    table = Table(title=title)
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, iou in zip(class_names, metrics["iou"]):
        table.add_row(name, "-" if iou is None else f"{100 * iou:.2f}")
    table.add_row("[bold]mIoU", f"[bold]{100 * metrics['mIoU']:.2f}")
    table.add_row("pixel acc", f"{100 * metrics['pixel_acc']:.2f}")
    console.print(table)


def _class_names(config) -> list[str]:
    from .data.datasets import class_names

    return class_names(config.data.dataset)


def cmd_synth(args: argparse.Namespace, console: Console) -> int:
    from .data.synthetic import generate_dataset

    start = time.perf_counter()
    keys = ("train", "val", "seed", "height", "width", "workers", "style")
    counts = generate_dataset(args.out, **fields_of(args, keys))
    seconds = time.perf_counter() - start
    console.print(f"wrote {counts['train']} train and {counts['val']} val scenes to {args.out} in {seconds:.1f} s")
    if args.coco:
        _write_coco(args.out, ["train", "val"], console)
    return 0


def _write_coco(root: str, splits: list[str], console: Console) -> None:
    from .detection.coco import write_coco

    for split in splits:
        start = time.perf_counter()
        path = write_coco(root, split)
        console.print(f"wrote COCO annotations of {root} {split} to {path} in {time.perf_counter() - start:.1f} s")


def cmd_coco(args: argparse.Namespace, console: Console) -> int:
    _write_coco(args.root, args.splits, console)
    return 0


def _print_detection_metrics(console: Console, title: str, metrics: dict) -> None:
    table = Table(title=title)
    for column in ("", "AP", "AP50", "AP75", "APs", "APm", "APl"):
        table.add_column(column, justify="left" if not column else "right")
    for kind, label in (("bbox", "box"), ("segm", "mask")):
        if f"{kind}_AP" in metrics:
            cells = [metrics[f"{kind}_{s}"] for s in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
            table.add_row(label, *("-" if v < 0 else f"{100 * v:.2f}" for v in cells))
    console.print(table)


def cmd_detect(args: argparse.Namespace, console: Console) -> int:
    from .detection.config import load_detection_config
    from .detection.run import run_detect_distill, run_detect_eval, run_detect_train

    bench_only = [flag for flag, value in (("--seeds", args.seeds), ("--out", args.out)) if value is not None]
    if args.detect_command != "bench" and bench_only:
        raise UserError(f"{' and '.join(bench_only)}: only for detect bench")
    if args.detect_command == "bench":
        from .detection.bench import run_detect_bench

        other = [
            flag
            for flag, value in (("--resume", args.resume), ("--checkpoint", args.checkpoint), ("--json", args.json))
            if value
        ]
        if other:
            raise UserError(f"{' and '.join(other)}: not for detect bench (it resumes and reuses its runs itself)")
        run_detect_bench(
            args.config, args.seeds or [0, 1, 2], args.out or "runs/det_bench", list(args.overrides), console
        )
        return 0
    config = load_detection_config(args.config, args.overrides)
    if args.detect_command == "eval":
        if not args.checkpoint:
            raise UserError("detect eval needs --checkpoint PATH")
        metrics = run_detect_eval(config, args.checkpoint, console=console)
        _print_detection_metrics(console, f"{args.checkpoint}: COCO metrics on val", metrics)
        if args.json:
            Path(args.json).write_text(json.dumps(metrics, indent=2))
        return 0
    run = run_detect_train if args.detect_command == "train" else run_detect_distill
    summary = run(config, resume=args.resume, console=console)
    if not is_main_process():  # under torchrun rank 0 prints the result
        return 0
    _print_detection_metrics(console, f"{config.name}: COCO metrics on val", summary["val"])
    console.print(
        f"parameters {summary['parameters'] / 1e6:.2f} M, trained in {summary['train_seconds']:.0f} s; "
        f"outputs in {config.run_dir}"
    )
    return 0


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    from .engine.run import run_train

    return _train_or_distill(args, console, run_train)


def cmd_distill(args: argparse.Namespace, console: Console) -> int:
    from .engine.run import run_distill

    return _train_or_distill(args, console, run_distill)


def _train_or_distill(args: argparse.Namespace, console: Console, run) -> int:
    """``segdistill train`` / ``distill``: run, then (rank 0) the val table and the run's size and time."""
    from .config import load_config

    config = load_config(args.config, args.overrides)
    summary = run(config, resume=args.resume, console=console)
    if not is_main_process():
        return 0
    _print_metrics(console, f"{config.name}: val", summary["val"], _class_names(config))
    console.print(
        f"parameters {summary['parameters'] / 1e6:.2f} M, FLOPs {summary['flops'] / 1e9:.2f} G at "
        f"{summary['flops_input'][0]}x{summary['flops_input'][1]}, trained in {summary['train_seconds']:.0f} s; "
        f"outputs in {config.run_dir}"
    )
    return 0


def cmd_maskd_tokens(args: argparse.Namespace, console: Console) -> int:
    from .config import load_config
    from .engine.run import run_maskd_tokens

    config = load_config(args.config, args.overrides)
    summary = run_maskd_tokens(config, resume=args.resume, console=console)
    if is_main_process():
        tokens = config.run_dir / "checkpoints" / "last.pt"
        console.print(
            f"receptive tokens in {tokens} (distill.options.maskd.tokens); masked teacher's val mIoU "
            f"{100 * summary['val']['mIoU']:.2f}"
        )
    return 0


def cmd_rank(args: argparse.Namespace, console: Console) -> int:
    from .report.ranking import compare_rankings, mean_miou

    result = compare_rankings(mean_miou(Path(args.a)), mean_miou(Path(args.b)))
    table = Table(title="mean val mIoU (%) and rank of the methods both grids hold")
    for column in ("method", "A", "rank A", "B", "rank B"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for m in result.methods:
        table.add_row(
            m,
            f"{100 * result.a[m]:.2f}",
            str(result.rank(result.a, m)),
            f"{100 * result.b[m]:.2f}",
            str(result.rank(result.b, m)),
        )
    console.print(table)
    pairs = ", ".join(f"{x}/{y}" for x, y in result.discordant) or "none"
    console.print(
        f"A = {args.a}, B = {args.b}: Kendall tau {result.tau:.3f} over {len(result.methods)} methods "
        f"({result.concordant} pairs in the same order, {len(result.discordant)} reversed, {result.ties} tied); "
        f"reversed: {pairs}"
    )
    return 0


def cmd_bench(args: argparse.Namespace, console: Console) -> int:
    from .bench import run_bench

    run_bench(
        args.config,
        args.methods,
        args.seeds,
        args.out,
        list(args.overrides),
        console=console,
        figures=not args.no_figures,
    )
    return 0


def cmd_profile(args: argparse.Namespace, console: Console) -> int:
    from .config import load_config
    from .engine.builders import build_model
    from .report.profile import profile_models

    config = load_config(args.config, args.overrides)
    size = tuple(args.size) if args.size else tuple(config.data.crop_size)
    models = {"student": build_model(config.model)}
    if config.teacher is not None:
        models = {"teacher": build_model(config.teacher), **models}
    from .engine.runtime import resolve_device

    rows = profile_models(models, size, args.runs, resolve_device(config.train.device))
    table = Table(title=f"{args.config} at 1 x 3 x {size[0]} x {size[1]}")
    for column in ("model", "parameters (M)", "GFLOPs", "CPU ms", "GPU ms", "FLOPs x student"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, row in rows.items():
        gpu = f"{row['cuda_ms']:.1f}" if "cuda_ms" in row else "-"
        ratio = row["flops"] / rows["student"]["flops"]
        table.add_row(
            name, f"{row['parameters'] / 1e6:.2f}", f"{row['flops'] / 1e9:.2f}", f"{row['cpu_ms']:.1f}", gpu,
            f"{ratio:.2f}",
        )  # fmt: skip
    console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def cmd_taps(args: argparse.Namespace, console: Console) -> int:
    from .config import load_config
    from .report.taps import print_taps

    config = load_config(args.config, args.overrides)
    size = tuple(args.size) if args.size else None
    report = print_taps(config, Console(width=args.width), size, tapped_only=args.tapped)  # the tables: stdout
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace, console: Console) -> int:
    from .predict import predict_images

    written = predict_images(args.checkpoint, args.images, args.out, alpha=args.alpha)
    console.print(f"wrote {len(written)} files to {args.out}")
    return 0


def cmd_quickstart(args: argparse.Namespace, console: Console) -> int:
    from .quickstart import QUICKSTART_ITERS, run_quickstart

    if args.iters is not None and args.iters < 1:
        raise UserError(f"--iters must be a positive number of iterations, got {args.iters}")
    iters = QUICKSTART_ITERS if args.iters is None else args.iters
    run_quickstart(
        out=args.out, data_root=args.data, seed=args.seed, overrides=args.overrides, console=console, iters=iters
    )
    return 0


def cmd_eval(args: argparse.Namespace, console: Console) -> int:
    from .config import load_config
    from .engine.run import run_eval

    overrides = list(args.overrides)
    if args.mode:
        overrides.append(f"eval.mode={args.mode}")
    if args.scales:
        overrides.append(f"eval.scales=[{','.join(str(s) for s in args.scales)}]")
    if args.flip:
        overrides.append("eval.flip=true")
    config = load_config(args.config, overrides)
    predictions = args.predictions
    if args.format and not predictions:
        predictions = str(config.run_dir / f"predictions_{args.format}")
    metrics = run_eval(
        config,
        args.checkpoint,
        split=args.split,
        console=console,
        predictions=predictions,
        prediction_format=args.format or "cityscapes",
    )
    title = args.checkpoint or config.model.weights or config.model.pretrained or config.model.arch
    _print_metrics(console, f"{title} ({config.eval.mode})", metrics, _class_names(config))
    console.print(f"{metrics['images']} images in {metrics['seconds']:.1f} s")
    if predictions:
        console.print(f"predictions ({args.format or 'cityscapes'}) written to {predictions}")
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2))
    return 0


def cmd_convert(args: argparse.Namespace, console: Console) -> int:
    from .models.zoo import convert_checkpoint, write_converted

    converted = convert_checkpoint(args.src, args.zoo)
    out = args.out or str(Path(args.src).with_suffix(".safetensors"))
    weights, section = write_converted(converted, out)
    console.print(f"{args.src}: {converted.title}")
    for note in converted.notes:
        console.print(f"  note: {note}")
    console.print(f"wrote {weights} and its model section {section}:")
    print(section.read_text(), end="")
    return 0


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    from .export import export_onnx, export_safetensors

    if not args.safetensors and not args.onnx:
        raise UserError("nothing to export: pass --safetensors OUT and/or --onnx OUT")
    if args.safetensors:
        info = export_safetensors(
            args.checkpoint,
            args.safetensors,
            half=args.half,
            drop_aux=args.no_aux,
            name=args.name,
            command=args.command_note,
        )
        console.print(f"wrote {args.safetensors} ({info['bytes'] / 1e6:.2f} MB, sha256 {info['sha256']})")
    if args.onnx:
        info = export_onnx(args.checkpoint, args.onnx, tuple(args.size) if args.size else None)
        check = (
            "onnxruntime is not installed: output not checked"
            if info["max_abs_diff"] is None
            else f"onnxruntime vs PyTorch max |diff| {info['max_abs_diff']:.2e}"
        )
        console.print(f"wrote {args.onnx} ({info['bytes'] / 1e6:.2f} MB); {check}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segdistill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="generate the synthetic street scenes (Cityscapes layout)")
    from .data import synthetic

    synth.add_argument("--out", required=True)
    synth.add_argument("--train", type=int, default=synthetic.DEFAULT_TRAIN)
    synth.add_argument("--val", type=int, default=synthetic.DEFAULT_VAL)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--height", type=int, default=synthetic.DEFAULT_HEIGHT)
    synth.add_argument("--width", type=int, default=synthetic.DEFAULT_WIDTH)
    synth.add_argument("--workers", type=int, default=2)
    synth.add_argument(
        "--style",
        default="default",
        choices=sorted(synthetic.STYLES),
        help="the cities' look and object mix: default (the embedded dataset) or dusk (the held-out one)",
    )
    synth.add_argument("--coco", action="store_true", help="also write COCO instance annotations (annotations/)")
    synth.set_defaults(func=cmd_synth)

    coco = data.add_parser("coco", help="convert Cityscapes-layout instanceIds to COCO instance annotations")
    coco.add_argument("root", help="a Cityscapes-layout root (leftImg8bit/, gtFine/)")
    coco.add_argument("--splits", nargs="+", default=["train", "val"])
    coco.set_defaults(func=cmd_coco)

    detect = sub.add_parser("detect", help="object detection / instance segmentation (torchvision R-CNNs)")
    detect.add_argument("detect_command", choices=["train", "distill", "eval", "bench"])
    detect.add_argument("config")
    detect.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.iters=100")
    detect.add_argument("--resume", action="store_true", help=RESUME_HELP)
    detect.add_argument("--checkpoint", help="eval: a .pt checkpoint or .safetensors file")
    detect.add_argument("--json", help="eval: also write the metrics to this JSON file")
    detect.add_argument("--seeds", action=ListThenOverrides, convert=int, help="bench: the seeds (default 0 1 2)")
    detect.add_argument("--out", help="bench: the output folder (default runs/det_bench)")
    detect.set_defaults(func=cmd_detect)

    train = sub.add_parser("train", help="train a model (no distillation)")
    train.add_argument("config")
    train.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.iters=100")
    train.add_argument("--resume", action="store_true", help=RESUME_HELP)
    train.set_defaults(func=cmd_train)

    dist = sub.add_parser("distill", help="train a student with a teacher and distillation methods")
    dist.add_argument("config")
    dist.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. distill.methods=[apd]")
    dist.add_argument("--resume", action="store_true", help=RESUME_HELP)
    dist.set_defaults(func=cmd_distill)

    tokens = sub.add_parser(
        "maskd-tokens", help="MasKD's first stage: learn the receptive tokens on the frozen teacher (resumable)"
    )
    tokens.add_argument("config")
    tokens.add_argument("overrides", nargs="*")
    tokens.add_argument("--resume", action="store_true", help=RESUME_HELP)
    tokens.set_defaults(func=cmd_maskd_tokens)

    bench = sub.add_parser("bench", help="methods side by side under one recipe over several seeds")
    bench.add_argument("config", help="the recipe (teacher, student, data, schedule), e.g. configs/synthetic/apd.yaml")
    bench.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    bench.add_argument(
        "--methods",
        action=ListThenOverrides,
        default=None,
        allowed=tuple(BENCH_METHODS),
        metavar="METHOD",
        help=f"any of: {', '.join(BENCH_METHODS)} (default: all that the recipe can run; maskd needs its tokens "
        "or a maskd_tokens.yaml beside the recipe)",
    )
    bench.add_argument("--seeds", action=ListThenOverrides, convert=int, default=[0, 1, 2])
    bench.add_argument("--out", default="runs/bench")
    bench.add_argument("--no-figures", action="store_true", help="skip curves, per-class bars, predictions, t-SNE")
    bench.set_defaults(func=cmd_bench)

    rank = sub.add_parser("rank", help="do two bench grids (results.csv) rank their common methods alike?")
    rank.add_argument("a", help="a bench results.csv, e.g. docs/bench1000/results.csv")
    rank.add_argument("b", help="another, e.g. docs/bench_heldout/results.csv")
    rank.set_defaults(func=cmd_rank)

    prof = sub.add_parser("profile", help="parameters, FLOPs and latency of the teacher and the student")
    prof.add_argument("config")
    prof.add_argument("overrides", nargs="*")
    prof.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: the crop size)")
    prof.add_argument("--runs", type=int, default=10, help="timed forward passes (median)")
    prof.add_argument("--json", help="also write the figures to this JSON file")
    prof.set_defaults(func=cmd_profile)

    taps = sub.add_parser("taps", help="every module of the teacher and student with its shapes; default taps marked")
    taps.add_argument("config")
    taps.add_argument("overrides", nargs="*")
    taps.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="probe input size (default: the crop size)")
    taps.add_argument("--tapped", action="store_true", help="list only the tapped modules")
    taps.add_argument("--width", type=int, help="table width in characters (default: the terminal's)")
    taps.add_argument("--json", help="also write the modules and default taps to this JSON file")
    taps.set_defaults(func=cmd_taps)

    pred = sub.add_parser("predict", help="colourised masks and overlays for images")
    pred.add_argument("checkpoint", help="a segdistill training checkpoint (.pt)")
    pred.add_argument("images", nargs="+")
    pred.add_argument("--out", default="predictions")
    pred.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask")
    pred.set_defaults(func=cmd_predict)

    quick = sub.add_parser("quickstart", help="the main job: teacher, student baseline and APD student")
    quick.add_argument("--out", default="runs/quickstart")
    quick.add_argument("--data", default="data/synthetic", help="where the synthetic dataset is (generated if absent)")
    quick.add_argument("--seed", type=int, default=0)
    quick.add_argument(
        "--iters",
        type=int,
        help="iterations of each student (default: the quickstart's 500; the recipes' own schedule is 1000)",
    )
    quick.add_argument("overrides", nargs="*", help="key=value overrides for both students (e.g. train.iters=50)")
    quick.set_defaults(func=cmd_quickstart)

    ev = sub.add_parser("eval", help="evaluate a checkpoint")
    ev.add_argument("config")
    ev.add_argument("overrides", nargs="*")
    ev.add_argument(
        "--checkpoint",
        help="a .pt checkpoint, .safetensors file or shipped:<name> (default: the model section's own trained "
        "weights, e.g. a transformers folder or hub id in model.pretrained)",
    )
    ev.add_argument("--mode", choices=["whole", "slide"])
    ev.add_argument("--scales", type=float, nargs="+")
    ev.add_argument("--flip", action="store_true")
    ev.add_argument("--split")
    ev.add_argument("--json", help="also write the metrics to this JSON file")
    ev.add_argument(
        "--format",
        choices=["cityscapes", "trainid"],
        help="write predictions as PNGs: Cityscapes labelIds for the official evaluation / test server, or train ids",
    )
    ev.add_argument("--predictions", help="folder for the predictions (default runs/<name>/predictions_<format>)")
    ev.set_defaults(func=cmd_eval)

    conv = sub.add_parser(
        "convert",
        help="convert a model-zoo checkpoint (mmsegmentation, APD release, CIRKD): safetensors + model section",
    )
    conv.add_argument("src", help="the zoo's .pth file")
    conv.add_argument(
        "--from", dest="zoo", required=True, choices=["mmseg", "apd", "cirkd"], help="the zoo it comes from"
    )
    conv.add_argument(
        "--out",
        help="the .safetensors file to write (default: SRC with .safetensors); the model "
        "section goes beside it with .yaml",
    )
    conv.set_defaults(func=cmd_convert)

    ex = sub.add_parser("export", help="export a checkpoint's model weights")
    ex.add_argument("checkpoint")
    ex.add_argument("--safetensors", help="output .safetensors path")
    ex.add_argument("--onnx", help="output .onnx path (input 'image' B x 3 x H x W, output 'logits')")
    ex.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="ONNX input size (default: the crop size)")
    ex.add_argument("--half", action="store_true", help="store float16 weights")
    ex.add_argument("--no-aux", action="store_true", help="drop the auxiliary head (training-only)")
    ex.add_argument("--name", help="register the file under this name in the manifest beside it")
    ex.add_argument("--command-note", default="", help="the command that produced the checkpoint (manifest)")
    ex.set_defaults(func=cmd_export)
    return parser


def user_message(exc: UserError) -> str:
    """The one line to show for a user error.

    A ``UserError`` raised in a DataLoader worker comes back re-raised by torch with the message
    ``Caught UserError in DataLoader worker process N.`` followed by the worker's traceback, whose
    last line holds the original message (the one naming the bad file)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith("Caught ") and "worker" in lines[0]:
        last = lines[-1]
        _, sep, message = last.partition("UserError: ")
        return message if sep else last
    return lines[0]


def how_to_continue(args: argparse.Namespace) -> str:
    """What a user runs after a SIGTERM stopped this command's training."""
    if args.func is cmd_bench or getattr(args, "detect_command", None) == "bench":
        return "run the same command again: bench reuses the finished runs and resumes this one"
    if hasattr(args, "resume"):
        return "run the same command with --resume to continue"
    return "run the same command again (it starts over)"


def main(argv: list[str] | None = None) -> int:
    console = Console(stderr=True)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow options (``eval CONFIG --checkpoint X train.amp=none``)
    unknown = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    extra = [*getattr(args, "trailing_overrides", []), *extra]
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args, console)
    except UserError as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return 2
    except TrainingStopped as exc:
        print(f"stopped: {exc}; {how_to_continue(args)}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
