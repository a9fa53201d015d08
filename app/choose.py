"""Which student the pipeline ships: the better of the distilled student and the baseline, unless the user pinned
one, with the gap measured against the noise of the validation set.

The noise is a paired bootstrap over validation images: both students are scored image by image (confusion
matrices), images are resampled with replacement, and the spread of the mIoU difference gives a 95 % interval.
It says how much of a gap the choice of validation images alone can make. It does not include training-seed
noise (one seed per student here; benchmarks/distill_compare.py measures that with several seeds), nor the bias
of picking each best.pt on the same images, so it understates the uncertainty of the choice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nfdseg.metrics import ConfusionMatrix

DEPLOY_CHOICES = ("better", "student", "baseline")  # --deploy: the better one by val mIoU, or a pinned one


@dataclass(frozen=True)
class StudentChoice:
    """The outcome: which run is exported (`deployed`: 'student' or 'baseline'), why, and the measured gap."""

    deployed: str
    rule: str  # the --deploy value
    student_miou: float | None
    baseline_miou: float | None
    gap: float | None  # distilled minus baseline, mIoU points
    gap_ci95: tuple[float, float] | None
    images: int
    message: str

    def to_json(self) -> dict:
        return asdict(self)


def per_image_confusions(seg, source, limit: int = 0) -> np.ndarray:
    """int64 [images, C, C] confusion matrices of `seg` on `source`, one per image, scored as nfdseg.serve.evaluate
    scores (the label map at the mask's own size)."""
    from nfdseg.serve.evaluate import evaluate

    mats: list[np.ndarray] = []

    def collect(start: int, _out, preds) -> None:
        for k, pred in enumerate(preds):
            cm = ConfusionMatrix(seg.manifest.num_classes, source.classes.ignore_index)
            cm.update(pred.labels, source.load(start + k)[1])
            mats.append(cm.matrix)

    evaluate(seg, source, limit=limit, progress=False, on_batch=collect)
    return np.stack(mats)


def miou_of(matrix: np.ndarray) -> np.ndarray:
    """mIoU (%) of confusion matrices [..., C, C], over the classes that occur (NaN classes left out)."""
    tp = np.diagonal(matrix, axis1=-2, axis2=-1).astype(np.float64)
    denom = matrix.sum(-2) + matrix.sum(-1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)
    return np.nanmean(iou, axis=-1) * 100.0


def paired_bootstrap(a: np.ndarray, b: np.ndarray, samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of mIoU(a) - mIoU(b) when the images (axis 0 of both [images, C, C]) are resampled together."""
    n = a.shape[0]
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(samples)])  # [samples, n]
    flat_a, flat_b = a.reshape(n, -1), b.reshape(n, -1)
    shape = (samples, *a.shape[1:])
    diff = miou_of((counts @ flat_a).reshape(shape)) - miou_of((counts @ flat_b).reshape(shape))
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return round(float(lo), 3), round(float(hi), 3)


def choose_student(student_dir: Path, baseline_dir: Path | None, rule: str = "better",
                   samples: int = 2000) -> StudentChoice:
    """Compare the distilled student with the baseline on the validation split the student recorded, and pick
    the one to export under `rule` (DEPLOY_CHOICES)."""
    from nfdseg.serve import Segmenter
    from nfdseg.serve.evaluate import load_eval_source

    if baseline_dir is None:
        return StudentChoice("student", rule, None, None, None, None, 0,
                             "no baseline student was trained (--no-baseline): the distilled student is deployed, "
                             "unchecked against an undistilled one")
    seg_s = Segmenter(student_dir, backend="torch", precision="fp32")
    seg_b = Segmenter(baseline_dir, backend="torch", precision="fp32")
    source = load_eval_source(seg_s, "default", "", "")
    limit = int(seg_s.manifest.config.get("data", {}).get("max_val_images", 0) or 0)  # as the trainer scored
    cms_s, cms_b = per_image_confusions(seg_s, source, limit), per_image_confusions(seg_b, source, limit)
    m_s, m_b = float(miou_of(cms_s.sum(0))), float(miou_of(cms_b.sum(0)))
    ci = paired_bootstrap(cms_s.astype(np.float64), cms_b.astype(np.float64), samples) if len(cms_s) > 1 else None
    return decide(m_s, m_b, ci, rule, len(cms_s))


def decide(m_s: float, m_b: float, ci: tuple[float, float] | None, rule: str, images: int) -> StudentChoice:
    """The choice from the two students' mIoU (%) and the 95 % interval of their difference (None: one image,
    no estimate of the noise)."""
    gap = round(m_s - m_b, 3)
    deployed = ("student" if gap >= 0 else "baseline") if rule == "better" else rule
    if ci is None:
        noise = "no interval: one val image gives no estimate of the noise"
    else:
        where = "larger than" if ci[0] > 0 or ci[1] < 0 else "within"
        noise = f"95 % interval over val images [{ci[0]:+.2f}, {ci[1]:+.2f}], {where} that noise"
    head = (f"distilled student {m_s:.2f} % vs baseline {m_b:.2f} % mIoU on {images} val images: gap {gap:+.2f} "
            f"points ({noise}; one training seed each)")
    if gap < 0:
        head = "THE BASELINE BEAT THE DISTILLED STUDENT: " + head
    if deployed == "baseline" and rule == "better":
        tail = "deployed: the baseline student (the better one; pass --deploy student to ship the distilled one)"
    elif deployed == "student" and gap < 0:
        tail = "deployed: the distilled student, pinned with --deploy student although it is the worse one"
    else:
        tail = f"deployed: the {'distilled' if deployed == 'student' else 'baseline'} student" + \
               (" (pinned with --deploy)" if rule != "better" else " (the better one)")
    return StudentChoice(deployed, rule, round(m_s, 3), round(m_b, 3), gap, None if ci is None else tuple(ci), images,
                         f"{head}; {tail}")


# Below this lead (teacher minus the undistilled student, val mIoU points) distillation has little to pass on.
# Measured on CamVid (benchmarks/results/distill_compare_camvid*_cpu2.json, 3 seeds): a 0.8-point lead gave NFD
# -1.8 points, a 6.8-point lead +1.6.
SMALL_TEACHER_LEAD = 3.0


@dataclass(frozen=True)
class TeacherLead:
    """How far the teacher is ahead of the undistilled student, and what that means for distillation."""

    teacher_miou: float
    baseline_miou: float
    lead: float  # mIoU points
    small: bool
    message: str

    def to_json(self) -> dict:
        return asdict(self)


def teacher_lead(teacher_miou: float, baseline_miou: float, threshold: float = SMALL_TEACHER_LEAD) -> TeacherLead:
    """The teacher's lead over the baseline student (mIoU %, both on the val split) and the advice that goes with it."""
    lead = round(teacher_miou - baseline_miou, 3)
    small = lead < threshold
    if small:
        message = (f"the teacher leads the undistilled student by only {lead:+.2f} mIoU points ({teacher_miou:.2f} vs "
                   f"{baseline_miou:.2f}): distillation has little to transfer (on CamVid a 0.8-point lead made NFD "
                   f"lose 1.8 points). Train the teacher longer (teacher.train.iters), give it a pretrained backbone "
                   f"(teacher.model.pretrained), or use a larger teacher")
    else:
        message = (f"the teacher leads the undistilled student by {lead:+.2f} mIoU points ({teacher_miou:.2f} vs "
                   f"{baseline_miou:.2f}): enough to distil")
    return TeacherLead(teacher_miou, baseline_miou, lead, small, message)
