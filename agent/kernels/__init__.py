"""CUDA kernels for the GPU pre- and post-processing path (issue 7).

The kernels are plain CUDA C in ``*.cu`` beside this file; each has a numpy
reference elsewhere in the package that it must agree with:

============== ===================================== ===========================================
kernel file    kernels (extern "C" names)            reference
============== ===================================== ===========================================
preprocess.cu  ea_letterbox                          agent.preprocess.Letterbox
decode.cu      ea_decode_yolov8                      agent.postprocess.decode (layout yolov8)
nms.cu         ea_nms_sort, ea_nms_mask, ea_nms_keep agent.postprocess.nms.nms
============== ===================================== ===========================================

The same sources compile for the host with g++ through ``cuda_host_shim.h``
(see ``build.host_library``), which is how they are tested on machines without
a GPU. ``gpu.py`` runs them with pycuda (the agent) or CuPy (tests,
benchmarks); ``build.py`` compiles and caches cubins. Importing this package
imports neither pycuda nor CuPy.
"""

import os

KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))
SOURCES = ("nms.cu", "decode.cu", "preprocess.cu")
SHIM = "cuda_host_shim.h"

# Launch geometry; must match the #defines in the .cu files (tests check it).
NMS_TPB = 64  # EA_NMS_TPB: boxes per tile, threads per mask block
NMS_SORT_TPB = 64  # EA_NMS_SORT_TPB
NMS_KEEP_TPB = 256  # EA_NMS_KEEP_TPB: threads of the single keep block
NMS_MAX_BOXES = 64 * 256  # EA_NMS_TPB * EA_NMS_MAX_COL_BLOCKS
DECODE_TPB = 256  # EA_DECODE_TPB
DECODE_MAX_GRID = 1024
PRE_TPB = 256  # EA_PRE_TPB
PRE_MAX_GRID = 4096


def source_path(name):
    """Absolute path of a kernel source file (``nms.cu``, ...)."""
    return os.path.join(KERNEL_DIR, name)


def cdiv(a, b):
    """Ceiling division for grid sizes."""
    return (a + b - 1) // b


def letterbox_params(frame_w, frame_h, input_w, input_h):
    """Kernel arguments (new_w, new_h, left, top, scale_x, scale_y) and the Mapping.

    The geometry is ``agent.preprocess.letterbox_mapping`` (one definition of
    where a frame lands); scale_x/scale_y are computed as cv2.resize does
    (1 / (dst / src) in double) so the sampling positions match OpenCV.
    """
    from agent.preprocess import letterbox_mapping  # imports cv2; only the caller needs it

    m = letterbox_mapping(frame_w, frame_h, input_w, input_h)
    scale_x = 1.0 / (float(m.new_w) / frame_w)
    scale_y = 1.0 / (float(m.new_h) / frame_h)
    return (m.new_w, m.new_h, m.pad_x, m.pad_y, scale_x, scale_y), m
