"""Why NFD does or does not gain: feature-map statistics of a teacher and its students, measured on real photos.

For every distilled layer, on the configured data (fit on the train split, scored on the val split):
- **linear probe**: a ridge-regression classifier on each model's own features at the feature resolution
  (class-balanced, features z-scored over the train set), scored as mIoU over val positions. How much class
  information the layer holds; the teacher's lead over a student at a layer is what distillation there can pass on.
- **NFD residual**: mean over val of mean((N(F_t) - N(W F_s))^2), the per-element NFD term (2.0 = unrelated,
  0 = identical). W is the student's trained connector where it has one (an NFD student), else a least-squares
  1x1 map fitted on train: how much of the teacher's normalised features the student's features can express.
  Also per class (positions whose label is that class), and the share of the teacher's normalised variance the
  best rank-C_s map could explain (the student's channel count bounds what it can imitate).
- **teacher channel scale**: per-sample spatial std of each teacher channel relative to the layer's median;
  channels near zero are amplified to unit variance by the normalisation.

    python benchmarks/nfd_features.py --config camvid_cpu --set data.root=$CAMVID --teacher T \\
        --student none=DIR --student nfd=DIR --student kd=DIR --tag camvid_cpu2
Writes benchmarks/results/nfd_features_<tag>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402

RIDGE = 1e-2


def load_split(cfg, split: str, limit: int = 0):
    from nfdseg.data import build_source, preprocess_spec
    from nfdseg.preprocess import normalize, resize_image

    source = build_source(cfg.data, split)
    spec = preprocess_spec(cfg.data)
    n = len(source) if not limit else min(limit, len(source))
    images, masks = [], []
    for i in range(n):
        img, mask = source.load(i)
        images.append(normalize(resize_image(img, tuple(cfg.data.input_size)), spec))
        masks.append(mask)
    return np.stack(images), masks, source.classes


def features(model, images: np.ndarray, layers: list[str], batch: int = 16) -> dict[str, np.ndarray]:
    import torch

    out: dict[str, list] = {k: [] for k in layers}
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            _, feats = model(torch.from_numpy(images[i:i + batch]), return_features=True)
            for k in layers:
                out[k].append(feats[k].float().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def labels_at(masks: list[np.ndarray], hw: tuple[int, int]) -> np.ndarray:
    from nfdseg.preprocess import resize_labels

    return np.stack([resize_labels(m, hw) for m in masks]).reshape(-1)


def positions(f: np.ndarray) -> np.ndarray:
    """N x C x H x W -> (N*H*W) x C."""
    return f.transpose(0, 2, 3, 1).reshape(-1, f.shape[1])


def nfd_normalize(f: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mean = f.mean(axis=(2, 3), keepdims=True)
    var = f.var(axis=(2, 3), keepdims=True)
    return (f - mean) / np.sqrt(var + eps)


def miou(pred: np.ndarray, gt: np.ndarray, k: int) -> tuple[float, list[float | None]]:
    keep = gt < k
    cm = np.bincount(gt[keep] * k + pred[keep], minlength=k * k).reshape(k, k)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    ious = [float(inter[c] / union[c] * 100) if union[c] else None for c in range(k)]
    present = [v for v in ious if v is not None]
    return float(np.mean(present)), ious


def linear_probe(f_tr: np.ndarray, y_tr: np.ndarray, f_va: np.ndarray, y_va: np.ndarray, k: int) -> dict:
    x_tr, x_va = positions(f_tr), positions(f_va)
    keep = y_tr < k
    x_tr, y = x_tr[keep], y_tr[keep]
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr = np.hstack([(x_tr - mu) / sd, np.ones((len(x_tr), 1))])
    x_va = np.hstack([(x_va - mu) / sd, np.ones((len(x_va), 1))])
    freq = np.bincount(y, minlength=k).astype(np.float64)
    w = (1.0 / np.maximum(freq, 1))[y]
    w *= len(y) / w.sum()
    target = -np.ones((len(y), k))
    target[np.arange(len(y)), y] = 1.0
    xw = x_tr * w[:, None]
    beta = np.linalg.solve(x_tr.T @ xw + RIDGE * len(y) * np.eye(x_tr.shape[1]), xw.T @ target)
    value, per_class = miou((x_va @ beta).argmax(1), y_va, k)
    return {"miou": round(value, 2), "per_class_iou": [None if v is None else round(v, 1) for v in per_class]}


def residual(nt_va: np.ndarray, ns_va: np.ndarray, y_va: np.ndarray, k: int, names) -> dict:
    d2 = ((nt_va - ns_va) ** 2).mean(axis=1)  # per position, mean over channels
    per_class = {names[c]: round(float(d2[y_va == c].mean()), 3) if (y_va == c).any() else None for c in range(k)}
    return {"mean": round(float(d2.mean()), 3), "per_class": per_class}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="camvid_cpu")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", action="append", default=[], help="LABEL=DIR (repeatable)")
    ap.add_argument("--layers", default="layer2,layer3,layer4,head")
    ap.add_argument("--limit", type=int, default=0, help="images per split (0: all)")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()

    import torch
    from nfdseg.config import parse_overrides
    from nfdseg.distill.config import load_run_config
    from nfdseg.models.checkpoint import load_model_from_dir

    torch.manual_seed(0)
    cfg = load_run_config(args.config, parse_overrides(args.overrides))
    layers = args.layers.split(",")
    x_tr, m_tr, classes = load_split(cfg, "train", args.limit)
    x_va, m_va, _ = load_split(cfg, "val", args.limit)
    k, names = classes.num_classes, list(classes.names)

    teacher, t_manifest = load_model_from_dir(args.teacher)
    t_tr, t_va = features(teacher, x_tr, layers), features(teacher, x_va, layers)
    hw = {name: t_va[name].shape[-2:] for name in layers}
    y_tr = {name: labels_at(m_tr, hw[name]) for name in layers}
    y_va = {name: labels_at(m_va, hw[name]) for name in layers}
    result = {"benchmark": "nfd_features", "machine": machine(), "git": git_rev(), "config": args.config,
              "overrides": args.overrides, "images": {"train": len(x_tr), "val": len(x_va)}, "classes": names,
              "method": __doc__.split("\n\n")[1], "ridge": RIDGE, "layers": layers, "models": {}}

    t_rows = {}
    for name in layers:
        sd = t_va[name].std(axis=(2, 3))  # N x C
        rel = sd / np.median(sd, axis=1, keepdims=True).clip(1e-12)
        t_rows[name] = {"channels": int(t_va[name].shape[1]), "hw": list(hw[name]),
                        "probe": linear_probe(t_tr[name], y_tr[name], t_va[name], y_va[name], k),
                        "channel_std_rel_p5_p50_p95": [round(float(v), 3) for v in np.percentile(rel, [5, 50, 95])],
                        "share_channels_below_0.1_of_median": round(float((rel < 0.1).mean()), 4),
                        "share_dead_channels(std<1e-4)": round(float((sd < 1e-4).mean()), 4)}
        print("teacher", name, t_rows[name]["probe"]["miou"], flush=True)
    result["models"]["teacher"] = {"dir": args.teacher, "arch": t_manifest.architecture,
                                   "val_miou": t_manifest.metrics.get("miou"), "layers": t_rows}

    for item in args.student:
        label, _, path = item.partition("=")
        model, manifest = load_model_from_dir(path)
        last = torch.load(Path(path) / "last.pt", map_location="cpu", weights_only=False)
        connectors = last.get("distill") or {}
        model.load_state_dict(last["model"])  # the weights the connectors were trained with (best.pt may be earlier)
        s_tr, s_va = features(model, x_tr, layers), features(model, x_va, layers)
        rows = {}
        for name in layers:
            f_tr = torch.nn.functional.interpolate(torch.from_numpy(s_tr[name]), size=tuple(hw[name]), mode="bilinear",
                                                   align_corners=False).numpy()
            f_va = torch.nn.functional.interpolate(torch.from_numpy(s_va[name]), size=tuple(hw[name]), mode="bilinear",
                                                   align_corners=False).numpy()
            nt_tr, nt_va = positions(nfd_normalize(t_tr[name])), positions(nfd_normalize(t_va[name]))
            key = f"connectors.{name}.weight"
            if key in connectors:
                w = connectors[key].float().numpy()[:, :, 0, 0]  # C_t x C_s
                how = "the student's trained connector"
            else:
                # least squares on the normalised target: fit W to N(F_t) from F_s (the normalisation after W is
                # per-channel affine, so a linear fit on standardised inputs is a fair stand-in)
                xs_n = positions(nfd_normalize(f_tr))
                w = np.linalg.lstsq(xs_n, nt_tr, rcond=None)[0].T
                f_va = nfd_normalize(f_va)
                how = "a least-squares 1x1 map fitted on train"
            mapped = np.einsum("tc,nchw->nthw", w, f_va)
            ns_va = positions(nfd_normalize(mapped))
            rank = min(f_va.shape[1], nt_tr.shape[1])
            sv = np.linalg.svd(nt_tr[:20000], compute_uv=False) ** 2  # the first 20,000 train positions
            rows[name] = {"channels": int(s_va[name].shape[1]), "connector": how,
                          "probe": linear_probe(s_tr[name], labels_at(m_tr, s_tr[name].shape[-2:]), s_va[name],
                                                labels_at(m_va, s_va[name].shape[-2:]), k),
                          "nfd_residual": residual(nt_va, ns_va, y_va[name], k, names),
                          "teacher_variance_share_in_top_student_rank": round(float(sv[:rank].sum() / sv.sum()), 3)}
            print(label, name, rows[name]["probe"]["miou"], rows[name]["nfd_residual"]["mean"], flush=True)
        result["models"][label] = {"dir": path, "arch": manifest.architecture, "val_miou": manifest.metrics.get("miou"),
                                   "distill": (manifest.config or {}).get("distill"), "layers": rows}
        out = RESULTS / f"nfd_features_{args.tag or result['machine']['tag']}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
