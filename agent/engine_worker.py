"""The child process that parses and builds, so a crashing parser or builder cannot kill the CLI.

``run_in_child(target, job, emit)`` runs ``target(job, emit)`` in a ``spawn``ed
process (fork is unsafe once CUDA is initialised), relays its progress lines and
turns a death by signal into one EngineError line naming the phase and the file.
"""

import logging
import multiprocessing
import os
import signal
import time
import traceback

from . import errors
from .errors import EngineError, ModelError

log = logging.getLogger("edge_agent.engines")

HEARTBEAT_S = 30.0  # a TensorRT build can be silent for minutes: say it is still going


def _child_main(target, job, conn):
    def emit(phase, message):
        conn.send(("progress", phase, message))

    try:
        conn.send(("done", target(job, emit)))
    except errors.AgentError as e:
        conn.send(("error", type(e).__name__, str(e)))
    except BaseException as e:  # anything else: one line for the user, the traceback at debug level
        conn.send(("error", "EngineError", "{}: {}".format(type(e).__name__, e), traceback.format_exc()))
    finally:
        conn.close()


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return "signal {}".format(number)


def run_in_child(target, job, emit, what="", label=""):
    """Run ``target(job, emit)`` in a child; return its result or raise its AgentError.

    ``emit(line)`` receives the child's progress lines prefixed with the elapsed time.
    ``target`` must be importable by module and name (spawn pickles it by reference).
    """
    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(target, job, child_conn), name="edge-agent-builder")
    start = time.time()
    phase = "starting"
    proc.start()
    child_conn.close()  # so recv() sees EOF when the child dies
    last_event = start
    try:
        while True:
            if parent_conn.poll(1.0):
                try:
                    message = parent_conn.recv()
                except EOFError:
                    break
                kind = message[0]
                if kind == "progress":
                    phase = message[1]
                    emit("[{:6.1f}s] {}{}".format(time.time() - start, label and label + ": ", message[2]))
                    last_event = time.time()
                    continue
                if kind == "done":
                    return message[1]
                if len(message) > 3:
                    log.debug("builder traceback:\n%s", message[3])
                cls = getattr(errors, message[1], EngineError)
                raise cls(message[2])
            if not proc.is_alive() and not parent_conn.poll(0):
                break
            if time.time() - last_event >= HEARTBEAT_S:
                emit("[{:6.1f}s] {}still {}".format(time.time() - start, label and label + ": ", phase))
                last_event = time.time()
    finally:
        proc.join(5.0)
        if proc.is_alive():
            proc.terminate()
            proc.join(5.0)
        parent_conn.close()
    code = proc.exitcode
    if code is not None and code < 0:
        raise EngineError("builder process died with signal {} ({}) while {} {}".format(
            -code, _signal_name(-code), phase, what).rstrip())
    raise EngineError("builder process exited with status {} while {} {}".format(code, phase, what).rstrip())


# --- the jobs run in the child --------------------------------------------------------------


def validate_onnx(path):
    """Parse ``path`` as ONNX (onnx.load + checker if onnx is installed); raise ModelError naming it."""
    try:
        import onnx
    except ImportError:
        return None  # the runtime's own loader reports the error
    try:
        model = onnx.load(path)
        onnx.checker.check_model(model)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError("{}: not a valid ONNX model ({}: {})".format(path, type(e).__name__, first[:200]))
    if not model.graph.input or not model.graph.output:
        raise ModelError("{}: not a valid ONNX model (graph has no inputs or outputs)".format(path))
    return model


def _first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _free_bytes(path):
    st = os.statvfs(os.path.dirname(path) or ".")
    return st.f_bavail * st.f_frsize


def _ort_specs(values):
    return [{"name": v.name, "shape": list(v.shape), "dtype": v.type} for v in values]


def build_onnxruntime(job, emit):
    """ONNX Runtime's counterpart of an engine: the graph optimized at ORT_ENABLE_EXTENDED."""
    import onnxruntime as ort

    from .engines import ORT_OPT_LEVEL, ORT_PROVIDERS

    if job.get("batch"):
        emit("building", "--batch ignored: onnxruntime runs dynamic batch without a profile")
    emit("optimizing", "optimizing {} with onnxruntime {} ({})".format(job["onnx"], ort.__version__, ORT_OPT_LEVEL))
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_OPT_LEVEL)
    so.optimized_model_filepath = job["scratch"]
    so.add_session_config_entry("session.save_model_format", "ONNX")
    try:
        ort.InferenceSession(job["onnx"], sess_options=so, providers=ORT_PROVIDERS)
    except Exception as e:
        reason = _first_line(e)
        try:  # ORT reports a failed write of the optimized model (full disk) as a protobuf error
            ort.InferenceSession(job["onnx"], providers=ORT_PROVIDERS)
        except Exception:
            raise ModelError("{}: onnxruntime cannot load it ({})".format(job["onnx"], reason))
        raise EngineError("cannot write the optimized model into {} ({} bytes free): {}".format(
            os.path.dirname(job["scratch"]), _free_bytes(job["scratch"]), reason))
    if not os.path.isfile(job["scratch"]):
        raise EngineError("onnxruntime wrote no optimized model for {}".format(job["onnx"]))
    emit("verifying", "loading the optimized model back")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        # A partial write (full disk) must not pass as a model.
        sess = ort.InferenceSession(job["scratch"], sess_options=so, providers=ORT_PROVIDERS)
    except Exception as e:
        raise EngineError("the optimized model of {} does not load back ({} bytes free in {}): {}".format(
            job["onnx"], _free_bytes(job["scratch"]), os.path.dirname(job["scratch"]), _first_line(e)))
    with open(job["scratch"], "rb") as f:
        os.fsync(f.fileno())
    return {"precision_built": "fp32", "inputs": _ort_specs(sess.get_inputs()), "outputs": _ort_specs(sess.get_outputs()),
            "profile": None, "builder_flags": ["graph_optimization_level=" + ORT_OPT_LEVEL]}


def build_job(job, emit):
    """Validate the ONNX, then build for the job's backend; return the facts for the manifest."""
    emit("validating", "validating {}".format(job["onnx"]))
    model = validate_onnx(job["onnx"])
    if job["backend"] == "onnxruntime":
        result = build_onnxruntime(job, emit)
    else:
        from . import trt_build

        result = trt_build.build(job, emit)
    # The ONNX metadata (class names, imgsz) travels in the manifest: a TensorRT plan drops it.
    result["onnx_metadata"] = {p.key: p.value for p in model.metadata_props} if model is not None else {}
    return result
