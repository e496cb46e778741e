"""The GPU runtime protocol, declared once, and its implementations for pycuda and CuPy.

Everything in ``agent.kernels.gpu`` and ``agent.detect.fused`` reaches the device through
a ``GpuRuntime``: it loads kernel modules, allocates and frees device memory, launches
kernels and copies on one stream. Three implementations:

* ``PycudaRuntime`` (here): the agent on a Jetson, on the TensorRT backend's stream;
* ``CupyRuntime`` (here): tests and benchmarks on a desktop GPU;
* ``agent.kernels.host.HostRuntime``: the same .cu files compiled for the CPU through
  cuda_host_shim.h, "device" memory being numpy memory (CI without a GPU).

A runtime is used from the thread that owns the CUDA context. Copies and launches are
asynchronous on the runtime's stream; ``sync()`` waits for them. Pointers are plain ints.
Importing this module imports neither pycuda nor CuPy.
"""

from agent.errors import BackendUnavailable


class GpuRuntime(object):
    """The protocol; subclasses implement every method (the base raises NotImplementedError)."""

    name = ""

    def module(self, path):
        """A loaded kernel module (cubin/PTX path; CuPy also takes .cu source); has get_function(name)."""
        raise NotImplementedError

    def alloc(self, nbytes):
        """A device buffer of at least ``nbytes`` (not zeroed); pass it to ptr() and free()."""
        raise NotImplementedError

    def ptr(self, buf):
        """The device address (int) of a buffer from alloc()."""
        raise NotImplementedError

    def free(self, buf):
        """Free a buffer from alloc() now (a no-op where the runtime pools memory)."""
        raise NotImplementedError

    def host(self, shape, dtype):
        """A host numpy array usable for asynchronous copies (page-locked on a GPU)."""
        raise NotImplementedError

    def host_mapped(self, shape, dtype):
        """(host array, device pointer): host memory the kernels read in place (Jetson zero-copy)."""
        raise NotImplementedError

    def launch(self, fn, grid, block, args):
        """Launch kernel ``fn`` (from module().get_function) with numpy-typed ``args`` (np.uintp, int32, float32)."""
        raise NotImplementedError

    def htod(self, dst, arr):
        """Copy host array ``arr`` to device address ``dst`` (asynchronous)."""
        raise NotImplementedError

    def dtoh(self, arr, src):
        """Copy ``arr.nbytes`` from device address ``src`` into host array ``arr`` (asynchronous)."""
        raise NotImplementedError

    def zero(self, dst, nbytes):
        """Set ``nbytes`` at device address ``dst`` to zero (asynchronous)."""
        raise NotImplementedError

    def dtod(self, dst, src, nbytes):
        """Copy ``nbytes`` between device addresses (asynchronous)."""
        raise NotImplementedError

    def sync(self):
        """Wait until every copy and launch enqueued so far has finished."""
        raise NotImplementedError


class PycudaRuntime(GpuRuntime):
    """Launches through pycuda on ``stream`` (None: the default stream) in the current context."""

    name = "pycuda"

    def __init__(self, stream=None):
        try:
            import pycuda.driver as cuda
        except ImportError as e:
            raise BackendUnavailable("pycuda is not installed: {}".format(e))
        self.cuda = cuda
        self.stream = stream

    def module(self, path):
        return self.cuda.module_from_file(path)

    def alloc(self, nbytes):
        return self.cuda.mem_alloc(max(int(nbytes), 4))

    def ptr(self, buf):
        return int(buf)

    def free(self, buf):
        buf.free()

    def host(self, shape, dtype):
        return self.cuda.pagelocked_empty(shape, dtype)  # async copies need pinned memory

    def host_mapped(self, shape, dtype):
        """(array, device pointer): pinned host memory the GPU reads in place (zero-copy, for Jetson)."""
        arr = self.cuda.pagelocked_empty(shape, dtype, mem_flags=self.cuda.host_alloc_flags.DEVICEMAP)
        return arr, int(arr.base.get_device_pointer())

    def launch(self, fn, grid, block, args):
        fn(*args, grid=grid, block=block, stream=self.stream)

    def htod(self, dst, arr):
        self.cuda.memcpy_htod_async(dst, arr, self.stream)

    def dtoh(self, arr, src):
        self.cuda.memcpy_dtoh_async(arr, src, self.stream)

    def zero(self, dst, nbytes):
        self.cuda.memset_d8_async(dst, 0, nbytes, self.stream)

    def dtod(self, dst, src, nbytes):
        self.cuda.memcpy_dtod_async(dst, src, nbytes, self.stream)

    def sync(self):
        if self.stream is not None:
            self.stream.synchronize()
        else:
            self.cuda.Context.synchronize()


class CupyRuntime(GpuRuntime):
    """Launches through CuPy on its current stream; modules from cubin/PTX or from .cu source (NVRTC)."""

    name = "cupy"

    def __init__(self):
        try:
            import cupy
        except ImportError as e:
            raise BackendUnavailable("cupy is not installed: {}".format(e))
        self.cupy = cupy
        self.rt = cupy.cuda.runtime

    def module(self, path):
        if path.endswith(".cu"):
            with open(path) as f:
                return self.cupy.RawModule(code=f.read())
        return self.cupy.RawModule(path=path)

    def alloc(self, nbytes):
        return self.cupy.cuda.alloc(max(int(nbytes), 4))

    def ptr(self, buf):
        return int(buf.ptr)

    def free(self, buf):
        pass  # the MemoryPointer returns to CuPy's pool when the last reference goes

    def host(self, shape, dtype):
        import cupyx

        return cupyx.empty_pinned(shape, dtype)  # pinned, as PycudaRuntime's: copies are truly async

    def host_mapped(self, shape, dtype):
        """(array, device pointer): mapped pinned memory, as PycudaRuntime's (the benchmark's --zero-copy)."""
        import numpy as np

        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        mem = self.cupy.cuda.PinnedMemoryPointer(self.cupy.cuda.PinnedMemory(n, self.rt.hostAllocMapped), 0)
        arr = np.frombuffer(mem, dtype, int(np.prod(shape))).reshape(shape)
        return arr, int(self.rt.hostGetDevicePointer(mem.ptr, 0))

    def _stream(self):
        return self.cupy.cuda.get_current_stream().ptr

    def launch(self, fn, grid, block, args):
        fn(grid, block, args)

    def htod(self, dst, arr):
        self.rt.memcpyAsync(int(dst), arr.ctypes.data, arr.nbytes, self.rt.memcpyHostToDevice, self._stream())

    def dtoh(self, arr, src):
        self.rt.memcpyAsync(arr.ctypes.data, int(src), arr.nbytes, self.rt.memcpyDeviceToHost, self._stream())

    def zero(self, dst, nbytes):
        self.rt.memsetAsync(int(dst), 0, nbytes, self._stream())

    def dtod(self, dst, src, nbytes):
        self.rt.memcpyAsync(int(dst), int(src), nbytes, self.rt.memcpyDeviceToDevice, self._stream())

    def sync(self):
        self.cupy.cuda.get_current_stream().synchronize()
