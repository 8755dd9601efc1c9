"""Every numeric, range and list key of every schema refuses out-of-range values with one line.

The cases are read from the schemas themselves (each field's declared check and the values it
refuses), so a key added without a check, or a check that lets its own bad values through, fails
here. Also: recipes inheriting through ``base:``, and method options validated at read.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from pathlib import Path

import pytest

from segdistill import UserError
from segdistill.base.method_options import METHOD_NAMES, METHOD_OPTIONS
from segdistill.base.schema import check_of, optional_dataclass
from segdistill.cli import main
from segdistill.config import Config, load_config
from segdistill.detection.config import DetectionAPDOptions, DetectionConfig

# Keys whose values are checked elsewhere than by a field check, and where.
CHECKED_ELSEWHERE = {
    "Config.distill.methods": "DistillConfig.validate: each name against METHOD_NAMES",
    "Config.distill.options": "DistillConfig.validate: each method's options dataclass",
    "DetectionConfig.distill.options": "DetectionDistillConfig.validate: DetectionAPDOptions",
}


def _strip_optional(annotation):
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) == 1:
            return options[0]
    return annotation


def _needs_check(annotation) -> bool:
    """Numbers, lists, and mappings of numbers must declare what they allow."""
    annotation = _strip_optional(annotation)
    if annotation in (int, float):
        return True
    origin = typing.get_origin(annotation)
    if origin is list:
        return True
    if origin is dict:
        return typing.get_args(annotation)[1] in (int, float)
    return False


def _walk(cls, path: str, key: str):
    """(dotted override key, schema class path, field) for every leaf field under ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        sub = annotation if dataclasses.is_dataclass(annotation) else optional_dataclass(annotation)
        if sub is not None:
            yield from _walk(sub, f"{path}.{f.name}", f"{key}{f.name}.")
        else:
            yield f"{key}{f.name}", f"{path}.{f.name}", f, annotation


ROOTS = {"Config": Config, "DetectionConfig": DetectionConfig}
FIELDS = [(root, *leaf) for root, cls in ROOTS.items() for leaf in _walk(cls, root, "")]
OPTION_FIELDS = [
    (name, *leaf) for name, cls in METHOD_OPTIONS.items() for leaf in _walk(cls, f"options.{name}", "")
] + [("detection:apd", *leaf) for leaf in _walk(DetectionAPDOptions, "options.apd", "")]


def _cases():
    for root, key, _where, f, _ in FIELDS:
        check = check_of(f)
        for bad in check.bad_examples() if check else []:
            yield pytest.param(root, key, bad, id=f"{root}:{key}={json.dumps(bad)}")


def _option_cases():
    for method, key, _where, f, _ in OPTION_FIELDS:
        check = check_of(f)
        for bad in check.bad_examples() if check else []:
            yield pytest.param(method, key, bad, id=f"{method}.{key}={json.dumps(bad)}")


NEED_CHECKS = [leaf for leaf in FIELDS + OPTION_FIELDS if _needs_check(leaf[4]) and leaf[2] not in CHECKED_ELSEWHERE]
CHECKED = [leaf for leaf in FIELDS + OPTION_FIELDS if check_of(leaf[3]) is not None]


def test_the_walk_sees_the_schema():
    assert len(NEED_CHECKS) > 60 and {"Config.data.flip_p", "DetectionConfig.model.min_size"} <= {
        leaf[2] for leaf in NEED_CHECKS
    }


@pytest.mark.parametrize("where, field, annotation", [leaf[2:] for leaf in NEED_CHECKS], ids=lambda x: str(x))
def test_every_numeric_and_list_key_declares_what_it_allows(where, field, annotation):
    assert check_of(field) is not None, f"{where} ({annotation}) has no check: declare one with setting(...)"


@pytest.mark.parametrize("where, field", [leaf[2:4] for leaf in CHECKED], ids=lambda x: str(x))
def test_every_default_is_allowed(where, field):
    check = check_of(field)
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    assert default is None or check.problem(default) is None, (where, default)


@pytest.mark.parametrize("root, key, bad", list(_cases()))
def test_out_of_range_values_are_refused_with_one_line(root, key, bad):
    with pytest.raises(UserError) as info:
        load_config(None, [f"{key}={json.dumps(bad)}"], schema=ROOTS[root])
    message = str(info.value)
    assert "\n" not in message
    assert key in message and "allowed:" in message, message


@pytest.mark.parametrize("method, key, bad", list(_option_cases()))
def test_out_of_range_method_options_are_refused_with_one_line(method, key, bad):
    if method == "detection:apd":
        schema, name = DetectionConfig, "apd"
    else:
        schema, name = Config, method
    with pytest.raises(UserError) as info:
        load_config(
            None, [f"distill.methods=[{name}]", f"distill.options.{name}.{key}={json.dumps(bad)}"], schema=schema
        )
    message = str(info.value)
    assert "\n" not in message
    assert f"distill.options.{name}.{key}" in message and "allowed:" in message, message


RECIPES = Path(__file__).resolve().parents[1] / "configs"


def test_the_cli_prints_one_error_line_and_exits_2(capsys):
    code = main(["train", str(RECIPES / "synthetic" / "student.yaml"), "data.flip_p=1.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["error: config key 'data.flip_p': 1.5 is out of range; allowed: a number in [0, 1]"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["distill.methods=[apx]"], "unknown distillation method 'apx' (did you mean 'apd'?)"),
        (["distill.methods=[kd]", "distill.options.apx.scale=5"], "'distill.options.apx': unknown distillation method"),
        (["distill.methods=[]", "distill.options.apd.scale=0"], "'distill.options.apd.scale': 0.0 is out of range"),
        (["distill.methods=[apd]", "distill.options.apd.scal=5"], "did you mean 'distill.options.apd.scale'"),
        (["distill.methods=[kd]", "distill.options.kd.reduction=sum"], "allowed: one of mean, pixel"),
        (["distill.methods=[at]", "distill.options.at.taps=[]"], "'distill.options.at.taps': [] is empty"),
    ],
)
def test_method_names_and_options_are_checked_at_read(overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_config(None, overrides)


def test_methods_are_one_list():
    from segdistill.distill.methods import METHODS

    assert tuple(METHODS) == METHOD_NAMES


def test_base_chain_merges_base_then_file_then_overrides(tmp_path):
    (tmp_path / "fragments").mkdir()
    (tmp_path / "root.yaml").write_text("name: root\ntrain: {iters: 7, lr: 0.5}\nmodel: {head_channels: 32}\n")
    (tmp_path / "fragments" / "mid.yaml").write_text("base: ../root.yaml\ntrain: {lr: 0.25}\n")
    (tmp_path / "leaf.yaml").write_text("base: fragments/mid.yaml\nname: leaf\nmodel: {ppm_channels: 8}\n")
    config = load_config(tmp_path / "leaf.yaml", ["train.iters=9"])
    assert config.name == "leaf"
    assert (config.train.iters, config.train.lr) == (9, 0.25)  # override > mid > root
    assert (config.model.head_channels, config.model.ppm_channels) == (32, 8)  # mappings merge key by key


def test_base_chain_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(UserError, match="'base' chain loops"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(UserError, match=r"c.yaml: its base 'missing.yaml' is not a file"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(UserError, match="'base' must be the path"):
        load_config(tmp_path / "d.yaml")


def test_teacher_is_a_model_config():
    config = load_config(RECIPES / "synthetic" / "apd.yaml")
    assert type(config.teacher) is type(config.model)
    assert config.teacher.weights == "shipped:synthetic_teacher" and config.teacher.aux is False
