"""`nfdseg pipeline`: teacher -> NFD student (+ baseline) -> the better student -> export + parity -> bench -> report
-> deploy/.

A stage whose outputs already match its inputs and config (content hashes in the manifests) is
skipped, so an interrupted run resumes where it stopped; `--force STAGE` reruns one stage (and,
through the hashes, everything downstream of it).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from nfdseg.artifacts import (BASELINE_DIR, BENCH_REPORT, CHECKPOINT, ENGINE_SUFFIX, EXPORT_DIR, EXPORT_SUMMARY,
                              ONNX_FP16, ONNX_FP32, ONNX_INT8, PIPELINE_MARKER, REPORT_MD, STUDENT_CHOICE, STUDENT_DIR,
                              TEACHER_DIR, TRITON_DIR, TRITON_VERSION_DIR)
from nfdseg.cliargs import add_config_args, add_out_arg, add_quiet_arg, overrides_of
from nfdseg.errors import ArtifactError, ConfigError
from nfdseg.export.onnx2engine import ENGINE_MODES
from nfdseg.fsutil import sha256_file, sha256_json, write_json_atomic

from .choose import DEPLOY_CHOICES, teacher_lead

log = logging.getLogger(__name__)
# `--force` names; a stage that writes a folder of the run is named for it
STAGES = (TEACHER_DIR, STUDENT_DIR, BASELINE_DIR, EXPORT_DIR, "bench", "report")


class Pipeline:
    def __init__(self, cfg, out: Path, baseline: bool = True, force: tuple[str, ...] = (), overwrite: bool = False,
                 progress: bool = True, bench_seconds: float = 45.0, engine: str | None = None,
                 deploy: str = "better"):
        self.cfg, self.out, self.baseline, self.force = cfg, Path(out), baseline, set(force)
        self.progress, self.bench_seconds, self.deploy = progress, bench_seconds, deploy
        self.export_cfg = pipeline_export_config(cfg, self.out, engine)  # checked before any training
        if deploy == "baseline" and not baseline:
            raise ConfigError("--deploy baseline needs the baseline student", seen="--no-baseline",
                              fix="drop --no-baseline, or deploy the distilled student (--deploy student)")
        self.choice = None
        self.status: list[dict[str, Any]] = []
        self._claim(overwrite)

    # ------------------------------------------------------------------ output directory ownership
    def _claim(self, overwrite: bool) -> None:
        marker = self.out / PIPELINE_MARKER
        # the run's identity is its resolved values: `base` names the config file it was built on (an absolute
        # path for a user's file), which changes when the project moves and changes nothing the run makes
        from nfdseg.distill.config import identity_dict

        values = {k: v for k, v in identity_dict(self.cfg).items() if k != "base"}
        key, older_key = sha256_json(values), sha256_json(identity_dict(self.cfg))  # older_key: markers before this
        if self.out.exists() and any(self.out.iterdir()):
            if not marker.is_file():
                raise ArtifactError(f"{self.out} is not empty and was not written by `nfdseg pipeline`",
                                    seen=", ".join(sorted(p.name for p in self.out.iterdir())[:8]),
                                    fix="choose a new --out directory")
            old = json.loads(marker.read_text())
            if old.get("config_hash") not in (key, older_key) and not overwrite:
                raise ArtifactError(f"{self.out} holds another run's artifacts (made with a different config)",
                                    fix="choose a new --out, or pass --overwrite to rerun the stages the change affects")
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(marker, {"config_hash": key, "config": self.cfg.to_dict()})

    def _line(self, i: int, stage: str, state: str, detail: str, seconds: float) -> None:
        self.status.append({"stage": stage, "state": state, "detail": detail, "seconds": round(seconds, 1)})
        print(f"[{i}/{len(STAGES)}] {stage:<9} {state:<8} {detail} ({seconds:.0f}s)", flush=True)

    # ------------------------------------------------------------------ stages
    def _train(self, i: int, name: str, stage: str, cfg, teacher_dir: Path | None):
        """The stage's own policy (distill/stage.py), as `nfdseg distill --restart` runs it: kept when up to date,
        resumed from last.pt, started over when its inputs changed (e.g. a retrained teacher) or it is forced."""
        from nfdseg.distill.stage import run_stage

        t0 = time.perf_counter()
        r = run_stage(cfg, stage, self.out / name, teacher_dir, on_stale="restart", force=name in self.force,
                      progress=self.progress)
        m = r.manifest
        if r.state == "up to date":
            self._line(i, name, "skipped", f"up to date, mIoU {m.metrics['miou']:.2f}%", time.perf_counter() - t0)
        else:
            self._line(i, name, "done", f"{m.architecture} mIoU {m.metrics['miou']:.2f}%", time.perf_counter() - t0)
        return m

    @property
    def deployed_dir(self) -> Path:
        """The student run that is exported: the distilled one unless the choice (see app/choose.py) says baseline."""
        baseline = self.choice is not None and self.choice.deployed == "baseline"
        return self.out / (BASELINE_DIR if baseline else STUDENT_DIR)

    def _choose(self) -> None:
        """Pick the student to export (app/choose.py); the comparison is kept in choice.json, keyed on both
        checkpoints and the rule, so a rerun with nothing changed does not score them again."""
        from .choose import StudentChoice, choose_student

        baseline = self.out / BASELINE_DIR if self.baseline else None
        key = sha256_json({"student": sha256_file(self.out / STUDENT_DIR / CHECKPOINT), "rule": self.deploy,
                           "baseline": sha256_file(baseline / CHECKPOINT) if baseline else None})
        saved = self.out / STUDENT_CHOICE
        record = json.loads(saved.read_text()) if saved.is_file() else {}
        if record.get("key") == key:
            data = record["choice"]
            self.choice = StudentChoice(**{**data, "gap_ci95": tuple(data["gap_ci95"]) if data["gap_ci95"] else None})
        else:
            self.choice = choose_student(self.out / STUDENT_DIR, baseline, self.deploy)
            write_json_atomic(saved, {"key": key, "choice": self.choice.to_json()})
        print(f"          {self.choice.message}", flush=True)

    def _export(self, i: int):
        """The export stage's own policy (export/stage.py), as `nfdseg export` runs it."""
        from nfdseg.export.stage import export_stage

        t0 = time.perf_counter()
        r = export_stage(self.deployed_dir, self.out / EXPORT_DIR, self.export_cfg, force=EXPORT_DIR in self.force)
        if r.state == "up to date":
            self._line(i, EXPORT_DIR, "skipped", "up to date", time.perf_counter() - t0)
            return r.summary
        summary, passed = r.summary, r.summary["parity_passed"]
        eng = summary.get("engine", {})
        detail = ("engine " + Path(eng["path"]).name) if eng.get("path") else "NO TensorRT engine (ONNX for onnxruntime)"
        self._line(i, EXPORT_DIR, "done" if passed else "FAILED",
                   f"{', '.join(summary['files'])}; {detail}; parity {'ok' if passed else 'BROKEN'}",
                   time.perf_counter() - t0)
        if not passed:
            print(r.parity_text)
        return summary

    def bench_budget(self, rows: int):
        """The bench stage's budget: `bench_seconds` in all, 70 % of it spread over the timed loops (infer-only and
        end-to-end per row), the rest for warm-ups and the minimum count; rows that cannot fit are skipped."""
        from nfdseg.serve.bench import BenchBudget

        return BenchBudget(duration_s=round(max(0.05, 0.7 * self.bench_seconds / (2 * rows)), 3), min_iters=2,
                           warmup=1, total_s=self.bench_seconds)

    def _bench(self, i: int):
        from nfdseg.serve import Segmenter
        from nfdseg.serve.bench import DEFAULT_BATCHES, BenchTarget, bench_targets

        out = self.out / BENCH_REPORT
        export = self.out / EXPORT_DIR
        targets = bench_target_list(export, self.deployed_dir)
        batches = DEFAULT_BATCHES
        budget = self.bench_budget(len(targets) * len(batches))
        key = sha256_json({"export": json.loads((export / EXPORT_SUMMARY).read_text())["key"],
                           "budget": repr(budget)})
        t0 = time.perf_counter()
        if "bench" not in self.force and out.is_file() and json.loads(out.read_text()).get("key") == key:
            self._line(i, "bench", "skipped", "up to date", time.perf_counter() - t0)
            return json.loads(out.read_text())
        result = bench_targets([BenchTarget(p.name, b, lambda b=b, p=p, pr=pr: Segmenter(p, backend=b, precision=pr))
                                for b, p, pr in targets], batches, budget, progress=self.progress)
        result["key"] = key
        write_json_atomic(out, result)
        self._line(i, "bench", "done", f"{sum('infer' in r for r in result['rows'])} rows timed in the "
                   f"{budget.total_s:g} s budget, {result['rows_skipped']} left out to fit it (see bench.json)",
                   time.perf_counter() - t0)
        return result

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        import dataclasses


        from .report import write_deploy, write_report

        t_start = time.perf_counter()
        teacher = self._train(1, TEACHER_DIR, "teacher", self.cfg, None)
        student = self._train(2, STUDENT_DIR, "student", self.cfg, self.out / TEACHER_DIR)
        baseline = None
        if self.baseline:
            undistilled = dataclasses.replace(self.cfg.distill, loss="none", logits_kd_weight=0.0)
            base_cfg = dataclasses.replace(self.cfg, distill=undistilled)
            baseline = self._train(3, BASELINE_DIR, "student", base_cfg, self.out / TEACHER_DIR)
            lead = teacher_lead(teacher.metrics["miou"], baseline.metrics["miou"])
            if lead.small:
                log.warning("%s", lead.message[0].upper() + lead.message[1:])
            else:
                print(f"          {lead.message[0].upper() + lead.message[1:]}", flush=True)
        else:
            self._line(3, BASELINE_DIR, "off", "--no-baseline", 0.0)
        self._choose()
        export = self._export(4)
        triton_versions = sorted((self.out / TRITON_DIR).glob("*/" + TRITON_VERSION_DIR))
        record_choice([self.out / EXPORT_DIR, *triton_versions], self.choice)
        bench = self._bench(5)
        t0 = time.perf_counter()
        deploy = write_deploy(self.out)
        report = write_report(self.out, teacher, student, baseline, export, bench, self.status,
                              wall_s=time.perf_counter() - t_start, choice=self.choice, deployed_dir=self.deployed_dir)
        self._line(6, "report", "done", f"{self.out / REPORT_MD}; deployable: {deploy}", time.perf_counter() - t0)
        print(f"\n{self.choice.message}", flush=True)
        return report


def bench_target_list(export: Path, deployed_dir: Path) -> list[tuple[str, Path, str]]:
    """(backend, artifact, precision) the bench stage times: the first engine, the ONNX models on onnxruntime, the
    fp32 and INT8 models on OpenVINO (where it is not installed its rows say so in bench.json and report.md), and
    the deployed checkpoint on torch. model.int8.onnx only when the export made (and kept) one."""
    int8 = (export / ONNX_INT8).is_file()
    targets = [("onnxruntime", export / ONNX_FP32, "fp32"), ("onnxruntime", export / ONNX_FP16, "fp16")]
    targets += [("onnxruntime", export / ONNX_INT8, "int8")] if int8 else []
    targets += [("openvino", export / ONNX_FP32, "fp32")] + ([("openvino", export / ONNX_INT8, "int8")] if int8 else [])
    engines = sorted(export.glob("*" + ENGINE_SUFFIX))
    return [("tensorrt", e, "auto") for e in engines[:1]] + targets + [("torch", deployed_dir, "auto")]


def pipeline_export_config(cfg, out: Path, engine: str | None = None):
    """The export stage's ExportConfig: the pipeline's defaults (parity on every validation image, a Triton
    repository beside the run), then the run config's `export:` section (`--set export.fp16=false`), then the
    --engine flag when given. Unknown keys and bad values are ConfigErrors naming the `export.` key."""
    from nfdseg.config import check_choices, deep_update, from_dict
    from nfdseg.export.run import ExportConfig

    data = deep_update({"parity": {"max_images": 0}, "triton_dir": str(out / TRITON_DIR)}, dict(cfg.export))
    if engine is not None:
        data["engine"] = engine
    export_cfg = from_dict(ExportConfig, data, "export")
    check_choices(export_cfg, "export")
    return export_cfg


def record_choice(folders: list[Path], choice) -> None:
    """Write which student was exported, and why, into the manifest of every exported ONNX model and engine in
    `folders` (the export folder and the Triton repository's version folders)."""
    import dataclasses

    from nfdseg.manifest import read_manifest, write_manifest

    for path in sorted(p for folder in folders for p in folder.glob("*.json")):
        try:
            m = read_manifest(path, verify_sha=False)
        except ArtifactError:  # parity.json, export_summary.json: not manifests
            continue
        if m.metrics.get("student_choice") != choice.to_json():
            write_manifest(dataclasses.replace(m, metrics={**m.metrics, "student_choice": choice.to_json()}), path)


def register(sub) -> None:
    p = sub.add_parser("pipeline", help="the whole pipeline: teacher, NFD student, baseline, export, bench, report",
                       description="Run every stage in order on the built-in synthetic data (or the config's dataset). "
                                   "Finished stages whose inputs and config are unchanged are skipped, so an interrupted "
                                   "run resumes where it stopped. The NFD student and the undistilled baseline are "
                                   "scored on the validation split and the better one is exported (--deploy pins one). "
                                   "Writes report.md, report.json and deploy/.")
    add_config_args(p, what="its export: section holds the export settings", set_example="export.fp16=false")
    add_out_arg(p, "runs/quick")
    p.add_argument("--no-baseline", action="store_true", help="skip the baseline student (no NFD comparison)")
    p.add_argument("--force", action="append", default=[], choices=STAGES, metavar="STAGE",
                   help=f"rerun this stage even if it is up to date ({', '.join(STAGES)}); repeatable")
    p.add_argument("--overwrite", action="store_true", help="reuse an output directory made with another config")
    p.add_argument("--engine", choices=ENGINE_MODES, default=None,
                   help="TensorRT engine: auto = when TensorRT is installed (the default, or the config's "
                        "export.engine)")
    p.add_argument("--bench-seconds", type=float, default=45.0,
                   help="time budget of the bench stage in seconds (default 45): each row runs for its share, "
                        "large batches that cannot fit are skipped and listed in bench.json")
    p.add_argument("--deploy", choices=DEPLOY_CHOICES, default="better",
                   help="which student to export: better = the distilled student unless the baseline beats it on the "
                        "validation split (default; the report's first line says when it does), or pin student "
                        "(distilled) / baseline")
    add_quiet_arg(p)
    p.set_defaults(func=cmd_pipeline)


def cmd_pipeline(args) -> int:
    from nfdseg.distill.config import load_run_config

    cfg = load_run_config(args.config, overrides_of(args))
    pipe = Pipeline(cfg, Path(args.out), baseline=not args.no_baseline, force=tuple(args.force),
                    overwrite=args.overwrite, progress=not args.quiet, engine=args.engine,
                    bench_seconds=args.bench_seconds, deploy=args.deploy)
    report = pipe.run()
    print(f"\nreport: {Path(args.out) / REPORT_MD}")
    return 0 if report["checks"]["parity_passed"] else 1
