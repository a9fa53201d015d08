"""Config loading (unknown keys, types, built-ins) and manifest round trips and refusals."""

import json

import pytest

from nfdseg.config import parse_overrides
from nfdseg.distill.config import RunConfig, load_run_config
from nfdseg.errors import ArtifactError, ConfigError
from nfdseg.manifest import ClassSpec, Manifest, PreprocessSpec, default_palette, read_manifest, write_manifest


def test_builtin_configs_load():
    quick = load_run_config("quick")
    assert isinstance(quick, RunConfig) and quick.distill.loss == "nfd" and quick.distill.layers == ("layer2", "layer3", "layer4", "head")
    cs = load_run_config("cityscapes_r101_r18")
    assert cs.data.crop_size == (512, 1024) and cs.student.train.iters == 40000
    assert cs.student.optim.lr == 0.02 and cs.student.optim.poly_power == 0.9 and cs.student.optim.weight_decay == 1e-4
    assert cs.teacher.model.arch == "deeplabv3_resnet101" and cs.student.model.arch == "deeplabv3_resnet18"


def test_unknown_key_suggests_closest(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("student:\n  trian:\n    iters: 5\n")
    with pytest.raises(ConfigError) as e:
        load_run_config(p)
    assert "student.trian" in str(e.value) and "did you mean 'train'" in str(e.value)


def test_type_errors_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="must be int"):
        load_run_config("quick", {"student": {"train": {"iters": "many"}}})
    with pytest.raises(ConfigError, match="distill.loss"):
        load_run_config("quick", {"distill": {"loss": "magic"}})
    with pytest.raises(ConfigError, match="data.root is required"):
        load_run_config("quick", {"data": {"format": "cityscapes"}})
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(bad)


def test_overrides_parse_yaml_scalars():
    assert parse_overrides(["a.b=3", "a.c=[1, 2]", "d=true"]) == {"a": {"b": 3, "c": [1, 2]}, "d": True}
    with pytest.raises(ConfigError):
        parse_overrides(["nokey"])


def test_a_bare_off_means_off_in_a_file_and_on_the_command_line(tmp_path):
    # YAML reads a bare `off` as false; train.amp offers "off", so both spellings the docs use must work
    p = tmp_path / "c.yaml"
    p.write_text("teacher:\n  train:\n    amp: off\n")
    cfg = load_run_config(p, parse_overrides(["student.train.amp=off"]))
    assert (cfg.teacher.train.amp, cfg.student.train.amp) == ("off", "off")
    # a true/false where the field has no such word is still refused, with the choices
    with pytest.raises(ConfigError, match="train.amp' must be one of"):
        load_run_config("quick", parse_overrides(["student.train.amp=yes"]))
    with pytest.raises(ConfigError, match="distill.loss"):
        load_run_config("quick", parse_overrides(["distill.loss=off"]))
    # in code a bool is a slip, not YAML: a config built there is refused by check_choices
    import dataclasses

    from nfdseg.config import check_choices
    from nfdseg.export.run import ExportConfig

    with pytest.raises(ConfigError, match="train.amp"):
        check_choices(dataclasses.replace(cfg.student.train, amp=False), "train")
    with pytest.raises(ConfigError, match="engine"):
        check_choices(ExportConfig(engine=False))


def _manifest(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"weights")
    m = Manifest(kind="onnx", artifact="model.bin", architecture="x",
                 classes=ClassSpec(("a", "b"), default_palette(2)), preprocess=PreprocessSpec(input_size=(64, 64)))
    return write_manifest(m, tmp_path / "model.json")


def test_manifest_round_trip_and_sha(tmp_path):
    m = _manifest(tmp_path)
    back = read_manifest(tmp_path / "model.json", expect_kind="onnx")
    assert back == m and back.sha256 and back.num_classes == 2
    (tmp_path / "model.bin").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        read_manifest(tmp_path / "model.json")


def test_manifest_refusals(tmp_path):
    _manifest(tmp_path)
    with pytest.raises(ArtifactError, match="expected a engine manifest"):
        read_manifest(tmp_path / "model.json", expect_kind="engine")
    data = json.loads((tmp_path / "model.json").read_text())
    data["format_version"] = 99
    (tmp_path / "v.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="format version 99"):
        read_manifest(tmp_path / "v.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_manifest(tmp_path / "junk.json")
    with pytest.raises(ArtifactError, match="not found"):
        read_manifest(tmp_path / "absent.json")


def test_user_config_builds_on_quick_and_keeps_what_it_does_not_write(tmp_path):
    quick = load_run_config("quick")
    p = tmp_path / "mine.yaml"
    p.write_text("data: {format: folder, root: /data/mine}\nteacher: {train: {iters: 20}}\n")
    cfg = load_run_config(p)
    assert cfg.base == "quick" and cfg.data.root == "/data/mine" and cfg.teacher.train.iters == 20
    assert cfg.teacher.model.arch == quick.teacher.model.arch == "deeplabv3_resnet18_w32", "not the dataclass default"
    assert cfg.teacher.train.batch_size == quick.teacher.train.batch_size and cfg.student == quick.student
    assert cfg.data.crop_size == quick.data.crop_size == (96, 96)
    assert cfg.to_dict()["base"] == "quick" and quick.base == "none"


def test_named_base_chain_and_loops(tmp_path):
    (tmp_path / "team.yaml").write_text("base: cityscapes_r101_r18\nstudent: {train: {iters: 77}}\n")
    (tmp_path / "mine.yaml").write_text("base: team.yaml\ndata: {root: /data/cs}\n")
    cfg = load_run_config(tmp_path / "mine.yaml")
    assert cfg.student.train.iters == 77 and cfg.data.root == "/data/cs" and cfg.data.crop_size == (512, 1024)
    assert cfg.teacher.model.arch == "deeplabv3_resnet101" and cfg.base == str((tmp_path / "team.yaml").resolve())
    bare = tmp_path / "bare.yaml"
    bare.write_text("base: none\nteacher: {model: {arch: deeplabv3_resnet50}}\n")
    assert load_run_config(bare).student.train.iters == 600, "base none: the dataclass defaults"
    assert load_run_config(tmp_path / "team.yaml").base == "cityscapes_r101_r18"
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_run_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="no built-in config named 'quik'"):
        (tmp_path / "typo.yaml").write_text("base: quik\n")
        load_run_config(tmp_path / "typo.yaml")
    with pytest.raises(ConfigError, match="cannot be set with --set"):
        load_run_config("quick", {"base": "none"})


def test_teacher_equal_to_student_only_when_written(tmp_path):
    p = tmp_path / "same.yaml"
    p.write_text("student: {model: {arch: deeplabv3_resnet18_w32}}\n")
    with pytest.raises(ConfigError) as e:
        load_run_config(p)
    assert "both deeplabv3_resnet18_w32" in str(e.value) and "teacher.model.arch" in e.value.fix
    with pytest.raises(ConfigError, match="both deeplabv3_resnet18_w32"):
        load_run_config("quick", {"student": {"model": {"arch": "deeplabv3_resnet18_w32"}}})
    p.write_text("teacher: {model: {arch: deeplabv3_resnet18_w32}}\nstudent: {model: {arch: deeplabv3_resnet18_w32}}\n")
    assert load_run_config(p).teacher.model.arch == "deeplabv3_resnet18_w32"
    same = {"teacher": {"model": {"arch": "deeplabv3_resnet_tiny"}}, "student": {"model": {"arch": "deeplabv3_resnet_tiny"}}}
    assert load_run_config("quick", same).student.model.arch == "deeplabv3_resnet_tiny"
