"""The detector stage: one loaded model's frame path, BGR frame in, Detections out.

``open_detector(config, size)`` loads the size's artifact on the configured backend and
returns the Detector for it: ``FusedDetector`` (agent.detect.fused: preprocess, decode
and NMS on the GPU around the engine) when the backend offers a DeviceEngine, else
``CpuDetector`` (agent.detect.cpu: Letterbox, backend.infer, decode, NMS). Call it on
the thread that will run ``infer`` (it owns the CUDA context). The contract and the
pipeline's frame record are in agent.detect.base.
"""

import logging

from .base import Detections, Detector, FrameJob  # noqa: F401  (the package's API)

log = logging.getLogger("edge_agent.detect")


def open_detector(config, size):
    """The Detector for ``size`` of ``config``; raises AgentError (ModelError, EngineError, ...)."""
    from ..backends import resolve_backend_name
    from ..engines import artifact

    name = resolve_backend_name(config.backend)
    path, manifest = artifact.artifact_for(config, size, name)
    return detector_on(config, size, name, path, manifest)


def detector_on(config, size, name, path, manifest=None):
    """The Detector for model file ``path`` on backend ``name`` (a verified artifact, or an ONNX
    on onnxruntime); the build's accuracy gate measures a new artifact through it."""
    from ..backends import backend_class
    from ..labels import class_names
    from ..postprocess.decode import make_decoder
    from .cpu import CpuDetector

    engine_id = (manifest or {}).get("artifact_sha256", "")[:12] or "onnx"
    settings = config.tensorrt if name == "tensorrt" else config.onnxruntime
    backend = backend_class(name)(path, settings)
    try:
        labels = class_names(backend.metadata, config.sizes[size].labels)
        # Checks that the outputs are interpretable, whichever detector runs them.
        decoder = make_decoder(backend.outputs, num_classes_hint=len(labels) or None)
        common = dict(size=size, labels=labels, detection=config.detection, backend_name=name, engine_id=engine_id)
        device = backend.device_engine()
        if device is not None:
            try:
                from .fused import FusedDetector

                return FusedDetector(backend, device, **common)
            except Exception as e:  # buffers or kernels that cannot be set up: the CPU path still works
                log.warning("%s: fused GPU detect off, using infer + CPU postprocess: %s", path,
                            str(e).splitlines()[0] if str(e) else type(e).__name__)
        return CpuDetector(backend, decoder, **common)
    except BaseException:
        backend.close()
        raise
