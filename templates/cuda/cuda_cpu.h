/*
 * cuda_cpu.h -- run lincompile's CUDA kernel sources unchanged on the CPU.
 *
 * Compiled by nvcc (__CUDACC__ defined) this header only defines LC_LAUNCH
 * and otherwise stays out of the way.  Compiled by a plain C++ compiler
 * (g++ -std=c++17/20, e.g. `g++ -include cuda_cpu.h kernels.cu.cpp`) it
 * provides a small, deterministic emulation of the CUDA execution model:
 *
 * WHAT IS MODELLED
 *  - __global__/__device__/__host__/__forceinline__/__launch_bounds__/__align__
 *    qualifiers (no-ops or GCC attributes), dim3/uint3/float2/float4/int2/int4,
 *    threadIdx/blockIdx/blockDim/gridDim, warpSize.
 *  - Kernel launches through LC_LAUNCH(kernel, grid, block, shmem, stream)(args...):
 *    under nvcc `kernel<<<grid, block, shmem, stream>>>(args...)`; here the
 *    whole grid runs synchronously before the call returns.  Blocks run one
 *    after another (x fastest, then y, then z).  Invalid configurations (zero
 *    or too large dims, >1024 threads) set cudaErrorInvalidConfiguration and do
 *    not run, like CUDA.  The kernel argument must be a single macro argument:
 *    for a template kernel with several template arguments use a function
 *    pointer variable (`auto k = kern<A, B>; LC_LAUNCH(k, ...)(...)`), which
 *    also works with <<<>>> under nvcc.
 *  - Every CUDA thread of a block is a cooperative fiber (POSIX ucontext;
 *    a block's stacks are one mapping per OS thread, guard page below, a
 *    canary checked at each stack's end, reused across launches and freed
 *    when the OS thread exits; size LC_EMU_STACK_SIZE, default 128 KiB).  Fibers run in
 *    thread-id order; each runs until it reaches __syncthreads() or returns.
 *    __syncthreads() is therefore a REAL barrier: no thread passes it before
 *    every thread of the block has arrived.  A block in which some threads
 *    have exited while others wait at a barrier (barrier deadlock / divergent
 *    __syncthreads) aborts with a clear message, as does (by default) a round
 *    in which threads wait at different __syncthreads() call sites (define
 *    LC_EMU_ALLOW_DIVERGENT_BARRIER to allow the latter).
 *  - __shared__ variables are function-local `static thread_local` storage:
 *    correct because exactly one block runs at a time in each OS thread.
 *    Their contents persist from one block / launch to the next (on a GPU
 *    they are undefined), so reading shared memory before writing it is NOT
 *    detected.
 *  - Host threads: every piece of emulator state (shared memory, the fiber
 *    scheduler and stacks, threadIdx/blockIdx/..., the last error) is per OS
 *    thread, so launches from different host threads run at the same time
 *    without sharing any of it.  Device memory they both use is the caller's
 *    business, as on a GPU.
 *  - atomicAdd/atomicSub/atomicExch/atomicMax/atomicMin/atomicCAS (int,
 *    unsigned, float, double where CUDA has them): fibers never interleave
 *    inside one, and they are also atomic across OS threads.
 *  - __ldg, a few fast-math intrinsics (__expf, __logf, __fdividef, rsqrtf,
 *    __saturatef, __fmaf_rn, ...), int/float min/max overloads, printf.
 *  - Host runtime subset: cudaError_t, cudaSuccess..., cudaStream_t,
 *    cudaMalloc/cudaFree/cudaMallocHost/cudaFreeHost/cudaMallocManaged,
 *    cudaMemcpy(Async)/cudaMemset(Async), cudaStreamCreate/Destroy/Synchronize,
 *    cudaDeviceSynchronize, cudaGetLastError/cudaPeekAtLastError, cudaGetSymbolAddress,
 *    cudaGetErrorString/cudaGetErrorName.  "Device memory" is host memory
 *    (256-byte aligned), so every cudaMemcpyKind behaves as memmove.  Streams
 *    are dummies: everything is synchronous.
 *
 * WHAT IS NOT MODELLED
 *  - Warps: there is no warp-synchronous execution, no lock-step, and no warp
 *    intrinsics (__shfl*_sync, __ballot_sync, __syncwarp, ...) -- using one
 *    is a compile error rather than a silently wrong result.  Code that relies
 *    on implicit warp synchronicity without __syncwarp is wrong on GPUs too.
 *  - Concurrency between blocks (blocks are sequential, so inter-block races
 *    and inter-block spin-waits are not reproduced; a spin-wait deadlocks).
 *  - Within a block, threads only interleave at __syncthreads(): a missing
 *    barrier shows up as wrong data (stale / partial shared tiles) whenever
 *    the code depends on another thread's write, but a write-after-read race
 *    that a GPU could exhibit may go unnoticed.
 *  - The memory model (fences are plain fences, no caches), dynamic shared
 *    memory (`extern __shared__`; the shmem argument is ignored), __constant__
 *    / texture memory, cooperative groups, dynamic parallelism, clusters,
 *    tensor cores, streams/events ordering, float rounding differences (no
 *    forced FMA contraction; nvcc contracts a*b+c into fma by default).
 *  - Resource limits other than block/grid dims (registers, shared memory
 *    size) and out-of-bounds checks (use ASan-free builds; fibers and ASan do
 *    not mix well).
 *  - Not reentrant: a kernel may not launch another kernel.
 *
 * USAGE NOTES
 *  - Several emulated libraries in one process: build them with -fno-gnu-unique, else g++
 *    makes the __shared__ statics of template kernels GNU-unique symbols that the dynamic
 *    linker merges across libraries (fatal when their sizes differ).
 *  - LC_EMULATED is 1 here, 0 under nvcc.  __syncthreads() is a macro (it records
 *    the call site).  `#pragma unroll` is unknown to g++: add -Wno-unknown-pragmas.
 *  - Cost: roughly two context switches per thread per barrier; fine for tests
 *    (a 130^3 GEMM with 256-thread blocks runs in ~10 ms).
 */
#ifndef LC_CUDA_CPU_H
#define LC_CUDA_CPU_H

#if defined(__CUDACC__)
/* ------------------------------ real CUDA ------------------------------ */
#include <cuda_runtime.h>
#ifndef LC_LAUNCH
#define LC_LAUNCH(kernel, grid, block, shmem, stream) \
    kernel<<<(grid), (block), (shmem), (stream)>>>
#endif
#define LC_EMULATED 0

#else
/* ------------------------------ CPU emulation ---------------------------- */
#define LC_EMULATED 1

#include <ucontext.h>
#include <sys/mman.h>
#include <unistd.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
/* No <atomic>/<vector>: this header is parsed once per generated model (cuda-cpu target),
   and those two would double its compile time. GCC's __atomic builtins serve instead. */

#ifndef LC_EMU_STACK_SIZE
#define LC_EMU_STACK_SIZE (128 * 1024)
#endif

/* ---- qualifiers ---- */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static thread_local
#define __constant__
/* __restrict__ is a GCC/Clang keyword already. */

/* ---- vector types ---- */
struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};
struct __attribute__((aligned(8))) float2 { float x, y; };
struct float3 { float x, y, z; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(8))) int2 { int x, y; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
struct __attribute__((aligned(16))) uint4 { unsigned int x, y, z, w; };
static inline float2 make_float2(float x, float y) { return float2{x, y}; }
static inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
static inline int2 make_int2(int x, int y) { return int2{x, y}; }
static inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
static inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

/* ---- built-in variables (per OS thread; set by the scheduler before a fiber runs) ---- */
inline thread_local uint3 threadIdx = {0, 0, 0};
inline thread_local uint3 blockIdx = {0, 0, 0};
inline thread_local dim3 blockDim = dim3(1, 1, 1);
inline thread_local dim3 gridDim = dim3(1, 1, 1);
constexpr int warpSize = 32;

/* ---- runtime API subset ---- */
enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorNotSupported = 801,
    cudaErrorLaunchFailure = 719,
    cudaErrorUnknown = 999
};
typedef cudaError_t cudaError;
enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4
};
struct CUstream_st { int dummy; };
typedef struct CUstream_st* cudaStream_t;
#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01

namespace lc_emu {

inline thread_local cudaError_t last_error = cudaSuccess;

static inline cudaError_t set_error(cudaError_t e) {
    if (e != cudaSuccess) last_error = e;
    return e;
}

[[noreturn]] static inline void fatal(const char* fmt, const char* a, long b0, long b1, long b2,
                                      long n1, long n2, const char* file, int line) {
    fprintf(stderr, fmt, a, b0, b1, b2, n1, n2, file, line);
    fflush(stderr);
    abort();
}

enum class FiberState : unsigned char { Ready, AtBarrier, Done };

struct Fiber {
    ucontext_t ctx;
    FiberState state;
    const char* bar_file;
    int bar_line;
};

/* Per-OS-thread scheduler state. The fiber stacks of a block are one mapping, reused from
   launch to launch and freed when the OS thread exits: [guard page][stack 0][stack 1]...
   One mapping (not one per stack) keeps the process's memory-map count small however many
   emulated libraries and threads it has (the kernel caps it, vm.max_map_count). A stack
   that overflows runs into the guard page (stack 0) or its neighbour's canary, which is
   checked after every block. */
static const uint64_t CANARY = 0x6c635f656d755f21ull; /* "!_ume_cl" */

struct Runner {
    ucontext_t sched;
    Fiber* fibers = nullptr;    /* n_stacks of them */
    char* region = nullptr;     /* the mapping: a guard page, then n_stacks stacks */
    size_t region_bytes = 0, stack_bytes = 0;
    int n_stacks = 0;
    int cur = -1;
    bool active = false;
    void (*body)(void*) = nullptr;
    void* arg = nullptr;

    ~Runner() { release(); }
    static size_t page() {
        static const size_t p = (size_t)sysconf(_SC_PAGESIZE);
        return p;
    }
    void release() {
        if (region) munmap(region, region_bytes);
        free(fibers);
        region = nullptr;
        fibers = nullptr;
        region_bytes = 0;
        n_stacks = 0;
    }
    void ensure(int n) {
        if (n <= n_stacks) return;
        release(); /* never called while fibers run: run_grid checks `active` first */
        const size_t p = page();
        stack_bytes = ((size_t)LC_EMU_STACK_SIZE + p - 1) / p * p;
        fibers = (Fiber*)malloc(sizeof(Fiber) * (size_t)n);
        region_bytes = p + stack_bytes * (size_t)n;
        void* m = mmap(nullptr, region_bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (!fibers || m == MAP_FAILED) {
            fprintf(stderr, "lc_emu: cannot allocate %d fiber stacks\n", n);
            abort();
        }
        mprotect(m, p, PROT_NONE); /* guard page: stack 0 overflowing -> SIGSEGV */
        region = (char*)m;
        n_stacks = n;
        for (int t = 0; t < n; ++t) memcpy(stack_lo(t), &CANARY, sizeof CANARY);
    }
    char* stack_lo(int t) const { return region + page() + stack_bytes * (size_t)t; }
    bool overflowed(int t) const { return memcmp(stack_lo(t), &CANARY, sizeof CANARY) != 0; }
};

static inline Runner& runner() {
    static thread_local Runner r;
    return r;
}

static void fiber_main() {
    Runner& R = runner();
    R.body(R.arg);
    R.fibers[R.cur].state = FiberState::Done;
    /* returning resumes R.sched through uc_link */
}

static inline void syncthreads(const char* file, int line) {
    Runner& R = runner();
    if (!R.active) {
        fprintf(stderr, "lc_emu: __syncthreads() called outside of a kernel (%s:%d)\n", file, line);
        abort();
    }
    Fiber& f = R.fibers[R.cur];
    f.state = FiberState::AtBarrier;
    f.bar_file = file;
    f.bar_line = line;
    swapcontext(&f.ctx, &R.sched);
}

static inline void run_block(Runner& R, const char* kname, int nt) {
    const unsigned bx = blockDim.x, by = blockDim.y;
    for (int t = 0; t < nt; ++t) {
        Fiber& f = R.fibers[t];
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = R.stack_lo(t);
        f.ctx.uc_stack.ss_size = R.stack_bytes;
        f.ctx.uc_link = &R.sched;
        makecontext(&f.ctx, fiber_main, 0);
        f.state = FiberState::Ready;
        f.bar_file = nullptr;
        f.bar_line = 0;
    }
    for (long round = 0;; ++round) {
        for (int t = 0; t < nt; ++t) {
            Fiber& f = R.fibers[t];
            if (f.state != FiberState::Ready) continue;
            R.cur = t;
            threadIdx = uint3{(unsigned)t % bx, ((unsigned)t / bx) % by, (unsigned)t / (bx * by)};
            swapcontext(&R.sched, &f.ctx);
        }
        int waiting = 0, done = 0, first_wait = -1;
        for (int t = 0; t < nt; ++t) {
            if (R.fibers[t].state == FiberState::Done) ++done;
            else { ++waiting; if (first_wait < 0) first_wait = t; }
        }
        if (done == nt) {
            for (int t = 0; t < nt; ++t)
                if (R.overflowed(t))
                    fatal("lc_emu: FIBER STACK OVERFLOW in kernel '%s', block (%ld,%ld,%ld): thread %ld "
                          "used more than its %ld bytes of stack (%s:%d); build with a larger "
                          "-DLC_EMU_STACK_SIZE.\n", kname, blockIdx.x, blockIdx.y, blockIdx.z, t,
                          (long)R.stack_bytes, __FILE__, __LINE__);
            return;
        }
        const Fiber& w = R.fibers[first_wait];
        if (done != 0) {
            fatal("lc_emu: BARRIER DEADLOCK in kernel '%s', block (%ld,%ld,%ld): %ld thread(s) exited "
                  "while %ld thread(s) wait at __syncthreads() (%s:%d). Every thread of a block must "
                  "reach every __syncthreads() (divergent barrier).\n",
                  kname, blockIdx.x, blockIdx.y, blockIdx.z, done, waiting, w.bar_file, w.bar_line);
        }
#ifndef LC_EMU_ALLOW_DIVERGENT_BARRIER
        for (int t = 0; t < nt; ++t) {
            const Fiber& f = R.fibers[t];
            if (f.bar_line != w.bar_line || strcmp(f.bar_file, w.bar_file) != 0) {
                fprintf(stderr,
                        "lc_emu: DIVERGENT BARRIER in kernel '%s', block (%u,%u,%u): thread %d waits "
                        "at %s:%d but thread %d at %s:%d.\n",
                        kname, blockIdx.x, blockIdx.y, blockIdx.z, first_wait, w.bar_file, w.bar_line,
                        t, f.bar_file, f.bar_line);
                fflush(stderr);
                abort();
            }
        }
#endif
        for (int t = 0; t < nt; ++t) R.fibers[t].state = FiberState::Ready;
    }
}

static inline void run_grid(const char* kname, dim3 grid, dim3 block, size_t /*shmem*/,
                            void (*body)(void*), void* arg) {
    const unsigned long long nt = (unsigned long long)block.x * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535u || grid.z > 65535u ||
        block.x == 0 || block.y == 0 || block.z == 0 || block.x > 1024u || block.y > 1024u ||
        block.z > 64u || nt > 1024ull) {
        set_error(cudaErrorInvalidConfiguration);
        return;
    }
    Runner& R = runner();
    if (R.active) {
        fprintf(stderr, "lc_emu: kernel '%s' launched from inside a kernel (not supported)\n", kname);
        abort();
    }
    R.ensure((int)nt);
    R.active = true;
    R.body = body;
    R.arg = arg;
    const uint3 save_t = threadIdx, save_b = blockIdx;
    const dim3 save_bd = blockDim, save_gd = gridDim;
    gridDim = grid;
    blockDim = block;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = uint3{x, y, z};
                run_block(R, kname, (int)nt);
            }
    threadIdx = save_t;
    blockIdx = save_b;
    blockDim = save_bd;
    gridDim = save_gd;
    R.active = false;
    R.cur = -1;
}

template <class F>
struct Launch {
    F kernel;
    const char* name;
    dim3 grid, block;
    size_t shmem;
    cudaStream_t stream;
    template <class... Args>
    void operator()(Args&&... args) const {
        /* every fiber calls the kernel with its own by-value copies of the arguments */
        auto body = [&]() { kernel(args...); };
        run_grid(name, grid, block, shmem,
                 [](void* p) { (*static_cast<decltype(body)*>(p))(); }, &body);
    }
};

template <class F>
static inline Launch<F> make_launch(F kernel, const char* name, dim3 grid, dim3 block, size_t shmem,
                                    cudaStream_t stream) {
    return Launch<F>{kernel, name, grid, block, shmem, stream};
}

template <class T, class Op>
static inline T atomic_rmw(T* p, Op op) {
    T old;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    T desired;
    do {
        desired = op(old);
    } while (!__atomic_compare_exchange(p, &old, &desired, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
    return old;
}

}  // namespace lc_emu

#define LC_LAUNCH(kernel, grid, block, shmem, stream) \
    ::lc_emu::make_launch((kernel), #kernel, dim3(grid), dim3(block), (size_t)(shmem), (stream))

#define __syncthreads() ::lc_emu::syncthreads(__FILE__, __LINE__)

static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* ---- atomics ---- */
static inline float atomicAdd(float* p, float v) { return lc_emu::atomic_rmw(p, [v](float o) { return o + v; }); }
static inline double atomicAdd(double* p, double v) { return lc_emu::atomic_rmw(p, [v](double o) { return o + v; }); }
static inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
static inline int atomicSub(int* p, int v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
static inline unsigned atomicSub(unsigned* p, unsigned v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
static inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
static inline unsigned atomicExch(unsigned* p, unsigned v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
static inline float atomicExch(float* p, float v) { return lc_emu::atomic_rmw(p, [v](float) { return v; }); }
static inline int atomicMax(int* p, int v) { return lc_emu::atomic_rmw(p, [v](int o) { return o > v ? o : v; }); }
static inline unsigned atomicMax(unsigned* p, unsigned v) { return lc_emu::atomic_rmw(p, [v](unsigned o) { return o > v ? o : v; }); }
static inline int atomicMin(int* p, int v) { return lc_emu::atomic_rmw(p, [v](int o) { return o < v ? o : v; }); }
static inline unsigned atomicMin(unsigned* p, unsigned v) { return lc_emu::atomic_rmw(p, [v](unsigned o) { return o < v ? o : v; }); }
static inline int atomicCAS(int* p, int cmp, int v) {
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}
static inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) {
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}

/* ---- intrinsics / math ---- */
template <class T> static inline T __ldg(const T* p) { return *p; }
/* __expf, __logf, __sinf, __cosf, __tanf, __powf: glibc's <math.h> already declares these
   (its internal aliases of expf, logf, ...), so they are usable as is. */
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

/* ---- host runtime ---- */
static inline cudaError_t cudaGetLastError() { cudaError_t e = lc_emu::last_error; lc_emu::last_error = cudaSuccess; return e; }
static inline cudaError_t cudaPeekAtLastError() { return lc_emu::last_error; }
static inline const char* cudaGetErrorName(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "cudaSuccess";
        case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
        case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
        case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
        case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
        case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
        case cudaErrorNotSupported: return "cudaErrorNotSupported";
        case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
        default: return "cudaErrorUnknown";
    }
}
static inline const char* cudaGetErrorString(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorInvalidConfiguration: return "invalid configuration argument";
        case cudaErrorInvalidDevicePointer: return "invalid device pointer";
        case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
        case cudaErrorNotSupported: return "operation not supported";
        case cudaErrorLaunchFailure: return "unspecified launch failure";
        default: return "unknown error";
    }
}
static inline cudaError_t cudaMalloc(void** p, size_t bytes) {
    if (!p) return lc_emu::set_error(cudaErrorInvalidValue);
    size_t sz = (bytes + 255) / 256 * 256;
    if (sz == 0) sz = 256;
    void* q = aligned_alloc(256, sz);
    *p = q;
    if (!q) return lc_emu::set_error(cudaErrorMemoryAllocation);
    return cudaSuccess;
}
template <class T> static inline cudaError_t cudaMalloc(T** p, size_t bytes) { return cudaMalloc((void**)p, bytes); }
static inline cudaError_t cudaMallocHost(void** p, size_t bytes) { return cudaMalloc(p, bytes); }
template <class T> static inline cudaError_t cudaMallocHost(T** p, size_t bytes) { return cudaMalloc((void**)p, bytes); }
template <class T> static inline cudaError_t cudaMallocManaged(T** p, size_t bytes, unsigned = 1) { return cudaMalloc((void**)p, bytes); }
static inline cudaError_t cudaFree(void* p) { free(p); return cudaSuccess; }
static inline cudaError_t cudaFreeHost(void* p) { free(p); return cudaSuccess; }
static inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    if ((int)kind < 0 || (int)kind > 4) return lc_emu::set_error(cudaErrorInvalidMemcpyDirection);
    if (bytes && (!dst || !src)) return lc_emu::set_error(cudaErrorInvalidValue);
    if (bytes) memmove(dst, src, bytes);
    return cudaSuccess;
}
static inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                                          cudaStream_t = nullptr) {
    return cudaMemcpy(dst, src, bytes, kind);
}
static inline cudaError_t cudaMemset(void* p, int v, size_t bytes) {
    if (bytes && !p) return lc_emu::set_error(cudaErrorInvalidValue);
    if (bytes) memset(p, v, bytes);
    return cudaSuccess;
}
static inline cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t = nullptr) { return cudaMemset(p, v, bytes); }
static inline cudaError_t cudaStreamCreate(cudaStream_t* s) { *s = new CUstream_st{0}; return cudaSuccess; }
static inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return cudaStreamCreate(s); }
static inline cudaError_t cudaStreamDestroy(cudaStream_t s) { delete s; return cudaSuccess; }
static inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
static inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
static inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
static inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
static inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
/* A __device__ variable is ordinary memory here, so its address is its device address. */
template <class T> static inline cudaError_t cudaGetSymbolAddress(void** p, const T& symbol) {
    *p = (void*)&symbol;
    return cudaSuccess;
}

#endif /* __CUDACC__ */
#endif /* LC_CUDA_CPU_H */
