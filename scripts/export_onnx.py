"""Export a trained checkpoint to ONNX in the YOLOv8 layout and check it against torch."""
import argparse
from pathlib import Path

import numpy as np
import onnx
import torch

import detector

OPSET = 12  # TensorRT 7.1 (JetPack 4.x) parses up to opset 13


def export(model, names, size_name, out, opset=OPSET, extra_meta=None):
    """Write model as ONNX: input 'images' [1,3,S,S], output 'output0' [1, 4+nc, N].

    ``extra_meta`` adds metadata_props (e.g. train_time_s, which `edge-agent benchmark` reports).

    Raises AssertionError if onnxruntime disagrees with torch on a random input.
    """
    import onnxruntime as ort
    model = model.eval()
    model.export = True
    s = model.imgsz
    x = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kwargs = dict(input_names=["images"], output_names=["output0"], opset_version=opset,
                  do_constant_folding=True)
    try:  # torch >= 2.5 defaults towards the dynamo exporter, which cannot emit opset 12
        torch.onnx.export(model, (x,), str(out), dynamo=False, **kwargs)
    except TypeError:
        torch.onnx.export(model, (x,), str(out), **kwargs)
    proto = onnx.load(str(out))
    meta = {
        "names": str({i: n for i, n in enumerate(names)}),
        "imgsz": str([s, s]),
        "stride": str(max(detector.STRIDES)),
        "task": "detect",
        "batch": "1",
        "model_size": size_name,
        "author": "edge-agent",
        "description": f"edge-agent demo shapes detector ({size_name}), see models/README.md",
    }
    meta.update({k: str(v) for k, v in (extra_meta or {}).items()})
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    with torch.no_grad():
        ref = model(x).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()})[0]
    model.export = False
    assert got.shape == ref.shape == (1, 4 + len(names), got.shape[2]), got.shape
    # Boxes are in pixels (up to hundreds), scores in 0..1: compare each on its own scale.
    assert np.allclose(got[:, :4], ref[:, :4], atol=1e-2), np.abs(got - ref)[:, :4].max()
    assert np.allclose(got[:, 4:], ref[:, 4:], atol=1e-4), np.abs(got - ref)[:, 4:].max()
    return out


def training_meta(ckpt, wall_s=None, cpu_s=None, epochs=None):
    """Training cost to store with the model: wall and CPU seconds, epochs (all stages)."""
    return {"train_time_s": wall_s if wall_s is not None else ckpt.get("train_wall_s"),
            "train_cpu_s": cpu_s if cpu_s is not None else ckpt.get("train_cpu_s"),
            "train_epochs": epochs if epochs is not None else ckpt.get("epochs")}


def load_checkpoint(path):
    """Rebuild a Detector from a train.py checkpoint; returns (model, checkpoint dict)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = detector.build(ckpt["size"], len(ckpt["names"]))
    model.load_state_dict(ckpt["state_dict"])
    return model, ckpt


def main(argv=None):
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("checkpoint", help="checkpoint written by train.py (runs/demo-<size>.pt)")
    ap.add_argument("--out", help="ONNX path (default models/demo-<size>.onnx)")
    ap.add_argument("--opset", type=int, default=OPSET)
    ap.add_argument("--train-time-s", type=float, help="training wall time to record (default: the checkpoint's)")
    ap.add_argument("--train-cpu-s", type=float, help="training CPU time to record (default: the checkpoint's)")
    ap.add_argument("--train-epochs", type=int, help="epochs to record, all stages (default: the checkpoint's)")
    args = ap.parse_args(argv)
    model, ckpt = load_checkpoint(args.checkpoint)
    out = args.out or f"models/demo-{ckpt['size']}.onnx"
    export(model, ckpt["names"], ckpt["size"], out, args.opset, training_meta(ckpt, args.train_time_s, args.train_cpu_s,
                                                                               args.train_epochs))
    print(f"event=export path={out} opset={args.opset} bytes={Path(out).stat().st_size}", flush=True)


if __name__ == "__main__":
    main()
