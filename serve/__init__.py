"""The serve stage: the embeddable runtime. Imports numpy and the chosen backend's library only.

    from nfdseg.serve import Segmenter, MicroBatcher
    seg = Segmenter("runs/quick/export")          # picks TensorRT, onnxruntime or torch; logs which
    labels = seg.predict(image).labels           # HxW uint8 class ids at the image's own size
"""

from .batcher import MicroBatcher, RequestTimeout, ShutdownError
from .segmenter import Prediction, Segmenter

__all__ = ["Segmenter", "Prediction", "MicroBatcher", "RequestTimeout", "ShutdownError"]
