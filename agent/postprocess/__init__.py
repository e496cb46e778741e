"""Post-processing: decode raw model outputs (``decode``), then NMS (``nms``)."""

from .decode import Decoder, make_decoder
from .nms import batched_nms, nms, postprocess

__all__ = ["Decoder", "make_decoder", "nms", "batched_nms", "postprocess"]
