"""The torch view of a dataset source for training: random scale, crop and flip.

Evaluation does not go through here: it is the runtime's one evaluation (nfdseg.serve.evaluate), which
scores each image at its label's own size."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from nfdseg.manifest import PreprocessSpec
from nfdseg.preprocess import normalize

from .data.config import DataConfig
from .data.synthetic import SyntheticScenes


class SegDataset(torch.utils.data.Dataset):
    """The training view of a source (random scale, crop, flip).

    Items are (float32 3xHxW normalised image, int64 HxW mask). Augmentation randomness comes from
    (seed, epoch-free item index, call count) through torch's worker-seeded generator.
    """

    def __init__(self, source, spec: PreprocessSpec, crop_size=DataConfig.crop_size,
                 scale_range=DataConfig.scale_range, hflip: bool = DataConfig.hflip):
        self.source, self.spec = source, spec
        self.crop_size, self.scale_range, self.hflip = tuple(crop_size), tuple(scale_range), hflip
        self.length = len(source)
        self.ignore = source.classes.ignore_index
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cacheable = isinstance(source, SyntheticScenes)

    def __len__(self) -> int:
        return self.length

    def _load(self, index: int):
        if self._cacheable:
            if index not in self._cache:
                self._cache[index] = self.source.load(index)
            return self._cache[index]
        return self.source.load(index)

    def __getitem__(self, index: int):
        img, mask = self._augment(*self._load(index))
        return torch.from_numpy(normalize(img, self.spec)), torch.from_numpy(mask.astype(np.int64))

    def _augment(self, img: np.ndarray, mask: np.ndarray):
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
        ch, cw = self.crop_size
        h, w = mask.shape
        base = min(ch / h, cw / w) if (h < ch or w < cw) else 1.0
        s = base * rng.uniform(*self.scale_range)
        nh, nw = max(int(h * s + 0.5), 1), max(int(w * s + 0.5), 1)
        img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
        mask = np.asarray(Image.fromarray(mask).resize((nw, nh), Image.NEAREST))
        ph, pw = max(ch - nh, 0), max(cw - nw, 0)
        if ph or pw:  # pad with zeros (image) and ignore (mask)
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)))
            mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=self.ignore)
        y = int(rng.integers(0, img.shape[0] - ch + 1))
        x = int(rng.integers(0, img.shape[1] - cw + 1))
        img, mask = img[y:y + ch, x:x + cw], mask[y:y + ch, x:x + cw]
        if self.hflip and rng.random() < 0.5:
            img, mask = img[:, ::-1], mask[:, ::-1]
        return np.ascontiguousarray(img), np.ascontiguousarray(mask)
