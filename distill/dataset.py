"""The torch view of a dataset source for training: random scale, crop and flip.

Evaluation does not go through here: it is the runtime's one evaluation (nfdseg.serve.evaluate), which
scores each image at its label's own size."""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from nfdseg.manifest import PreprocessSpec
from nfdseg.preprocess import normalize

from nfdseg.data.config import DataConfig
from nfdseg.data.synthetic import SyntheticScenes

log = logging.getLogger(__name__)


class SegDataset(torch.utils.data.Dataset):
    """The training view of a source (random scale, crop, flip).

    Items are (float32 3xHxW normalised image, int64 HxW mask). Augmentation randomness comes from
    (seed, epoch-free item index, call count) through torch's worker-seeded generator.
    """

    def __init__(self, source, spec: PreprocessSpec, crop_size=DataConfig.crop_size,
                 scale_range=DataConfig.scale_range, hflip: bool = DataConfig.hflip,
                 cache_mb: int = DataConfig.cache_mb):
        self.source, self.spec = source, spec
        self.crop_size, self.scale_range, self.hflip = tuple(crop_size), tuple(scale_range), hflip
        self.length = len(source)
        self.ignore = source.classes.ignore_index
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cache_limit, self._cached_bytes = cache_mb * 2**20, 0
        self.cache_decision = self._decide_cache(cache_mb)
        self._cacheable = self.cache_decision["cached"]

    def _decide_cache(self, cache_mb: int) -> dict:
        """Keep decoded (image, mask) pairs in memory when the whole split fits in `cache_mb` MiB: decoding a PNG
        costs more than the model's step on small inputs. Generated scenes are always kept (they are small).
        The estimate is the first pair's bytes times the split's length."""
        if isinstance(self.source, SyntheticScenes):
            return {"cached": True, "reason": "generated scenes"}
        if cache_mb <= 0 or self.length == 0:
            return {"cached": False, "reason": "data.cache_mb is 0" if cache_mb <= 0 else "empty split"}
        img, mask = self.source.load(0)
        need_mb = (img.nbytes + mask.nbytes) * self.length / 2**20
        if need_mb > cache_mb:
            log.info("training images are decoded at every step: the split needs ~%.0f MiB decoded, over "
                     "data.cache_mb=%d (raise it, or use train.workers to decode in parallel)", need_mb, cache_mb)
            return {"cached": False, "reason": f"needs ~{need_mb:.0f} MiB > data.cache_mb {cache_mb}",
                    "need_mb": round(need_mb, 1)}
        self._keep(0, img, mask)
        log.info("keeping the %d decoded training images in memory (~%.0f MiB, data.cache_mb=%d)", self.length,
                 need_mb, cache_mb)
        return {"cached": True, "reason": f"~{need_mb:.0f} MiB <= data.cache_mb {cache_mb}", "need_mb": round(need_mb, 1)}

    def fill_cache(self, progress: bool = False) -> None:
        """Decode every pair of an on-disk split now (before DataLoader workers fork, so they share the decoded
        arrays). Generated scenes stay lazy: they are made as training first reaches them, as before."""
        if not self._cacheable or isinstance(self.source, SyntheticScenes):
            return
        from tqdm.auto import tqdm

        for i in tqdm(range(self.length), desc="decode training images", unit="img", disable=not progress,
                      mininterval=1.0):
            self._load(i)

    def mask(self, index: int) -> np.ndarray:
        """The mask of `index` (class ids), without decoding its image when it is not cached."""
        if index in self._cache or self._cacheable or not hasattr(self.source, "load_mask"):
            return self._load(index)[1]
        return self.source.load_mask(index)

    def _keep(self, index: int, img: np.ndarray, mask: np.ndarray) -> None:
        """Cache a pair while the cache stays within data.cache_mb (the first pair's estimate can be off where sizes
        vary); generated scenes are always kept."""
        size = img.nbytes + mask.nbytes
        if isinstance(self.source, SyntheticScenes) or self._cached_bytes + size <= self._cache_limit:
            self._cache[index] = (img, mask)
            self._cached_bytes += size

    def __len__(self) -> int:
        return self.length

    def _load(self, index: int):
        if index in self._cache:
            return self._cache[index]
        pair = self.source.load(index)
        if self._cacheable:
            self._keep(index, *pair)
        return pair

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
