"""edge-agent: an edge inference agent for NVIDIA Jetson (and any Linux box).

A frame travels source -> preprocess -> infer -> postprocess -> publish.
Importing this package never imports tensorrt, pycuda or torch.
"""

__version__ = "0.1.0"
