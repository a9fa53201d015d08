"""Class lists as people write them: `names:` or `classes:`, optional palette, ignore index, label map.

    # classes.yaml
    classes: [background, person, car]      # or names: [...], or {0: background, 1: person, 2: car}
    palette: [[0, 0, 0], "#dc143c", [0, 0, 142]]   # optional; RGB triples or #rrggbb
    ignore_index: 255                        # optional (default 255): pixels that count for no class
    label_map: {0: background, 7: person, 26: car, 255: ignore}   # optional: raw mask value -> class

With a `label_map`, a mask's raw values are translated (by class id or class name); a raw value that is not
in the map becomes the ignore index. Without one, raw values are class ids.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nfdseg.errors import DataError
from nfdseg.manifest import IGNORE_INDEX, ClassSpec, default_palette

CLASS_LIST_KEYS = ("names", "classes", "palette", "ignore_index", "label_map")
EXAMPLE = "classes: [background, person, car]  (optional: palette, ignore_index, label_map)"


def load_class_list(path: str | Path) -> tuple[ClassSpec, np.ndarray | None]:
    """Read a class list file. Returns (ClassSpec, lookup table uint8[256] raw value -> class id, or None)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class list not found: {path}", fix=f"write {path.name} with `{EXAMPLE}`")
    try:
        meta = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DataError(f"class list {path} is not valid YAML", seen=str(e).splitlines()[0]) from None
    return parse_class_list(meta, str(path))


def class_file(cfg) -> Path | None:
    """The folder format's class list: data.classes (relative to the data root unless absolute), else None
    (ROOT/classes.yaml). Other formats have their own fixed class lists."""
    if cfg.classes and cfg.format != "folder":
        raise DataError(f"data.classes applies to the folder format; {cfg.format} has its own class list",
                        seen=f"data.classes: {cfg.classes}", fix="remove data.classes, or use format: folder")
    return Path(cfg.root) / cfg.classes if cfg.classes else None


def parse_class_list(meta: Any, where: str = "class list") -> tuple[ClassSpec, np.ndarray | None]:
    """The same as load_class_list, from an already parsed mapping (`where` names it in errors)."""
    if isinstance(meta, list):  # a bare list of names is a class list too
        meta = {"names": meta}
    if not isinstance(meta, dict):
        raise DataError(f"{where} must be a mapping with a class list", seen=repr(meta)[:200], fix=f"write `{EXAMPLE}`")
    for key in meta:
        if key not in CLASS_LIST_KEYS:
            close = difflib.get_close_matches(str(key), CLASS_LIST_KEYS, n=1, cutoff=0.5)
            raise DataError(f"{where}: unknown key '{key}'", seen=f"{key}: {meta[key]!r}"[:200],
                            fix=f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(CLASS_LIST_KEYS)}")
    if "names" in meta and "classes" in meta:
        raise DataError(f"{where} has both `names:` and `classes:`", fix="keep one of them")
    names = _names(meta.get("names", meta.get("classes")), where)
    palette = _palette(meta.get("palette"), len(names), where)
    ignore = meta.get("ignore_index", IGNORE_INDEX)
    if isinstance(ignore, bool) or not isinstance(ignore, int) or not 0 <= ignore <= 255:
        raise DataError(f"{where}: ignore_index must be an integer 0-255", seen=repr(ignore))
    if ignore < len(names):
        raise DataError(f"{where}: ignore_index {ignore} is also the id of class '{names[ignore]}'",
                        fix=f"use an ignore index above the class ids ({IGNORE_INDEX} is the usual one)")
    classes = ClassSpec(tuple(names), palette, int(ignore))
    lut = _lookup(meta["label_map"], classes, where) if meta.get("label_map") is not None else None
    return classes, lut


def _names(value: Any, where: str) -> list[str]:
    if value is None:
        raise DataError(f"{where} has no class list", fix=f"write `{EXAMPLE}`")
    if isinstance(value, dict):  # {0: background, 1: person}: ids must be 0..N-1
        try:
            ids = sorted(int(k) for k in value)
        except (TypeError, ValueError):
            raise DataError(f"{where}: a class mapping must be `id: name`", seen=repr(value)[:200]) from None
        if ids != list(range(len(ids))):
            raise DataError(f"{where}: class ids must be 0, 1, ..., N-1 without gaps", seen=f"ids {ids}",
                            fix="number the classes from 0, or map raw mask values with `label_map:`")
        value = [value[k] if k in value else value[str(k)] for k in ids]
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: the class list must be a non-empty list of names", seen=repr(value)[:200],
                        fix=f"write `{EXAMPLE}`")
    names = [str(n) for n in value]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{where}: class names repeat", seen=", ".join(dup), fix="give every class its own name")
    if len(names) > 255:
        raise DataError(f"{where}: {len(names)} classes do not fit in 8-bit masks", fix="use at most 255 classes")
    return names


def _colour(c: Any) -> tuple[int, int, int] | None:
    if isinstance(c, str) and len(c) == 7 and c.startswith("#"):
        try:
            return tuple(int(c[i:i + 2], 16) for i in (1, 3, 5))
        except ValueError:
            return None
    if isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c):
        return tuple(int(v) for v in c)
    return None


def _palette(value: Any, n: int, where: str) -> tuple[tuple[int, int, int], ...]:
    if value is None:
        return default_palette(n)
    if not isinstance(value, list) or len(value) != n:
        raise DataError(f"{where}: the palette needs one colour per class", seen=f"{n} classes, palette {value!r}"[:200],
                        fix="list one [r, g, b] or '#rrggbb' per class, in class order, or drop `palette:`")
    out = []
    for i, c in enumerate(value):
        rgb = _colour(c)
        if rgb is None:
            raise DataError(f"{where}: palette entry {i} is not a colour", seen=repr(c), fix="write [r, g, b] (0-255) or '#rrggbb'")
        out.append(rgb)
    return tuple(out)


def _lookup(label_map: Any, classes: ClassSpec, where: str) -> np.ndarray:
    """uint8[256]: raw value -> class id; values the map does not name -> ignore."""
    if not isinstance(label_map, dict) or not label_map:
        raise DataError(f"{where}: label_map must map raw mask values to classes", seen=repr(label_map)[:200],
                        fix="write e.g. `label_map: {0: background, 7: person, 255: ignore}`")
    index = {n: i for i, n in enumerate(classes.names)}
    lut = np.full(256, classes.ignore_index, np.uint8)
    for raw, target in label_map.items():
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 255:
            raise DataError(f"{where}: label_map key {raw!r} is not a raw mask value 0-255", fix="keys are the values stored in the mask files")
        if isinstance(target, str) and target in index:
            lut[raw] = index[target]
        elif target == "ignore" or target == classes.ignore_index:
            lut[raw] = classes.ignore_index
        elif isinstance(target, int) and not isinstance(target, bool) and 0 <= target < classes.num_classes:
            lut[raw] = target
        else:
            raise DataError(f"{where}: label_map sends raw value {raw} to {target!r}, which is no class",
                            seen=f"classes: {', '.join(classes.names[:12])}", fix="map to a class id, a class name or 'ignore'")
    return lut
