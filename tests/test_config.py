import pytest

from segdistill import UserError
from segdistill.config import load_config


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntrain:\n  iters: 7\ndata:\n  crop_size: [32, 48]\n")
    config = load_config(path, ["train.lr=0.5", "model.backbone=mobilenetv2_100"])
    assert (config.name, config.train.iters, config.train.lr) == ("x", 7, 0.5)
    assert config.data.crop_size == [32, 48] and config.model.backbone == "mobilenetv2_100"
    assert config.train.momentum == 0.9 and config.train.weight_decay == 1e-4


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.iter=5", "did you mean 'train.iters'"),
        ("trian.iters=5", "did you mean 'train'"),
        ("train.iters=abc", "expected an integer"),
        ("train.lr=fast", "expected a number"),
        ("data.crop_size=12", "expected a list"),
        ("model.aux=maybe", "expected true or false"),
        ("noequals", "key=value"),
    ],
)
def test_bad_keys_and_values_are_one_line_errors(override, message):
    with pytest.raises(UserError, match=message) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.yaml is not UTF-8") as info:
        load_config(latin1)
    assert "\n" not in str(info.value)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(UserError):
        load_config(unsafe)
