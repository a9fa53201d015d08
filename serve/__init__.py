"""The serve stage: the embeddable runtime. Imports numpy and the chosen backend's library only.

    from nfdseg.serve import Segmenter, MicroBatcher
    seg = Segmenter("runs/quick/export")          # picks TensorRT, onnxruntime or torch; logs which
    labels = seg.predict(image).labels           # HxW uint8 class ids at the image's own size
    for r in seg.stream("drive.mp4"):            # videos, cameras (0), stream URLs: see stream.py, video.py
        r.prediction.labels
"""

from .batcher import MicroBatcher, RequestTimeout, ShutdownError
from .segmenter import Prediction, Segmenter
from .stream import FrameStream, StreamResult

__all__ = ["Segmenter", "Prediction", "MicroBatcher", "RequestTimeout", "ShutdownError", "FrameStream", "StreamResult"]
