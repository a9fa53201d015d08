"""Each stage is keyed on its own inputs: a student setting, a `kd` student or a re-export never touch the teacher;
--restart / --overwrite rerun only the stages whose inputs changed. Tiny models, a few iterations."""

import hashlib
import subprocess
import sys

import pytest

from nfdseg.config import deep_update
from nfdseg.distill.config import load_run_config
from nfdseg.distill.runkey import stage_run_key
from nfdseg.manifest import read_manifest

from conftest import TINY_OVERRIDES

SETS = ["--set", "teacher.model.arch=deeplabv3_resnet_tiny", "--set", "student.model.arch=deeplabv3_resnet_tiny",
        "--set", "teacher.train.iters=4", "--set", "student.train.iters=4", "--set", "teacher.train.eval_every=2",
        "--set", "student.train.eval_every=2", "--set", "data.synthetic_val=8", "--set", "data.synthetic_train=24",
        "--set", "data.synthetic_size=[48,48]", "--set", "data.input_size=[48,48]", "--set", "data.crop_size=[48,48]",
        "--set", "teacher.train.batch_size=4", "--set", "student.train.batch_size=4"]


def over(extra):
    return deep_update(TINY_OVERRIDES, extra)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "nfdseg.app.cli", *map(str, args)], capture_output=True, text=True)


def snapshot(folder):
    """Every file's bytes hash and modification time: 'untouched' means both are equal."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir()) if p.is_file()}


def test_keys_depend_only_on_each_stages_inputs():
    cfg = load_run_config("quick", TINY_OVERRIDES)
    t, s = stage_run_key(cfg, "teacher"), stage_run_key(cfg, "student", "sha-a")
    other_student = load_run_config("quick", over({"student": {"train": {"iters": 3}}}))
    kd = load_run_config("quick", over({"distill": {"loss": "kd"}}))
    assert stage_run_key(other_student, "teacher") == t and stage_run_key(kd, "teacher") == t
    assert stage_run_key(other_student, "student", "sha-a") != s and stage_run_key(kd, "student", "sha-a") != s
    assert stage_run_key(cfg, "student", "sha-b") != s, "another teacher's weights: another student"
    other_teacher = load_run_config("quick", over({"teacher": {"train": {"iters": 9}}}))
    assert stage_run_key(other_teacher, "teacher") != t
    assert stage_run_key(other_teacher, "student", "sha-a") == s, "the student sees the teacher only by its sha256"
    chatty = load_run_config("quick", over({"teacher": {"train": {"log_every": 1, "ckpt_every": 1}},
                                            "student": {"train": {"log_every": 1}}}))
    assert stage_run_key(chatty, "teacher") == t and stage_run_key(chatty, "student", "sha-a") == s
    more_data = load_run_config("quick", over({"data": {"synthetic_train": 65}}))
    assert stage_run_key(more_data, "teacher") != t and stage_run_key(more_data, "student", "sha-a") != s
    # the baseline ('none') ignores nfd's settings
    none = load_run_config("quick", over({"distill": {"loss": "none"}}))
    none_w = load_run_config("quick", over({"distill": {"loss": "none", "weight": 0.5}}))
    assert stage_run_key(none, "student", "x") == stage_run_key(none_w, "student", "x")


# one other value for every DistillConfig field but `loss`
CHANGES = {"weight": 0.5, "layers": ("layer4",), "norm": "euclidean", "reduction": "spatial", "temperature": 2.0,
           "cwd_tau": 1.0, "logits_kd_weight": 0.5, "max_ratio": 7.0, "guard_iters": 3, "max_abs_logit": 99.0}
# the fields whose change must give another student, per loss: what that loss reads (build_loss), plus logits KD
# on top where the trainer adds it (nfd and cwd; the baseline 'none' stays undistilled); never the guard's thresholds
SHAPES = {"nfd": {"weight", "layers", "norm", "reduction", "logits_kd_weight"}, "kd": {"weight", "temperature"},
          "cwd": {"weight", "cwd_tau", "logits_kd_weight"}, "none": set()}


@pytest.mark.parametrize("loss", sorted(SHAPES))
def test_student_identity_holds_only_what_its_loss_reads(loss):
    import dataclasses

    base = load_run_config("quick", over({"distill": {"loss": loss}}))
    assert set(CHANGES) == {f.name for f in dataclasses.fields(base.distill)} - {"loss"}, "a new field: classify it"

    def key(cfg, **change):
        return stage_run_key(dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, **change)), "student", "t")

    k = key(base)
    changed = {name for name, value in CHANGES.items() if key(base, **{name: value}) != k}
    assert changed == SHAPES[loss]
    with_kd = dataclasses.replace(base, distill=dataclasses.replace(base.distill, logits_kd_weight=0.5))
    # the temperature shapes logits KD wherever it runs: as the loss (kd) or on top of nfd / cwd
    assert (key(with_kd, temperature=2.0) != key(with_kd)) == (loss != "none")
    assert key(with_kd, max_ratio=7.0, guard_iters=3, max_abs_logit=99.0) == key(with_kd)
    assert stage_run_key(base, "teacher") == stage_run_key(with_kd, "teacher")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("identity") / "run"
    r = cli("distill", "--out", out, "--quiet", *SETS)
    assert r.returncode == 0, r.stderr
    return out


def test_the_baseline_stays_undistilled_when_the_distill_section_adds_logits_kd(run, tmp_path):
    """camvid_cpu sets logits_kd_weight for its NFD student; the pipeline's baseline (loss none, same section) once
    trained as a KD student from it. Its weights must be those of a baseline without logits KD."""
    from nfdseg.distill.trainer import train_stage
    from nfdseg.fsutil import sha256_file

    shas = []
    for weight in (0.0, 3.0):
        cfg = load_run_config("quick", over({"distill": {"loss": "none", "logits_kd_weight": weight},
                                             "student": {"train": {"iters": 3, "eval_every": 3, "amp": "off"}}}))
        m = train_stage(cfg, "student", tmp_path / f"baseline_{weight}", teacher_dir=run / "teacher")
        shas.append(sha256_file(tmp_path / f"baseline_{weight}" / m.artifact))
    assert shas[0] == shas[1]


def test_student_change_keeps_the_teacher_and_restart_reruns_only_the_student(run):
    teacher = snapshot(run / "teacher")
    r = cli("distill", "--out", run, "--quiet", *SETS, "--set", "student.train.iters=3")
    assert r.returncode == 2 and "holds a student run with other inputs" in r.stderr and "--restart" in r.stderr
    assert "teacher deeplabv3_resnet_tiny (up to date, kept)" in r.stdout
    r = cli("distill", "--out", run, "--quiet", *SETS, "--set", "student.train.iters=3", "--restart")
    assert r.returncode == 0, r.stderr
    assert snapshot(run / "teacher") == teacher
    s = read_manifest(run / "student/checkpoint.json")
    assert s.config["student"]["train"]["iters"] == 3 and s.parent_sha256 == read_manifest(run / "teacher/checkpoint.json").sha256


def test_kd_student_beside_the_nfd_one_keeps_both(run):
    teacher, student = snapshot(run / "teacher"), snapshot(run / "student")
    args = ("distill", "--out", run, "--quiet", *SETS, "--stage", "student", "--loss", "kd", "--student-name", "kd")
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert snapshot(run / "teacher") == teacher and snapshot(run / "student") == student
    assert read_manifest(run / "kd/checkpoint.json").config["distill"]["loss"] == "kd"
    kd = snapshot(run / "kd")
    r = cli(*args)
    assert r.returncode == 0 and "up to date, kept" in r.stdout and snapshot(run / "kd") == kd


def test_saved_config_loads_back_to_the_same_run(run):
    from nfdseg.config import parse_overrides

    assert load_run_config(run / "teacher/config.yaml") == load_run_config("quick", parse_overrides(SETS[1::2]))
    for stage in ("teacher", "student"):  # whatever the earlier tests left there: config.yaml is what was trained
        recorded = read_manifest(run / stage / "checkpoint.json").config
        saved = load_run_config(run / stage / "config.yaml").to_dict()
        assert saved == {k: v for k, v in recorded.items() if k not in ("stage", "run_key")}


def test_saved_config_loads_alone_after_the_run_moves(tmp_path):
    """config.yaml is complete in itself (base: none): it loads after the user's files it was built on are gone and
    the run folder has moved, and the pipeline's claim on a folder does not hang on where the config file was."""
    import dataclasses
    import shutil

    import yaml

    from nfdseg.app.pipeline import Pipeline
    from nfdseg.errors import ArtifactError
    from nfdseg.distill.trainer import train_stage

    project = tmp_path / "project"
    (project / "team").mkdir(parents=True)
    (project / "team/team.yaml").write_text(
        "base: quick\nteacher: {model: {arch: deeplabv3_resnet_tiny}, train: {iters: 2, batch_size: 2, eval_every: 2}}\n"
        "data: {synthetic_train: 6, synthetic_val: 2, synthetic_size: [32, 32], crop_size: [32, 32], "
        "input_size: [32, 32]}\n")
    (project / "mine.yaml").write_text("base: team/team.yaml\ndata: {seed: 5}\nstudent: {optim: {lr: 0.02}}\n")
    cfg = load_run_config(project / "mine.yaml")
    assert cfg.base == str((project / "team/team.yaml").resolve()), "built on a user file: an absolute path"
    train_stage(cfg, "teacher", project / "run/teacher", progress=False)
    text = (project / "run/teacher/config.yaml").read_text()
    assert yaml.safe_load(text)["base"] == "none" and f"# built on: {cfg.base}\n" in text
    moved = tmp_path / "elsewhere/run"
    shutil.copytree(project / "run", moved)
    shutil.rmtree(project)  # the user's files and the original run folder are gone
    saved = load_run_config(moved / "teacher/config.yaml")
    assert saved.base == "none" and dataclasses.replace(saved, base=cfg.base) == cfg
    assert saved.data.seed == 5 and saved.student.optim.lr == 0.02 and saved.teacher.train.iters == 2
    Pipeline(cfg, tmp_path / "pipe", progress=False)
    (tmp_path / "pipe/teacher").mkdir()  # the folder is the pipeline's now: claiming it again checks the config
    Pipeline(saved, tmp_path / "pipe", progress=False)  # same values from another path: the same run
    with pytest.raises(ArtifactError, match="holds another run's artifacts"):
        Pipeline(dataclasses.replace(saved, data=dataclasses.replace(saved.data, seed=6)), tmp_path / "pipe",
                 progress=False)
