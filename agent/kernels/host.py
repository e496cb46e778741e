"""The kernels on the CPU: the GpuRuntime protocol over the host build (tests and CI, no GPU).

``build.host_library`` compiles the same .cu files with g++ through cuda_host_shim.h
into one shared library; ``HostRuntime`` runs them behind the protocol of
``agent.kernels.runtime``, so GpuPreprocess/GpuDecode/GpuNms and the fused detector
run unchanged. "Device" memory is numpy memory (fresh buffers filled with 0xA5:
device memory is not zeroed either); a launch goes through the kernel's
``ea_launch_<kernel>`` trampoline, with every argument's numpy type checked against
the kernel's C parameter, so the wrappers' argument order and types are tested.
Copies are synchronous, so ``sync`` has nothing to wait for.
"""

import ctypes

import numpy as np

from agent.kernels.runtime import GpuRuntime


class HostRuntime(GpuRuntime):
    """Host-compiled kernels (a ctypes.CDLL of build.host_library) behind the GpuRuntime protocol."""

    name = "host"

    def __init__(self, lib):
        from agent.kernels import build  # reads the kernel signatures from the sources

        self.lib = lib
        self.sigs = dict(build.kernel_signatures())

    @classmethod
    def build(cls, out_dir, std=None):
        """Compile the kernels for the CPU into ``out_dir`` and load them; returns (runtime, modules)."""
        from agent.kernels import build
        from agent.kernels.gpu import load_modules

        rt = cls(ctypes.CDLL(build.host_library(out_dir, std=std)))
        return rt, load_modules(rt, {"nms": "-", "decode": "-", "preprocess": "-"})

    def module(self, path):
        return self  # one library holds every kernel

    def get_function(self, name):
        return name

    def alloc(self, nbytes):
        return np.full(max(int(nbytes), 4), 0xA5, np.uint8)

    def ptr(self, buf):
        return buf.ctypes.data

    def free(self, buf):
        pass  # numpy memory: freed with its last reference

    def host(self, shape, dtype):
        return np.empty(shape, dtype)

    def host_mapped(self, shape, dtype):
        """On a Jetson one buffer has one address for the CPU and the GPU; here trivially so."""
        arr = np.full(shape, 0xA5, dtype)
        return arr, arr.ctypes.data

    def launch(self, fn, grid, block, args):
        params = self.sigs[fn]
        if len(args) != len(params):
            raise TypeError("{}: {} args for {} params".format(fn, len(args), len(params)))
        cargs = []
        for a, p in zip(args, params):
            if "*" in p:
                want, conv = np.uintp, lambda v: ctypes.c_void_p(int(v))
            elif p.startswith("float"):
                want, conv = np.float32, lambda v: ctypes.c_float(float(v))
            elif p.startswith("double"):
                want, conv = np.float64, lambda v: ctypes.c_double(float(v))
            else:
                want, conv = np.int32, lambda v: ctypes.c_int(int(v))
            if not isinstance(a, want):
                raise TypeError("{}: {} got {!r}".format(fn, p, a))
            cargs.append(conv(a))
        dims = [ctypes.c_uint(int(d)) for d in tuple(grid) + tuple(block)]
        getattr(self.lib, "ea_launch_" + fn)(*(dims + cargs))

    def htod(self, dst, arr):
        arr = np.ascontiguousarray(arr)
        ctypes.memmove(int(dst), arr.ctypes.data, arr.nbytes)

    def dtoh(self, arr, src):
        ctypes.memmove(arr.ctypes.data, int(src), arr.nbytes)

    def zero(self, dst, nbytes):
        ctypes.memset(int(dst), 0, nbytes)

    def dtod(self, dst, src, nbytes):
        ctypes.memmove(int(dst), int(src), nbytes)

    def sync(self):
        pass
