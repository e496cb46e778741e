"""``edge-agent build-engine``: build (or check) the cached engine of each model size."""

import contextlib
import os

import click

from ..errors import ModelError
from .options import config_option, config_path_or_default


def _parse_batch(ctx, param, value):
    if value is None:
        return None
    try:
        parts = tuple(int(v) for v in value.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or not (0 < parts[0] <= parts[1] <= parts[2]):
        raise click.BadParameter("expected min,opt,max with 0 < min <= opt <= max, got {!r}".format(value))
    return parts


@click.command("build-engine")
@config_option
@click.option("--size", default=None, help="A configured size name (fast, accurate, ...) or 'all' (default: the config's size).")
@click.option("--onnx", type=click.Path(dir_okay=False), default=None, help="Build from this ONNX instead of the size's.")
@click.option("--engines-dir", type=click.Path(file_okay=False), default=None, help="Where artifacts live (default: config engines_dir).")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime"]), default=None,
              help="Runtime to build for (default: the config's backend; auto: tensorrt if usable).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="fp32, fp16 (TensorRT) or int8 (TensorRT; ONNX Runtime: a QDQ model); fp16/int8 pass the accuracy gate.")
@click.option("--allow-slow-precision", is_flag=True, help="Build fp16/int8 even where the GPU has no fast path for it.")
@click.option("--calib-dir", type=click.Path(file_okay=False), default=None,
              help="INT8 calibration images (onnxruntime default: the demo calib split data/demo/calib).")
@click.option("--calib-cache", type=click.Path(dir_okay=False), default=None, help="INT8 calibration cache (read, or written).")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default=None,
              help="ONNX Runtime INT8 calibration method (default: quantization.calib_method, minmax).")
@click.option("--calib-images", type=click.IntRange(min=1), default=None,
              help="Most calibration images used (default: quantization.calib_images, 32).")
@click.option("--keep-float", default=None, metavar="BLOCKS",
              help="ONNX Runtime INT8: blocks kept in float, comma-separated (heads,tail,/p3), 'none', or 'auto' "
                   "(measured per-block sensitivity on the calib split; the default).")
@click.option("--val-dir", type=click.Path(), default=None,
              help="COCO split the accuracy gate measures on (default: the demo val split data/demo/val).")
@click.option("--val-images", type=click.IntRange(min=1), default=None,
              help="Most images the accuracy gate measures (default: quantization.val_images, 200).")
@click.option("--max-map-drop", type=click.FloatRange(0.0, 1.0), default=None,
              help="Most mAP50-95 an fp16/int8 build may lose against fp32 (default: quantization.max_map_drop, 0.02).")
@click.option("--accept-accuracy-loss", is_flag=True, help="Keep an fp16/int8 build that fails the accuracy gate.")
@click.option("--dla-core", type=int, default=None, help="Run on this DLA core (with GPU fallback); -1: GPU.")
@click.option("--workspace-mb", type=click.IntRange(min=1), default=None, help="TensorRT builder workspace.")
@click.option("--batch", callback=_parse_batch, default=None, metavar="MIN,OPT,MAX",
              help="Optimization profile for a dynamic batch dimension (static models: ignored).")
@click.option("--force", is_flag=True, help="Rebuild even when up to date.")
@click.option("--check", is_flag=True, help="Only report whether the cached artifact is valid (exit 0) or not (exit 1).")
@click.pass_context
def build_engine(ctx, config_path, size, onnx, engines_dir, backend, precision, allow_slow_precision, calib_dir,
                 calib_cache, calib_method, calib_images, keep_float, val_dir, val_images, max_map_drop,
                 accept_accuracy_loss, dla_core, workspace_mb, batch, force, check):
    """Build the engine of a model size (TensorRT, or ONNX Runtime's optimized model)."""
    from ..engines import artifact, build
    from ..backends import resolve_backend_name
    from ..config import load_config

    config = load_config(config_path_or_default(config_path), check_files=False)
    names = sorted(config.sizes) if size == "all" else [size or config.size]
    if onnx is not None and len(names) != 1:
        raise click.UsageError("--onnx needs a single --size, not 'all'")
    backend_name = resolve_backend_name(backend or config.backend)
    overrides = dict(onnx=onnx, engines_dir=engines_dir, precision=precision, calib_dir=calib_dir,
                     calib_cache=calib_cache, dla_core=dla_core, workspace_mb=workspace_mb, batch=batch,
                     allow_slow_precision=allow_slow_precision or None, calib_method=calib_method,
                     calib_images=calib_images, val_dir=val_dir, val_images=val_images, max_map_drop=max_map_drop,
                     accept_accuracy_loss=accept_accuracy_loss or None,
                     keep_float=None if keep_float is None else tuple(k.strip() for k in keep_float.split(",")))

    def progress(line):
        click.echo(line, err=True)

    invalid = []
    for name in names:
        spec = artifact.spec_from_config(config, name, backend_name, **overrides)
        if check:
            with _blame(onnx, name):
                path, manifest, reasons = artifact.status(spec)
            if manifest is not None:
                click.echo("{}: valid ({}; {} {}, built {}{})".format(name, _rel(path), backend_name,
                                                                       manifest["precision"]["built"],
                                                                       manifest.get("built_at"), _gate(manifest)))
            else:
                invalid.append(name)
                click.echo("{}: not valid ({}): {}; fix: {}".format(name, _rel(path), "; ".join(reasons),
                                                                   artifact.fix_command(name, spec.precision)))
            continue
        with _blame(onnx, name):
            path, manifest, built = build.build(spec, progress=progress, force=force)
        if not built:
            click.echo("{}: up to date ({})".format(name, _rel(path)))
        else:
            click.echo("{}: built {} ({} {}, {:.1f}s{})".format(name, _rel(path), backend_name,
                                                                manifest["precision"]["built"], manifest["build_time_s"],
                                                                _gate(manifest)))
        if backend_name == "tensorrt":  # the fused GPU path's kernels, beside the engine
            build.compile_kernels_for(os.path.dirname(os.path.abspath(path)), manifest, progress=progress)
    if invalid:
        ctx.exit(1)


@contextlib.contextmanager
def _blame(onnx, name):
    """Prefix a bad-model error with what named the file (--onnx or the config key), so the fix is clear.

    Exit status 1 (ModelError), as ``run`` gives for the same file: the file is bad, not the config's syntax.
    """
    key = "--onnx" if onnx is not None else "sizes.{}.onnx".format(name)
    try:
        yield
    except ModelError as e:
        raise ModelError(str(e) if str(e).startswith(key) else "{}: {}".format(key, e))


def _gate(manifest):
    """'; mAP50-95 0.621 -> 0.615' for a build that passed the accuracy gate, else ''."""
    acc = manifest.get("accuracy")
    if not isinstance(acc, dict) or not isinstance(acc.get("map50_95"), dict):
        return ""
    values = acc["map50_95"]
    return "; mAP50-95 fp32 {:.3f} -> {} {:.3f}".format(values.get("fp32", float("nan")), acc.get("precision"),
                                                         values.get(acc.get("precision"), float("nan")))


def _rel(path):
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel

