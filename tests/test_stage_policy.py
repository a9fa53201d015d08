"""Each stage owns its keep / resume / restart / refuse decision, and the CLI and the pipeline call the same one:
distill/stage.py for training, export/stage.py for the export folder; the pipeline's export settings come from
the run config's `export:` section, so `--set export.*` reaches them."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import pytest

from nfdseg.errors import ArtifactError, ConfigError


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_training_stage_keeps_refuses_and_restarts(trained_run, tiny_cfg, tmp_path):
    from nfdseg.distill.stage import run_stage

    run = tmp_path / "run"
    _copy(trained_run / "teacher", run / "teacher")
    student = _copy(trained_run / "student", run / "student")
    before = (student / "checkpoint.json").read_text()
    kept = run_stage(tiny_cfg, "student", student, run / "teacher")
    assert kept.state == "up to date" and (student / "checkpoint.json").read_text() == before

    other = dataclasses.replace(tiny_cfg, distill=dataclasses.replace(tiny_cfg.distill, weight=3.0))
    with pytest.raises(ArtifactError, match="holds a student run with other inputs") as e:
        run_stage(other, "student", student, run / "teacher")  # the CLI's default: nothing discarded unasked
    assert "--restart" in e.value.fix and (student / "checkpoint.json").read_text() == before

    redone = run_stage(other, "student", student, run / "teacher", on_stale="restart", progress=False)
    assert redone.state == "trained"
    assert json.loads((student / "checkpoint.json").read_text())["config"]["distill"]["weight"] == 3.0

    forced = run_stage(other, "student", student, run / "teacher", force=True, progress=False)
    assert forced.state == "trained"
    with pytest.raises(ConfigError, match="needs a trained teacher"):
        run_stage(tiny_cfg, "student", tmp_path / "s2", tmp_path / "no-teacher")


def test_a_stopped_stage_resumes_through_the_policy(tiny_cfg, tmp_path):
    from nfdseg.distill.stage import run_stage
    from nfdseg.distill.trainer import train_stage

    out = tmp_path / "teacher"
    train_stage(tiny_cfg, "teacher", out, stop_after=4, progress=False)  # killed after 4 of 8 iterations
    r = run_stage(tiny_cfg, "teacher", out, progress=False)
    assert r.state == "resumed" and r.manifest is not None


def test_distill_cli_uses_the_same_policy(trained_run, tmp_path):
    from nfdseg.app.cli import main

    run = tmp_path / "run"
    _copy(trained_run / "teacher", run / "teacher")
    sets = ["--set", "teacher.model.arch=deeplabv3_resnet_tiny"]
    sets += [a for k, v in {"data.synthetic_train": 64, "data.synthetic_val": 12, "data.synthetic_size": "[48,48]",
                            "data.crop_size": "[48,48]", "data.input_size": "[48,48]", "teacher.train.iters": 8,
                            "teacher.train.batch_size": 4, "teacher.train.eval_every": 4,
                            "teacher.train.ckpt_every": 4, "teacher.train.log_every": 2}.items()
             for a in ("--set", f"{k}={v}")]
    assert main(["distill", "--stage", "teacher", "--out", str(run), "--quiet", *sets]) == 0
    # another teacher iteration count: a stale run, refused (exit 2) without --restart
    stale = [*sets, "--set", "teacher.train.iters=4", "--set", "teacher.train.eval_every=2"]
    assert main(["distill", "--stage", "teacher", "--out", str(run), "--quiet", *stale]) == 2
    assert main(["distill", "--stage", "teacher", "--out", str(run), "--quiet", "--restart", *stale]) == 0
    assert json.loads((run / "teacher/checkpoint.json").read_text())["config"]["teacher"]["train"]["iters"] == 4


def test_export_stage_keeps_an_up_to_date_export_and_refuses_a_foreign_folder(trained_run, tmp_path):
    from nfdseg.export.run import ExportConfig
    from nfdseg.export.stage import export_stage

    cfg = ExportConfig(engine="off", fp16=False)
    out = tmp_path / "export"
    first = export_stage(trained_run / "student", out, cfg)
    assert first.state == "exported" and first.summary["parity_passed"] and "fp32" in first.parity_text
    onnx_time = (out / "model.onnx").stat().st_mtime_ns
    again = export_stage(trained_run / "student", out, cfg)
    assert again.state == "up to date" and (out / "model.onnx").stat().st_mtime_ns == onnx_time
    assert export_stage(trained_run / "student", out, cfg, force=True).state == "exported"

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="holds files an export does not write") as e:
        export_stage(trained_run / "student", foreign, cfg)
    assert "notes.txt" in e.value.seen and (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ArtifactError, match="not an nfdseg checkpoint directory"):
        export_stage(tmp_path, out, cfg)
    assert (out / "model.onnx").is_file()  # a bad checkpoint leaves the earlier export alone


def test_pipeline_export_settings_come_from_the_config(tiny_cfg, tmp_path):
    from nfdseg.app.pipeline import pipeline_export_config
    from nfdseg.config import deep_update
    from nfdseg.distill.config import load_run_config

    from conftest import TINY_OVERRIDES

    default = pipeline_export_config(tiny_cfg, tmp_path)
    assert default.engine == "auto" and default.fp16 and default.parity.max_images == 0
    assert default.triton_dir == str(tmp_path / "triton")
    cfg = load_run_config("quick", deep_update(TINY_OVERRIDES, {"export": {"fp16": False, "engine": "off",
                                                                           "parity": {"fp16_max_delta_miou": 0.2}}}))
    ec = pipeline_export_config(cfg, tmp_path)
    assert (ec.fp16, ec.engine, ec.parity.fp16_max_delta_miou, ec.parity.max_images) == (False, "off", 0.2, 0)
    assert pipeline_export_config(cfg, tmp_path, engine="on").engine == "on"  # the --engine flag wins
    with pytest.raises(ConfigError, match="unknown config key 'export.fp17'"):
        pipeline_export_config(load_run_config("quick", {"export": {"fp17": True}}), tmp_path)
    with pytest.raises(ConfigError, match="export.engine"):
        pipeline_export_config(load_run_config("quick", {"export": {"engine": "sometimes"}}), tmp_path)


def test_export_settings_are_in_no_training_identity(tiny_cfg):
    from nfdseg.distill.config import identity_dict
    from nfdseg.distill.runkey import stage_run_key

    changed = dataclasses.replace(tiny_cfg, export={"fp16": False})
    assert identity_dict(changed) == identity_dict(tiny_cfg)
    assert stage_run_key(changed, "teacher") == stage_run_key(tiny_cfg, "teacher")


def test_pipeline_rejects_a_bad_export_key_before_training(tmp_path):
    r = subprocess.run([sys.executable, "-m", "nfdseg.app.cli", "pipeline", "--out", str(tmp_path / "p"), "--quiet",
                        "--set", "export.fp17=true"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown config key 'export.fp17'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "p" / "teacher").exists()


def test_shared_flags_read_the_same_everywhere():
    from nfdseg.app.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("distill", "pipeline", "data"):
        opts = {o for a in subs[name]._actions for o in a.option_strings}
        assert {"--config", "--set", "--quiet"} <= opts, name
    for name in ("distill", "pipeline"):
        help_of = {o: a.help for a in subs[name]._actions for o in a.option_strings}
        assert help_of["--quiet"] == "no progress bars" and "KEY=VALUE" in subs[name].format_help()
