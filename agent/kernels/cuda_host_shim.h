// cuda_host_shim.h: compile the CUDA kernels in agent/kernels/*.cu with g++ so
// they can be tested on a machine without a GPU.
//
// Execution model (the one thing to understand before reading the kernels):
//   * one std::thread per CUDA thread of a block; the threads live in a pool
//     that grows to the largest block launched and is reused by every block
//     and every launch (creating threads per launch cost ~40 ms per NMS call);
//   * blocks run one after another, so a function-local `static` array is a
//     correct stand-in for `__shared__` (exactly one block is alive at a time);
//   * launches are serialized by a global mutex for the same reason;
//   * __syncthreads() is a barrier of the block (BlockBarrier below); a thread
//     that returns from the kernel leaves it (arrive_and_drop), like exited
//     threads on Volta and newer, so early returns do not deadlock the block;
//   * threadIdx/blockIdx/blockDim/gridDim are thread_local; atomicAdd/atomicMax/atomicOr
//     use std::atomic_ref; min/max/__ldg are the device overloads' host twins.
// C++17 is enough (JetPack 4 has GCC 7.5, JetPack 5 GCC 9.4): where the library lacks
// C++20's std::atomic_ref or atomic wait/notify (feature-test macros, not __cplusplus:
// libstdc++ 10 has atomic_ref but no wait), the same operations go through the GCC/Clang
// __atomic builtins and the Linux futex that libstdc++ itself uses underneath.
// Entry: EA_LAUNCH(kernel, grid, block, args...), used by the extern "C"
// *_host functions at the end of each .cu file (excluded under nvcc/NVRTC).
// Under nvcc (__CUDACC__) this header is empty: the .cu files are plain CUDA.
#ifndef EA_CUDA_HOST_SHIM_H
#define EA_CUDA_HOST_SHIM_H
#ifndef __CUDACC__

#include <atomic>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>
#if __has_include(<version>)
#include <version>
#endif
#if !defined(__cpp_lib_atomic_wait) && defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace ea_shim {
inline thread_local dim3 tl_threadIdx{0, 0, 0};
inline thread_local dim3 tl_blockIdx{0, 0, 0};
inline thread_local dim3 tl_blockDim{1, 1, 1};
inline thread_local dim3 tl_gridDim{1, 1, 1};
inline std::mutex launch_mutex;

// Sleep while `a` holds `old` / wake sleepers: std::atomic wait/notify where the library has
// them, else a futex on the atomic's own word (lock-free, same size as unsigned), else a yield spin.
static_assert(sizeof(std::atomic<unsigned>) == sizeof(unsigned), "futex on std::atomic<unsigned>");
inline void wait_while(std::atomic<unsigned>& a, unsigned old, std::memory_order mo = std::memory_order_seq_cst) {
#if defined(__cpp_lib_atomic_wait)
    a.wait(old, mo);
#else
    while (a.load(mo) == old) {
#if defined(__linux__)
        syscall(SYS_futex, reinterpret_cast<unsigned*>(&a), FUTEX_WAIT_PRIVATE, old, nullptr, nullptr, 0);
#else
        std::this_thread::yield();
#endif
    }
#endif
}
inline void wake(std::atomic<unsigned>& a, bool all) {
#if defined(__cpp_lib_atomic_wait)
    if (all) a.notify_all(); else a.notify_one();
#elif defined(__linux__)
    syscall(SYS_futex, reinterpret_cast<unsigned*>(&a), FUTEX_WAKE_PRIVATE, all ? INT_MAX : 1, nullptr, nullptr, 0);
#else
    (void)a, (void)all;  // the spin in wait_while sees the new value
#endif
}

// Atomic read-modify-write on plain memory (a kernel's int* / unsigned long long*).
#if defined(__cpp_lib_atomic_ref)
template <class T> inline T fetch_add(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }
template <class T> inline T fetch_or(T* p, T v) { return std::atomic_ref<T>(*p).fetch_or(v); }
template <class T> inline T load(T* p) { return std::atomic_ref<T>(*p).load(); }
template <class T> inline bool cas_weak(T* p, T& expected, T desired) {
    return std::atomic_ref<T>(*p).compare_exchange_weak(expected, desired);
}
#else
template <class T> inline T fetch_add(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
template <class T> inline T fetch_or(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
template <class T> inline T load(T* p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
template <class T> inline bool cas_weak(T* p, T& expected, T desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
#endif

// Block barrier on atomics with futex sleeps (wait_while/wake above).
// Not std::barrier: it has no way to re-arm after arrive_and_drop, and a mutex
// + condition variable convoy made each phase cost ~0.5 ms with 64 threads on
// 2 cores. `rearm` is reset by the last arriving thread before anyone leaves.
class BlockBarrier {
  public:
    explicit BlockBarrier(unsigned n, BlockBarrier* rearm = nullptr) : expected_(n), rearm_(rearm), n_(n) {}
    void arrive_and_wait() {
        unsigned phase = phase_.load(std::memory_order_acquire);
        if (arrive(1)) return;
        wait_while(phase_, phase, std::memory_order_acquire);
    }
    void arrive_and_drop() { arrive(0); }  // leave for good (thread exited); may complete the phase
    void reset(unsigned n) {  // only while no thread is inside the barrier
        expected_.store(n);
        arrived_.store(0);
    }

  private:
    // Returns true when this arrival completed the phase.
    bool arrive(int stay) {
        std::lock_guard<std::mutex> lk(m_);  // short: counters only, never held while sleeping
        if (!stay) expected_.fetch_sub(1);
        unsigned arrived = arrived_.load() + (unsigned)stay;
        if (arrived < expected_.load() || expected_.load() == 0) {
            arrived_.store(arrived);
            return false;
        }
        arrived_.store(0);
        if (rearm_) rearm_->reset(n_);
        phase_.fetch_add(1, std::memory_order_release);
        wake(phase_, true);
        return true;
    }
    std::mutex m_;
    std::atomic<unsigned> expected_, arrived_{0}, phase_{0};
    BlockBarrier* rearm_;  // reset this one (the block's __syncthreads barrier) on completion
    unsigned n_;
};
inline thread_local BlockBarrier* tl_sync = nullptr;

// Worker k runs CUDA thread k of every block. Leaked on purpose: joining
// threads from a static destructor of a dlopen'ed library can hang at exit.
class Pool {
  public:
    // Run fn(ctx, k) on workers k = 0..n-1 and wait for all. Caller holds launch_mutex.
    void run(unsigned n, void (*fn)(void*, unsigned), void* ctx) {
        while (workers_.size() < n) {
            unsigned id = (unsigned)workers_.size();
            workers_.emplace_back([this, id]() { work(id); });
            workers_.back().detach();
        }
        fn_ = fn;
        ctx_ = ctx;
        active_.store(n);
        remaining_.store(n);
        generation_.fetch_add(1, std::memory_order_release);
        wake(generation_, true);
        for (unsigned r = remaining_.load(); r != 0; r = remaining_.load()) wait_while(remaining_, r);
    }

  private:
    void work(unsigned id) {
        unsigned seen = 0;
        for (;;) {
            wait_while(generation_, seen, std::memory_order_acquire);
            seen = generation_.load(std::memory_order_acquire);
            if (id >= active_.load()) continue;
            fn_(ctx_, id);
            if (remaining_.fetch_sub(1) == 1) wake(remaining_, false);
        }
    }
    std::vector<std::thread> workers_;
    void (*fn_)(void*, unsigned) = nullptr;
    void* ctx_ = nullptr;
    std::atomic<unsigned> generation_{0}, active_{0}, remaining_{0};
};
inline Pool& pool() {
    static Pool* p = new Pool();
    return *p;
}

// Run kernel(args...) over grid x block: blocks sequentially, threads of a
// block concurrently. A zero-sized grid or block is a launch error on CUDA;
// here it is a no-op, and the host entry points never launch one.
template <class Kernel, class... Args>
void launch(Kernel kernel, dim3 grid, dim3 block, Args... args) {
    std::lock_guard<std::mutex> guard(launch_mutex);
    const unsigned nthreads = block.x * block.y * block.z;
    const unsigned nblocks = grid.x * grid.y * grid.z;
    if (nthreads == 0 || nblocks == 0) return;
    BlockBarrier sync(nthreads);
    BlockBarrier block_end(nthreads, &sync);  // re-arms `sync` for the next block
    auto body = [&](unsigned t) {
        tl_blockDim = block;
        tl_gridDim = grid;
        tl_threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
        for (unsigned b = 0; b < nblocks; ++b) {
            tl_blockIdx = dim3(b % grid.x, (b / grid.x) % grid.y, b / (grid.x * grid.y));
            tl_sync = &sync;
            kernel(args...);
            sync.arrive_and_drop();  // an exited thread no longer counts at __syncthreads
            if (b + 1 < nblocks) block_end.arrive_and_wait();  // the pool waits for the last one
        }
    };
    pool().run(nthreads, [](void* ctx, unsigned t) { (*static_cast<decltype(body)*>(ctx))(t); }, &body);
}
}  // namespace ea_shim

#define threadIdx (ea_shim::tl_threadIdx)
#define blockIdx (ea_shim::tl_blockIdx)
#define blockDim (ea_shim::tl_blockDim)
#define gridDim (ea_shim::tl_gridDim)
#define EA_LAUNCH(kernel, grid, block, ...) ea_shim::launch(kernel, grid, block, __VA_ARGS__)

inline void __syncthreads() { ea_shim::tl_sync->arrive_and_wait(); }

template <class T>
inline T __ldg(const T* p) { return *p; }

inline int atomicAdd(int* p, int v) { return ea_shim::fetch_add(p, v); }
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) { return ea_shim::fetch_add(p, v); }
inline unsigned long long atomicOr(unsigned long long* p, unsigned long long v) { return ea_shim::fetch_or(p, v); }
inline int atomicMax(int* p, int v) {
    int old = ea_shim::load(p);
    while (old < v && !ea_shim::cas_weak(p, old, v)) {
    }
    return old;
}

// CUDA's device overloads of min/max (global namespace, same-type arguments).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
// fminf/fmaxf/floorf come from <cmath> (global namespace), as in CUDA.

// Explicitly rounded float ops: plain IEEE single ops on the host (x86-64 g++ does not
// contract into FMA without -mfma; the shim is built without it).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dsub_rn(double a, double b) { return a - b; }
// Round to nearest, ties to even: the default rounding mode, as on the device.
inline int __float2int_rn(float x) { return (int)std::nearbyint(x); }

inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }

inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, sizeof i); return i; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, sizeof f); return f; }

#endif  // !__CUDACC__
#endif  // EA_CUDA_HOST_SHIM_H
