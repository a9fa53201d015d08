"""Training curves as TensorBoard event files, when the `tensorboard` package is installed (`nfdseg[tensorboard]`).

One writer per stage folder (<stage>/tensorboard/): the loss terms, the learning rate and images/s every log_every
iterations, val mIoU at every evaluation. Without tensorboard the stage trains the same and says once where the
curves would have gone; history.json and the report's plots hold the same figures either way.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from nfdseg.artifacts import CURVES_DIR

log = logging.getLogger(__name__)


class Curves:
    """add(it, train=dict) / add(it, val=dict) -> scalars `train/<name>`, `val/<name>`; close() flushes."""

    def __init__(self, out_dir: str | Path, enabled: bool = True):
        self.writer = None
        if not enabled:
            return
        if importlib.util.find_spec("tensorboard") is None:
            log.info("training curves: history.json only (pip install 'nfdseg[tensorboard]' for TensorBoard event "
                     "files in %s)", Path(out_dir) / CURVES_DIR)
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(out_dir) / CURVES_DIR), flush_secs=30)

    def add(self, it: int, **groups: dict[str, float]) -> None:
        if self.writer is None:
            return
        for group, values in groups.items():
            for name, value in values.items():
                self.writer.add_scalar(f"{group}/{name}", value, it)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
