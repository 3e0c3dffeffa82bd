/*
 * cuda_cpu.h -- run lincompile's CUDA kernel sources unchanged on the CPU.
 *
 * Compiled by nvcc (__CUDACC__ defined) this header only defines LC_LAUNCH and
 * the tensor-core wrappers at its end (inline PTX), and otherwise stays out of the way.  Compiled by a plain C++ compiler
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
 *    thread-id order, warp by warp; each runs until it reaches __syncthreads(), a warp
 *    collective that its warp has not completed yet, or returns.
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
 *  - Dynamic shared memory: LC_DYNAMIC_SHARED(T, name) in a kernel is `extern __shared__`
 *    under nvcc; here `name` points at the launch's shmem bytes (filled with 0xff at each
 *    launch, so reading before writing shows NaNs).  A launch asking for more than
 *    LC_EMU_MAX_DYNAMIC_SHARED (227 KiB) fails with cudaErrorInvalidValue;
 *    cudaFuncSetAttribute(MaxDynamicSharedMemorySize) is accepted up to that bound.
 *  - Host threads: every piece of emulator state (shared memory, the fiber
 *    scheduler and stacks, threadIdx/blockIdx/..., the last error) is per OS
 *    thread, so launches from different host threads run at the same time
 *    without sharing any of it.  Device memory they both use is the caller's
 *    business, as on a GPU.
 *  - Warps: threads t = 32w .. 32w+31 of a block (linear thread id) form warp w.  Warp
 *    collectives are warp-scoped barriers of the scheduler: each lane named in the mask
 *    publishes its operand and waits; the last to arrive computes every lane's result and
 *    all continue.  __shfl_sync, __shfl_up_sync, __shfl_down_sync, __shfl_xor_sync (PTX
 *    shfl.sync semantics, width 1..32), __ballot_sync, __any_sync, __all_sync, __syncwarp,
 *    and the tensor-core building blocks at the end of this file (mma.sync m16n8k8 tf32 and
 *    m16n8k16 bf16, ldmatrix, cp.async groups, tf32/bf16 conversion) plus __nv_bfloat16.
 *    A collective that cannot complete (a lane of its mask exited or waits at
 *    __syncthreads) aborts with WARP DEADLOCK; lanes that wait at different collectives
 *    with overlapping masks abort with DIVERGENT WARP COLLECTIVE; reading a lane outside
 *    the mask aborts.  Lanes a partial last warp does not have are dropped from masks.
 *    cp.async copies are made at the cp.async.wait_group that covers them (or when the
 *    thread exits), so shared memory read before the wait shows the old contents.
 *  - sm_90: TMA tensor copies (cuTensorMapEncodeTiled through cudaGetDriverEntryPoint*,
 *    cp.async.bulk.tensor.2d with swizzle and zero fill), mbarrier objects (init, arrive,
 *    expect_tx, try_wait.parity; a waiting thread blocks until its phase completes) and wgmma
 *    over a warpgroup of 128 threads (fence, mma_async from matrix descriptors, commit, wait),
 *    see the section at the end of this file. The fiber scheduler repeats its pass over the
 *    warps while warpgroup collectives or mbarrier phases make threads ready.
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
 *  - Implicit warp synchronicity: lanes of a warp do not run in lock-step; only the warp
 *    collectives above synchronize them (code that relies on lock-step without __syncwarp
 *    is wrong on GPUs too).  __activemask, __match_*_sync, __reduce_*_sync are absent
 *    (a compile error rather than a silently wrong result).
 *  - Concurrency between blocks (blocks are sequential, so inter-block races
 *    and inter-block spin-waits are not reproduced; a spin-wait deadlocks).
 *  - Within a block, threads only interleave at __syncthreads(): a missing
 *    barrier shows up as wrong data (stale / partial shared tiles) whenever
 *    the code depends on another thread's write, but a write-after-read race
 *    that a GPU could exhibit may go unnoticed.
 *  - The memory model (fences are plain fences, no caches), `extern __shared__`
 *    declarations (write LC_DYNAMIC_SHARED(T, name) instead, see above), __constant__
 *    / texture memory, cooperative groups, dynamic parallelism, clusters (a TMA copy or
 *    mbarrier is the block's own), TMA multicast / stores / im2col, setmaxnreg, wgmma with A
 *    in registers or sparse, streams/events ordering, float rounding differences (no
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
/* one untyped array for every kernel: template kernels of different T may share the name */
#define LC_DYNAMIC_SHARED(T, name)                                  \
    extern __shared__ __align__(128) unsigned char lc_dynamic_shared_[]; \
    T* const name = reinterpret_cast<T*>(lc_dynamic_shared_)

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

/* AtGroup: at a warpgroup collective (wgmma); AtMbar: in mbarrier.try_wait on a phase that
   has not completed yet */
enum class FiberState : unsigned char { Ready, AtBarrier, AtWarp, AtGroup, AtMbar, Done };

/* A warp collective: when every lane of `mask` waits at one with the same function and mask,
   the last lane to arrive calls fn(data, mask) once for all of them (data[lane]: what each
   lane published, nullptr outside the mask), then all continue. */
typedef void (*WarpFn)(void* const* data, unsigned mask);

#ifndef LC_EMU_MAX_DYNAMIC_SHARED
#define LC_EMU_MAX_DYNAMIC_SHARED (227 * 1024)   /* bytes per block, as on sm_90 */
#endif
#ifndef LC_EMU_MAX_ASYNC
#define LC_EMU_MAX_ASYNC 64   /* cp.async copies one thread may have in flight */
#endif
struct AsyncCopy {
    void* dst;
    const void* src;
    unsigned bytes, src_bytes;
    long group;               /* -1 until cp.async.commit_group */
};

struct Fiber {
    ucontext_t ctx;
    FiberState state;
    const char* bar_file;
    int bar_line;
    /* at a warp collective */
    unsigned warp_mask;
    WarpFn warp_fn;
    void* warp_data;
    const char* warp_what;
    /* at a warpgroup collective (warp_fn / warp_data / warp_what reused), or an mbarrier wait */
    uint32_t mbar_addr;
    unsigned mbar_parity;
    /* cp.async copies issued and not yet waited for, in issue order */
    int n_async;
    long groups;              /* cp.async groups committed so far */
    AsyncCopy async[LC_EMU_MAX_ASYNC];
};

/* Per-OS-thread scheduler state. The fiber stacks of a block are one mapping, reused from
   launch to launch and freed when the OS thread exits: [guard page][stack 0][stack 1]...
   One mapping (not one per stack) keeps the process's memory-map count small however many
   emulated libraries and threads it has (the kernel caps it, vm.max_map_count). A stack
   that overflows runs into the guard page (stack 0) or its neighbour's canary, which is
   checked after every block. */
static const uint64_t CANARY = 0x6c635f656d755f21ull; /* "!_ume_cl" */

/* ---- sm_90 asynchronous state of a block (see the wgmma / TMA / mbarrier section at the end) ---- */
#ifndef LC_EMU_MAX_MBARRIERS
#define LC_EMU_MAX_MBARRIERS 64     /* mbarrier objects one block may initialize */
#endif
#ifndef LC_EMU_MAX_TMA
#define LC_EMU_MAX_TMA 8            /* TMA copies in flight on one mbarrier */
#endif
#ifndef LC_EMU_MAX_WGMMA
#define LC_EMU_MAX_WGMMA 64         /* wgmma.mma_async in flight in one warpgroup */
#endif
struct TmaCopy { uint32_t dst; unsigned char map[128]; int c0, c1; };
struct Mbarrier {
    uint32_t addr;          /* shared-window address of the 8-byte object */
    int expected, pending;  /* arrivals per phase, arrivals still missing in the current one */
    long long tx;           /* tx-count of the current phase */
    unsigned long phase;    /* phases completed so far (parity = phase & 1) */
    int n_copies;
    TmaCopy copies[LC_EMU_MAX_TMA];
};
struct WgmmaOp {
    uint64_t da, db;
    int n, prec, ta, tb;    /* prec 1 tf32, 2 bf16 */
    long group;             /* -1 until wgmma.commit_group */
    float* d[128];          /* each thread's accumulator fragment */
};
struct WarpgroupState { int n_ops; long committed; bool fenced; WgmmaOp ops[LC_EMU_MAX_WGMMA]; };

struct Runner {
    ucontext_t sched;
    /* allocated at a block's first use (wgmma kernels only), cleared at each block */
    Mbarrier* mbars = nullptr;   /* LC_EMU_MAX_MBARRIERS */
    int n_mbars = 0;
    WarpgroupState* wgs = nullptr;   /* 8: 1024 threads at most */
    Fiber* fibers = nullptr;    /* n_stacks of them */
    char* region = nullptr;     /* the mapping: a guard page, then n_stacks stacks */
    char* dyn = nullptr;        /* dynamic shared memory (extern __shared__) of the launch */
    size_t dyn_bytes = 0;
    size_t dyn_used = 0;        /* bytes of it the current launch asked for */
    size_t region_bytes = 0, stack_bytes = 0;
    int n_stacks = 0;
    int cur = -1;
    bool active = false;
    void (*body)(void*) = nullptr;
    void* arg = nullptr;

    ~Runner() { release(); free(dyn); free(mbars); free(wgs); }
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

/* Performs the thread's pending cp.async copies of groups < `upto` (all, uncommitted too, for
   upto < 0), in issue order: the copy happens at the wait, so a read of shared memory before
   the wait sees the old contents, as it may on a GPU. */
static inline void async_complete(Fiber& f, long upto) {
    int kept = 0;
    for (int i = 0; i < f.n_async; ++i) {
        AsyncCopy& c = f.async[i];
        if (upto < 0 || (c.group >= 0 && c.group < upto)) {
            if (c.src_bytes) memcpy(c.dst, c.src, c.src_bytes);
            if (c.bytes > c.src_bytes) memset((char*)c.dst + c.src_bytes, 0, c.bytes - c.src_bytes);
        } else {
            f.async[kept++] = c;
        }
    }
    f.n_async = kept;
}

static void fiber_main() {
    Runner& R = runner();
    R.body(R.arg);
    async_complete(R.fibers[R.cur], -1);   /* copies still in flight land all the same */
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

static bool mbar_waiter_ready(Runner& R, Fiber& f);   /* wgmma / TMA / mbarrier section */
static void async_block_start(Runner& R);
static void async_block_end(Runner& R, const char* kname);

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
        f.warp_fn = nullptr;
        f.n_async = 0;
        f.groups = 0;
    }
    async_block_start(R);
    for (long round = 0;; ++round) {
        /* Warp by warp: run its ready lanes until each waits at __syncthreads(), has exited,
           or waits at a warp collective that cannot complete yet (a collective completed by
           its last lane makes the others ready again, hence the inner loop). Warpgroup
           collectives and mbarrier phases make lanes of other warps ready again: repeat the
           pass over the warps until nothing runs. */
        for (bool progress = true; progress;) {
            progress = false;
            for (int w0 = 0; w0 < nt; w0 += 32) {
                const int w1 = w0 + 32 < nt ? w0 + 32 : nt;
                for (bool ran = true; ran;) {
                    ran = false;
                    for (int t = w0; t < w1; ++t) {
                        Fiber& f = R.fibers[t];
                        if (f.state == FiberState::AtMbar && mbar_waiter_ready(R, f)) f.state = FiberState::Ready;
                        if (f.state != FiberState::Ready) continue;
                        R.cur = t;
                        threadIdx = uint3{(unsigned)t % bx, ((unsigned)t / bx) % by, (unsigned)t / (bx * by)};
                        swapcontext(&R.sched, &f.ctx);
                        ran = progress = true;
                    }
                }
            }
        }
        int waiting = 0, done = 0, first_wait = -1;
        for (int t = 0; t < nt; ++t) {
            const Fiber& f = R.fibers[t];
            if (f.state == FiberState::AtGroup || f.state == FiberState::AtMbar) {
                fprintf(stderr,
                        "lc_emu: %s in kernel '%s', block (%u,%u,%u): thread %d waits at %s (%s:%d) "
                        "and nothing can make it continue (%s).\n",
                        f.state == FiberState::AtGroup ? "WARPGROUP DEADLOCK" : "MBARRIER DEADLOCK",
                        kname, blockIdx.x, blockIdx.y, blockIdx.z, t,
                        f.state == FiberState::AtGroup ? f.warp_what : "mbarrier.try_wait.parity",
                        f.bar_file, f.bar_line,
                        f.state == FiberState::AtGroup
                            ? "every thread of its warpgroup must reach the same wgmma instruction"
                            : "the phase it waits for never completes: missing arrivals or tx bytes");
                fflush(stderr);
                abort();
            }
            if (f.state == FiberState::AtWarp) {
                /* a lane of its mask has exited or waits at __syncthreads(): never completes */
                const int w0 = t - t % 32;
                int other = -1;
                for (int l = 0; l < 32 && w0 + l < nt; ++l)
                    if ((f.warp_mask >> l & 1u) && R.fibers[w0 + l].state != FiberState::AtWarp) other = w0 + l;
                fprintf(stderr,
                        "lc_emu: WARP DEADLOCK in kernel '%s', block (%u,%u,%u): thread %d waits at %s "
                        "(mask 0x%08x, %s:%d) but thread %d of that mask %s. Every lane named in a "
                        "warp collective's mask must reach it.\n",
                        kname, blockIdx.x, blockIdx.y, blockIdx.z, t, f.warp_what, f.warp_mask,
                        f.bar_file, f.bar_line, other,
                        other < 0 ? "is missing"
                        : R.fibers[other].state == FiberState::Done ? "has exited" : "waits at __syncthreads()");
                fflush(stderr);
                abort();
            }
            if (f.state == FiberState::Done) ++done;
            else { ++waiting; if (first_wait < 0) first_wait = t; }
        }
        if (done == nt) {
            async_block_end(R, kname);
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

/* Lane `R.cur` arrives at a warp collective (see WarpFn). Lanes named in `mask` that the
   block does not have (a partial last warp) are left out, as exited threads are on a GPU. */
static inline void warp_collective(unsigned mask, void* data, WarpFn fn, const char* what,
                                   const char* file, int line) {
    Runner& R = runner();
    if (!R.active) {
        fprintf(stderr, "lc_emu: %s called outside of a kernel (%s:%d)\n", what, file, line);
        abort();
    }
    const int t = R.cur, lane = t % 32, w0 = t - lane;
    const int nt = (int)(blockDim.x * blockDim.y * blockDim.z);
    const int nl = nt - w0 < 32 ? nt - w0 : 32;
    if (!(mask >> lane & 1u)) {
        fprintf(stderr, "lc_emu: %s: thread %d (lane %d) is not in its own mask 0x%08x (%s:%d)\n",
                what, t, lane, mask, file, line);
        abort();
    }
    if (nl < 32) mask &= (1u << nl) - 1u;
    Fiber& f = R.fibers[t];
    f.state = FiberState::AtWarp;
    f.warp_mask = mask;
    f.warp_fn = fn;
    f.warp_data = data;
    f.warp_what = what;
    f.bar_file = file;
    f.bar_line = line;
    void* lanes[32] = {};
    for (int l = 0; l < nl; ++l) {
        const Fiber& g = R.fibers[w0 + l];
        if (g.state != FiberState::AtWarp || !(g.warp_mask & mask)) continue;   /* another group */
        if (g.warp_mask != mask || g.warp_fn != fn) {
            fprintf(stderr,
                    "lc_emu: DIVERGENT WARP COLLECTIVE in block (%u,%u,%u): thread %d calls %s with mask "
                    "0x%08x (%s:%d) while thread %d waits at %s with mask 0x%08x (%s:%d).\n",
                    blockIdx.x, blockIdx.y, blockIdx.z, t, what, mask, file, line, w0 + l, g.warp_what,
                    g.warp_mask, g.bar_file, g.bar_line);
            fflush(stderr);
            abort();
        }
        lanes[l] = g.warp_data;
    }
    for (int l = 0; l < nl; ++l)
        if ((mask >> l & 1u) && !lanes[l]) {   /* not everyone is here yet: wait */
            swapcontext(&f.ctx, &R.sched);
            return;
        }
    fn(lanes, mask);
    for (int l = 0; l < nl; ++l)
        if (mask >> l & 1u) R.fibers[w0 + l].state = FiberState::Ready;
}

static inline void run_grid(const char* kname, dim3 grid, dim3 block, size_t shmem,
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
    if (shmem > LC_EMU_MAX_DYNAMIC_SHARED) {
        set_error(cudaErrorInvalidValue);
        return;
    }
    if (shmem > R.dyn_bytes) {
        free(R.dyn);
        R.dyn = (char*)aligned_alloc(1024, (shmem + 1023) / 1024 * 1024);   /* the shared window: swizzle patterns repeat every 1024 bytes */
        if (!R.dyn) {
            fprintf(stderr, "lc_emu: cannot allocate %zu bytes of dynamic shared memory\n", shmem);
            abort();
        }
        R.dyn_bytes = shmem;
    }
    if (shmem) memset(R.dyn, 0xff, shmem);   /* undefined on a GPU: NaN here, not zeros */
    R.dyn_used = shmem;
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
/* Dynamic shared memory: `LC_DYNAMIC_SHARED(float, sm);` declares `extern __shared__ float sm[]`
   under nvcc; here a pointer to the launch's shmem bytes (per OS thread, 128-byte aligned,
   filled with 0xff bytes at each launch). */
#define LC_DYNAMIC_SHARED(T, name) T* const name = (T*)::lc_emu::runner().dyn

/* ---- warp-level primitives: warp collectives of the fiber scheduler ---- */
namespace lc_emu {
struct Shfl { uint64_t in, out; unsigned arg; int width; };
enum { SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR };

/* PTX shfl.sync for a segment of `width` lanes: the source lane j, or the lane itself when j
   falls outside what the mode may read (up: below the segment; down, xor: above it). */
template <int MODE>
static void shfl_fn(void* const* d, unsigned /*mask*/) {
    Shfl* s[32];
    for (int l = 0; l < 32; ++l) s[l] = (Shfl*)d[l];
    for (int l = 0; l < 32; ++l) {
        if (!s[l]) continue;
        const int w = s[l]->width, lo = l & ~(w - 1), hi = lo + w - 1;
        const int b = (int)(s[l]->arg & 31u);
        int j = l;
        if (MODE == SHFL_IDX) j = lo | (b & (w - 1));
        else if (MODE == SHFL_UP) j = l - b >= lo ? l - b : l;
        else if (MODE == SHFL_DOWN) j = l + b <= hi ? l + b : l;
        else j = (l ^ b) <= hi ? (l ^ b) : l;
        if (!s[j]) {
            fprintf(stderr, "lc_emu: __shfl*_sync: lane %d reads lane %d, which is not in the mask "
                            "(undefined on a GPU)\n", l, j);
            abort();
        }
        s[l]->out = s[j]->in;
    }
}

template <int MODE, class T>
static inline T shfl(unsigned mask, T var, unsigned arg, int width, const char* what,
                     const char* file, int line) {
    static_assert(sizeof(T) <= 8, "__shfl*_sync takes values of at most 8 bytes");
    if (width < 1 || width > 32 || (width & (width - 1))) {
        fprintf(stderr, "lc_emu: %s: width %d is not a power of two in 1..32 (%s:%d)\n", what, width,
                file, line);
        abort();
    }
    Shfl s{0, 0, arg, width};
    memcpy(&s.in, &var, sizeof(T));
    warp_collective(mask, &s, shfl_fn<MODE>, what, file, line);
    T r;
    memcpy(&r, &s.out, sizeof(T));
    return r;
}

struct Vote { int pred; unsigned out; int all; };
static void ballot_fn(void* const* d, unsigned /*mask*/) {
    unsigned b = 0;
    int all = 1;
    for (int l = 0; l < 32; ++l)
        if (d[l]) {
            if (((Vote*)d[l])->pred) b |= 1u << l;
            else all = 0;
        }
    for (int l = 0; l < 32; ++l)
        if (d[l]) { ((Vote*)d[l])->out = b; ((Vote*)d[l])->all = all; }
}
static void syncwarp_fn(void* const*, unsigned) {}
}  // namespace lc_emu

#define LC_EMU_SITE const char* lc_file_ = __builtin_FILE(), int lc_line_ = __builtin_LINE()
template <class T>
static inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize, LC_EMU_SITE) {
    return lc_emu::shfl<lc_emu::SHFL_IDX>(mask, var, (unsigned)src_lane, width, "__shfl_sync", lc_file_, lc_line_);
}
template <class T>
static inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize, LC_EMU_SITE) {
    return lc_emu::shfl<lc_emu::SHFL_UP>(mask, var, delta, width, "__shfl_up_sync", lc_file_, lc_line_);
}
template <class T>
static inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize, LC_EMU_SITE) {
    return lc_emu::shfl<lc_emu::SHFL_DOWN>(mask, var, delta, width, "__shfl_down_sync", lc_file_, lc_line_);
}
template <class T>
static inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize, LC_EMU_SITE) {
    return lc_emu::shfl<lc_emu::SHFL_XOR>(mask, var, (unsigned)lane_mask, width, "__shfl_xor_sync", lc_file_,
                                          lc_line_);
}
static inline unsigned __ballot_sync(unsigned mask, int pred, LC_EMU_SITE) {
    lc_emu::Vote v{pred, 0, 0};
    lc_emu::warp_collective(mask, &v, lc_emu::ballot_fn, "__ballot_sync", lc_file_, lc_line_);
    return v.out;
}
static inline int __any_sync(unsigned mask, int pred, LC_EMU_SITE) {
    lc_emu::Vote v{pred, 0, 0};
    lc_emu::warp_collective(mask, &v, lc_emu::ballot_fn, "__any_sync", lc_file_, lc_line_);
    return v.out != 0;
}
static inline int __all_sync(unsigned mask, int pred, LC_EMU_SITE) {
    lc_emu::Vote v{pred, 0, 0};
    lc_emu::warp_collective(mask, &v, lc_emu::ballot_fn, "__all_sync", lc_file_, lc_line_);
    return v.all;
}
static inline void __syncwarp(unsigned mask = 0xffffffffu, LC_EMU_SITE) {
    int dummy = 0;
    lc_emu::warp_collective(mask, &dummy, lc_emu::syncwarp_fn, "__syncwarp", lc_file_, lc_line_);
}

/* ---- bfloat16 (the subset of cuda_bf16.h lincompile uses) ---- */
struct __nv_bfloat16 { unsigned short __x; };
struct __align__(4) __nv_bfloat162 { __nv_bfloat16 x, y; };
/* round to nearest even; NaN -> the canonical NaN 0x7fff, as cuda_bf16.h does */
static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fffu};
    return __nv_bfloat16{(unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
static inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
static inline float __bfloat162float(__nv_bfloat16 h) {
    const uint32_t u = (uint32_t)h.__x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return __nv_bfloat162{__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}
static inline __nv_bfloat162 __float22bfloat162_rn(float2 v) { return __floats2bfloat162_rn(v.x, v.y); }
static inline float2 __bfloat1622float2(__nv_bfloat162 v) {
    return float2{__bfloat162float(v.x), __bfloat162float(v.y)};
}

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
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
/* Raising a kernel's dynamic shared-memory limit: launches check LC_EMU_MAX_DYNAMIC_SHARED. */
template <class F> static inline cudaError_t cudaFuncSetAttribute(F*, cudaFuncAttribute, int v) {
    return v < 0 || v > LC_EMU_MAX_DYNAMIC_SHARED ? lc_emu::set_error(cudaErrorInvalidValue) : cudaSuccess;
}
template <class T> static inline cudaError_t cudaGetSymbolAddress(void** p, const T& symbol) {
    *p = (void*)&symbol;
    return cudaSuccess;
}

#endif /* __CUDACC__ */

/* ======================= tensor-core building blocks (sm_80+) =======================
 * Small wrappers that compile to inline PTX under nvcc and to an exact emulation here.
 * Fragments follow the PTX ISA layouts (lane = 4 * g + t, g = lane / 4, t = lane % 4):
 *   lc_mma_tf32_m16n8k8 (mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32)
 *     a[0] = A[g][t]  a[1] = A[g+8][t]  a[2] = A[g][t+4]  a[3] = A[g+8][t+4]   (tf32 bits)
 *     b[0] = B[t][g]  b[1] = B[t+4][g]
 *   lc_mma_bf16_m16n8k16 (mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32), each register
 *     a pair of bf16, the lower column/row in the low half:
 *     a[0] = A[g][2t..2t+1]  a[1] = A[g+8][2t..]  a[2] = A[g][2t+8..]  a[3] = A[g+8][2t+8..]
 *     b[0] = B[2t..2t+1][g]  b[1] = B[2t+8..2t+9][g]
 *   both: c, d[0] = C[g][2t]  [1] = C[g][2t+1]  [2] = C[g+8][2t]  [3] = C[g+8][2t+1]  (fp32)
 *   The emulation multiplies exactly and sums in double, rounding once to fp32 (tensor
 *   cores round their sums differently; both are far inside fp32 accumulation error). tf32
 *   operands are read as the hardware does: the low 13 bits are ignored.
 *   lc_ldmatrix_x{1,2,4}[_trans] (ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16):
 *     lanes 8i..8i+7 give the (16-byte aligned) addresses of rows 0..7 of matrix i; r[i] of
 *     lane gets row g, b16 columns 2t, 2t+1 of matrix i (with .trans: rows 2t, 2t+1 of column
 *     g). Every lane of the warp must call it.
 *   lc_cp_async_ca<4|8|16> / lc_cp_async_cg16 (cp.async.{ca,cg}.shared.global): copy
 *     src_bytes (<= size) and zero-fill the rest; lc_cp_async_commit, lc_cp_async_wait<N>
 *     (wait_group N), lc_cp_async_wait_all. The emulation copies at the wait (a read before
 *     it sees the old data) and checks alignment.
 *   lc_cvt_tf32 (cvt.rna.tf32.f32: nearest, ties away from zero) and lc_bf16x2 (two floats
 *     to a bf16 pair, round to nearest even, `lo` in the low half).
 * Every call must be made by all 32 lanes of a warp (mma, ldmatrix: .aligned). */
#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <stdint.h>
static __device__ __forceinline__ uint32_t lc_smem_u32(const void* p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}
static __device__ __forceinline__ uint32_t lc_cvt_tf32(float x) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
}
static __device__ __forceinline__ uint32_t lc_bf16x2(float lo, float hi) {
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
static __device__ __forceinline__ void lc_mma_tf32_m16n8k8(float* d, const uint32_t* a, const uint32_t* b,
                                                           const float* c) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                 "{%8,%9}, {%10,%11,%12,%13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}
static __device__ __forceinline__ void lc_mma_bf16_m16n8k16(float* d, const uint32_t* a, const uint32_t* b,
                                                            const float* c) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                 "{%8,%9}, {%10,%11,%12,%13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}
static __device__ __forceinline__ void lc_ldmatrix_x1(uint32_t* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(lc_smem_u32(p)));
}
static __device__ __forceinline__ void lc_ldmatrix_x2(uint32_t* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(lc_smem_u32(p)));
}
static __device__ __forceinline__ void lc_ldmatrix_x4(uint32_t* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(lc_smem_u32(p)));
}
static __device__ __forceinline__ void lc_ldmatrix_x1_trans(uint32_t* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0]) : "r"(lc_smem_u32(p)));
}
static __device__ __forceinline__ void lc_ldmatrix_x2_trans(uint32_t* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(lc_smem_u32(p)));
}
static __device__ __forceinline__ void lc_ldmatrix_x4_trans(uint32_t* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(lc_smem_u32(p)));
}
template <int BYTES>
static __device__ __forceinline__ void lc_cp_async_ca(void* smem, const void* gmem, int src_bytes = BYTES) {
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async.ca copies 4, 8 or 16 bytes");
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(lc_smem_u32(smem)), "l"(gmem),
                 "n"(BYTES), "r"(src_bytes) : "memory");
}
static __device__ __forceinline__ void lc_cp_async_cg16(void* smem, const void* gmem, int src_bytes = 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(lc_smem_u32(smem)), "l"(gmem),
                 "r"(src_bytes) : "memory");
}
static __device__ __forceinline__ void lc_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
static __device__ __forceinline__ void lc_cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }
static __device__ __forceinline__ void lc_cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
#else
namespace lc_emu {
static inline float tf32_value(uint32_t bits) {   /* what the tensor core reads */
    bits &= 0xffffe000u;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
static inline float bf16_value(uint32_t pair, int hi) {
    const uint32_t u = hi ? (pair & 0xffff0000u) : (pair << 16);
    float f;
    memcpy(&f, &u, 4);
    return f;
}
struct Mma { uint32_t a[4], b[2]; float c[4], d[4]; };
/* D = A.B + C over one m16 x n8 x K tile from the 32 lanes' fragments (K = 8 tf32, 16 bf16). */
template <bool BF16>
static void mma_fn(void* const* d, unsigned mask) {
    constexpr int K = BF16 ? 16 : 8;
    double A[16][K], B[K][8], C[16][8];
    if (mask != 0xffffffffu) {
        fprintf(stderr, "lc_emu: mma.sync needs all 32 lanes of the warp (mask 0x%08x)\n", mask);
        abort();
    }
    for (int l = 0; l < 32; ++l) {
        const Mma& f = *(const Mma*)d[l];
        const int g = l >> 2, t = l & 3;
        if (BF16) {
            for (int j = 0; j < 2; ++j) {
                A[g][2 * t + j] = bf16_value(f.a[0], j);
                A[g + 8][2 * t + j] = bf16_value(f.a[1], j);
                A[g][2 * t + 8 + j] = bf16_value(f.a[2], j);
                A[g + 8][2 * t + 8 + j] = bf16_value(f.a[3], j);
                B[2 * t + j][g] = bf16_value(f.b[0], j);
                B[2 * t + 8 + j][g] = bf16_value(f.b[1], j);
            }
        } else {
            A[g][t] = tf32_value(f.a[0]);
            A[g + 8][t] = tf32_value(f.a[1]);
            A[g][t + 4] = tf32_value(f.a[2]);
            A[g + 8][t + 4] = tf32_value(f.a[3]);
            B[t][g] = tf32_value(f.b[0]);
            B[t + 4][g] = tf32_value(f.b[1]);
        }
        C[g][2 * t] = f.c[0];
        C[g][2 * t + 1] = f.c[1];
        C[g + 8][2 * t] = f.c[2];
        C[g + 8][2 * t + 1] = f.c[3];
    }
    for (int l = 0; l < 32; ++l) {
        Mma& f = *(Mma*)d[l];
        const int g = l >> 2, t = l & 3;
        for (int i = 0; i < 4; ++i) {
            const int m = g + (i >> 1) * 8, n = 2 * t + (i & 1);
            double s = C[m][n];
            for (int k = 0; k < K; ++k) s += A[m][k] * B[k][n];
            f.d[i] = (float)s;
        }
    }
}
template <bool BF16>
static inline void mma(float* d, const uint32_t* a, const uint32_t* b, const float* c, const char* file,
                       int line) {
    Mma f;
    memcpy(f.a, a, sizeof f.a);
    memcpy(f.b, b, sizeof f.b);
    memcpy(f.c, c, sizeof f.c);
    warp_collective(0xffffffffu, &f, mma_fn<BF16>, BF16 ? "mma.sync m16n8k16 bf16" : "mma.sync m16n8k8 tf32",
                    file, line);
    memcpy(d, f.d, sizeof f.d);
}
struct Ldm { const void* p; uint32_t r[4]; };
template <int NUM, bool TRANS>
static void ldmatrix_fn(void* const* d, unsigned mask) {
    if (mask != 0xffffffffu) {
        fprintf(stderr, "lc_emu: ldmatrix needs all 32 lanes of the warp (mask 0x%08x)\n", mask);
        abort();
    }
    uint16_t m[NUM][8][8];
    for (int i = 0; i < NUM; ++i)
        for (int r = 0; r < 8; ++r) {
            const void* p = ((const Ldm*)d[8 * i + r])->p;
            if ((uintptr_t)p & 15u) {
                fprintf(stderr, "lc_emu: ldmatrix: lane %d's row address %p is not 16-byte aligned\n", 8 * i + r, p);
                abort();
            }
            memcpy(m[i][r], p, 16);
        }
    for (int l = 0; l < 32; ++l) {
        Ldm& f = *(Ldm*)d[l];
        const int g = l >> 2, t = l & 3;
        for (int i = 0; i < NUM; ++i) {
            const uint16_t lo = TRANS ? m[i][2 * t][g] : m[i][g][2 * t];
            const uint16_t hi = TRANS ? m[i][2 * t + 1][g] : m[i][g][2 * t + 1];
            f.r[i] = (uint32_t)lo | (uint32_t)hi << 16;
        }
    }
}
template <int NUM, bool TRANS>
static inline void ldmatrix(uint32_t* r, const void* p, const char* file, int line) {
    Ldm f{p, {0, 0, 0, 0}};
    warp_collective(0xffffffffu, &f, ldmatrix_fn<NUM, TRANS>, "ldmatrix", file, line);
    memcpy(r, f.r, 4 * NUM);
}
static inline void cp_async(void* smem, const void* gmem, int bytes, int src_bytes, const char* file, int line) {
    Runner& R = runner();
    if (!R.active) {
        fprintf(stderr, "lc_emu: cp.async outside of a kernel (%s:%d)\n", file, line);
        abort();
    }
    if (((uintptr_t)smem | (uintptr_t)(src_bytes ? gmem : nullptr)) % (uintptr_t)bytes || src_bytes < 0 ||
        src_bytes > bytes) {
        fprintf(stderr, "lc_emu: cp.async of %d bytes: misaligned address (shared %p, global %p) or "
                        "src-size %d (%s:%d)\n", bytes, smem, gmem, src_bytes, file, line);
        abort();
    }
    Fiber& f = R.fibers[R.cur];
    if (f.n_async == LC_EMU_MAX_ASYNC) {
        fprintf(stderr, "lc_emu: more than %d cp.async copies in flight in one thread (%s:%d); build with a "
                        "larger -DLC_EMU_MAX_ASYNC\n", LC_EMU_MAX_ASYNC, file, line);
        abort();
    }
    f.async[f.n_async++] = AsyncCopy{smem, gmem, (unsigned)bytes, (unsigned)src_bytes, -1};
}
static inline Fiber& async_fiber() {
    Runner& R = runner();
    if (!R.active) {
        fprintf(stderr, "lc_emu: cp.async.commit_group/wait_group outside of a kernel\n");
        abort();
    }
    return R.fibers[R.cur];
}
}  // namespace lc_emu

static inline uint32_t lc_cvt_tf32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffffffu;   /* NaN stays NaN */
    return (u + 0x1000u) & 0xffffe000u;                          /* ties away from zero */
}
static inline uint32_t lc_bf16x2(float lo, float hi) {
    return (uint32_t)__float2bfloat16_rn(lo).__x | (uint32_t)__float2bfloat16_rn(hi).__x << 16;
}
static inline void lc_mma_tf32_m16n8k8(float* d, const uint32_t* a, const uint32_t* b, const float* c, LC_EMU_SITE) {
    lc_emu::mma<false>(d, a, b, c, lc_file_, lc_line_);
}
static inline void lc_mma_bf16_m16n8k16(float* d, const uint32_t* a, const uint32_t* b, const float* c, LC_EMU_SITE) {
    lc_emu::mma<true>(d, a, b, c, lc_file_, lc_line_);
}
static inline void lc_ldmatrix_x1(uint32_t* r, const void* p, LC_EMU_SITE) { lc_emu::ldmatrix<1, false>(r, p, lc_file_, lc_line_); }
static inline void lc_ldmatrix_x2(uint32_t* r, const void* p, LC_EMU_SITE) { lc_emu::ldmatrix<2, false>(r, p, lc_file_, lc_line_); }
static inline void lc_ldmatrix_x4(uint32_t* r, const void* p, LC_EMU_SITE) { lc_emu::ldmatrix<4, false>(r, p, lc_file_, lc_line_); }
static inline void lc_ldmatrix_x1_trans(uint32_t* r, const void* p, LC_EMU_SITE) { lc_emu::ldmatrix<1, true>(r, p, lc_file_, lc_line_); }
static inline void lc_ldmatrix_x2_trans(uint32_t* r, const void* p, LC_EMU_SITE) { lc_emu::ldmatrix<2, true>(r, p, lc_file_, lc_line_); }
static inline void lc_ldmatrix_x4_trans(uint32_t* r, const void* p, LC_EMU_SITE) { lc_emu::ldmatrix<4, true>(r, p, lc_file_, lc_line_); }
template <int BYTES>
static inline void lc_cp_async_ca(void* smem, const void* gmem, int src_bytes = BYTES, LC_EMU_SITE) {
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async.ca copies 4, 8 or 16 bytes");
    lc_emu::cp_async(smem, gmem, BYTES, src_bytes, lc_file_, lc_line_);
}
static inline void lc_cp_async_cg16(void* smem, const void* gmem, int src_bytes = 16, LC_EMU_SITE) {
    lc_emu::cp_async(smem, gmem, 16, src_bytes, lc_file_, lc_line_);
}
static inline void lc_cp_async_commit() {
    lc_emu::Fiber& f = lc_emu::async_fiber();
    for (int i = 0; i < f.n_async; ++i)
        if (f.async[i].group < 0) f.async[i].group = f.groups;
    ++f.groups;
}
template <int N>
static inline void lc_cp_async_wait() {
    lc_emu::Fiber& f = lc_emu::async_fiber();
    lc_emu::async_complete(f, f.groups - N > 0 ? f.groups - N : 0);
}
static inline void lc_cp_async_wait_all() {
    lc_cp_async_commit();
    lc_cp_async_wait<0>();
}
#endif /* tensor-core building blocks */

/* ======================= sm_90 building blocks: TMA, mbarrier, wgmma =======================
 * Wrappers that compile to inline PTX under nvcc (sm_90a: wgmma is an arch-specific feature)
 * and to an emulation here. Shared-memory operands are given as generic pointers into the
 * kernel's dynamic shared memory (LC_DYNAMIC_SHARED); lc_smem_u32 gives their shared-window
 * address (here: the offset from the start of the launch's dynamic shared memory, which the
 * emulator aligns to 1024 bytes so that address bits, and with them the swizzle patterns,
 * are those a GPU sees for a 1024-byte aligned buffer).
 *   lc_mbar_init(bar, count)            mbarrier.init.shared::cta.b64
 *   lc_mbar_arrive(bar)                 mbarrier.arrive.shared::cta.b64
 *   lc_mbar_arrive_expect_tx(bar, n)    mbarrier.arrive.expect_tx.shared::cta.b64
 *   lc_mbar_try_wait(bar, parity)       mbarrier.try_wait.parity.shared::cta.b64: true once the
 *                                       phase of that parity has completed
 *   lc_fence_mbar_init()                fence.mbarrier_init.release.cluster
 *   lc_tma_load_2d(dst, map, c0, c1, bar)
 *       cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes: the box of
 *       `map` at coordinates (c0 innermost, c1) into dst; its bytes complete_tx on bar
 *   lc_wgmma_fence(), lc_wgmma_commit(), lc_wgmma_wait<N>()
 *       wgmma.fence / commit_group / wait_group N (.sync.aligned: every thread of the warpgroup)
 *   lc_wgmma_bf16<N, TA, TB>(d, desc_a, desc_b), lc_wgmma_tf32<N>(d, desc_a, desc_b)
 *       wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16 / m64nNk8.f32.tf32.tf32 with
 *       scale-d = 1 (d += A.B), A and B from shared memory through matrix descriptors; TA / TB
 *       are imm-trans-a / imm-trans-b (1: MN-major; bf16 only, tf32 is K-major). The inline-PTX
 *       forms need the register count N/2 spelled out, so templates/cuda/gemm_mma.cu.j2
 *       defines them under nvcc for the N it uses; the emulation here takes any N.
 *   lc_wgmma_fence_acc<R>(d)            keeps the compiler from moving reads of the accumulators
 *                                       above lc_wgmma_wait (no instruction)
 * THE EMULATION (PTX ISA 8.x / 9.0; 9.7.15.x numbers as in the ISA document for PTX 9.0):
 *   mbarrier (the mbarrier instructions and their phase / tx-count semantics): a table per block keyed by the object's address: expected and pending
 *     arrivals, tx-count, phase. A phase completes when pending arrivals and tx-count are both
 *     zero; try_wait.parity(p) is true when the current phase's parity differs from p (the phase
 *     of parity p has completed). A thread whose phase has not completed blocks (FiberState::
 *     AtMbar) until it has; nothing that can complete it: MBARRIER DEADLOCK. Arrivals beyond
 *     the expected count, or an uninitialized object: abort.
 *   TMA (cp.async.bulk.tensor, 5.5 Tensors; cuTensorMapEncodeTiled of the driver API): the copy is recorded
 *     on its mbarrier and lands when a thread waits on that mbarrier (so shared memory read
 *     before the wait shows old data): elements outside the tensor are zeros, every box byte
 *     counts toward complete_tx, the box is written densely (rows of boxDim[0] elements) and
 *     the swizzle modes permute 16-byte chunks by address bits: 128B: bits [4,7) ^= bits [7,10);
 *     64B: [4,6) ^= [7,9); 32B: bit 4 ^= bit 7. Modelled: rank 2, element strides 1, no
 *     interleave, swizzled boxes exactly one swizzle span wide (else abort: not modelled).
 *   wgmma (9.7.15, asynchronous warpgroup-level matrix instructions): an operation is recorded at mma_async (every thread of the warpgroup
 *     must call it with the same descriptors) and performed at the wait_group that covers its
 *     commit group (so accumulators read before the wait show old values, and shared memory
 *     is read at the wait). A and B are decoded from the matrix descriptors (9.7.15.5.1.2.2:
 *     start address, leading / stride dimension byte offsets, each (x & 0x3FFFF) >> 4, swizzle
 *     mode in bits 62-63; a nonzero base offset aborts: not modelled) through the canonical
 *     layouts of 9.7.15.5.1.2.1.3 (T = 16 bytes / element size, W = swizzle bytes):
 *       K-major,  no swizzle: ((8,m),(T,2k)):((1T,SBO),(1,LBO))    (in elements)
 *       K-major,  W swizzle:  ((8,m),(T,2k)):((W/16*T,SBO),(1,T))
 *       MN-major, no swizzle: ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO))
 *       MN-major, W swizzle:  ((T,W/16,m),(8,k)):((1,T,LBO),(W/16*T,SBO))
 *     then the swizzle of the address (Swizzle<3,4,3> / <2,4,3> / <1,4,3> on byte addresses,
 *     the same bit patterns as TMA's, written out separately below). The products are exact
 *     in double and each output rounded once to fp32; tf32 operands are the fp32 bits with the
 *     low 13 mantissa bits ignored, as the tensor cores read them. D fragments (figures of
 *     9.7.15.5.1.1, m64nNk16 / m64nNk8, f32): thread t of the warpgroup, warp w = t / 32,
 *     lane l, g = l / 4, q = l % 4: d[i] = D[16w + g + 8 * ((i / 2) % 2)][8 * (i / 4) + 2q + i % 2].
 */
#if defined(__CUDACC__)
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#include <cuda.h>   /* CUtensorMap and the driver enums (types only: libcuda is not linked) */
static __device__ __forceinline__ void lc_mbar_init(uint64_t* bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(lc_smem_u32(bar)), "r"(count) : "memory");
}
static __device__ __forceinline__ void lc_mbar_arrive(uint64_t* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(lc_smem_u32(bar)) : "memory");
}
static __device__ __forceinline__ void lc_mbar_arrive_expect_tx(uint64_t* bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(lc_smem_u32(bar)), "r"(bytes)
                 : "memory");
}
static __device__ __forceinline__ bool lc_mbar_try_wait(uint64_t* bar, unsigned parity) {
    uint32_t ok;
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(ok) : "r"(lc_smem_u32(bar)), "r"(parity) : "memory");
    return ok != 0;
}
static __device__ __forceinline__ void lc_fence_mbar_init() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
static __device__ __forceinline__ void lc_tma_load_2d(void* dst, const CUtensorMap* map, int c0, int c1, uint64_t* bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n"
                 ::"r"(lc_smem_u32(dst)), "l"(reinterpret_cast<uint64_t>(map)), "r"(lc_smem_u32(bar)), "r"(c0), "r"(c1)
                 : "memory");
}
#if !defined(__CUDA_ARCH__) || defined(__CUDA_ARCH_FEAT_SM90_ALL)   /* wgmma: sm_90a only */
static __device__ __forceinline__ void lc_wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
static __device__ __forceinline__ void lc_wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
static __device__ __forceinline__ void lc_wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
#endif
template <int R>
static __device__ __forceinline__ void lc_wgmma_fence_acc(float* d) {
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
#endif
#else
namespace lc_emu {
/* The shared-window address of p (an address in the launch's dynamic shared memory). */
static inline uint32_t smem_addr(const void* p, const char* what) {
    Runner& R = runner();
    const char* c = (const char*)p;
    if (!R.active || !R.dyn || c < R.dyn || c >= R.dyn + R.dyn_used) {
        fprintf(stderr, "lc_emu: %s: %p is not in the kernel's dynamic shared memory\n", what, p);
        abort();
    }
    return (uint32_t)(c - R.dyn);
}
static inline unsigned char* smem_at(uint32_t addr, size_t bytes, const char* what) {
    Runner& R = runner();
    if ((size_t)addr + bytes > R.dyn_used) {
        fprintf(stderr, "lc_emu: %s: shared address 0x%x (+%zu bytes) is past the %zu bytes of dynamic shared "
                        "memory\n", what, addr, bytes, R.dyn_used);
        abort();
    }
    return (unsigned char*)R.dyn + addr;
}

/* ---- mbarrier ---- */
static inline Mbarrier* mbar_find(Runner& R, uint32_t addr, const char* what) {
    for (int i = 0; i < R.n_mbars; ++i)
        if (R.mbars[i].addr == addr) return &R.mbars[i];
    fprintf(stderr, "lc_emu: %s on shared address 0x%x, which holds no initialized mbarrier\n", what, addr);
    abort();
}
static inline void mbar_check(Mbarrier& m) {
    if (m.pending == 0 && m.tx == 0) {   /* the phase completes; the next one starts */
        ++m.phase;
        m.pending = m.expected;
    }
}
static inline void mbar_arrive(Mbarrier& m) {
    if (m.pending <= 0) {
        fprintf(stderr, "lc_emu: mbarrier at 0x%x: more arrivals than its count %d in one phase\n", m.addr,
                m.expected);
        abort();
    }
    --m.pending;
    mbar_check(m);
}
static void tma_land(const TmaCopy& c, long long* bytes);
/* The TMA copies recorded on m land now: their bytes complete_tx. */
static inline void mbar_land(Mbarrier& m) {
    for (int i = 0; i < m.n_copies; ++i) {
        long long bytes = 0;
        tma_land(m.copies[i], &bytes);
        m.tx -= bytes;
    }
    m.n_copies = 0;
    mbar_check(m);
}
static bool mbar_waiter_ready(Runner& R, Fiber& f) {
    Mbarrier* m = mbar_find(R, f.mbar_addr, "mbarrier.try_wait");
    mbar_land(*m);
    return (m->phase & 1u) != f.mbar_parity;
}
static void async_block_start(Runner& R) {
    R.n_mbars = 0;
    if (R.wgs)
        for (int i = 0; i < 8; ++i) R.wgs[i].n_ops = 0, R.wgs[i].committed = 0, R.wgs[i].fenced = false;
}
static void async_block_end(Runner& R, const char* kname) {
    if (!R.wgs) return;
    for (int i = 0; i < 8; ++i)
        if (R.wgs[i].n_ops) {
            fprintf(stderr, "lc_emu: kernel '%s', block (%u,%u,%u): warpgroup %d exits with %d wgmma.mma_async not "
                            "waited for (wgmma.wait_group)\n", kname, blockIdx.x, blockIdx.y, blockIdx.z, i,
                    R.wgs[i].n_ops);
            abort();
        }
}

/* ---- TMA: the CUtensorMap stand-in ---- */
static const uint64_t TMAP_MAGIC = 0x70616d5f616d745full;   /* "_tma_map" */
struct TensorMap2d {
    uint64_t magic;
    const unsigned char* base;
    uint64_t dim[2], stride1;   /* elements; bytes between rows */
    uint32_t box[2];
    int esize, swizzle;         /* bytes; swizzle span in bytes (0: none) */
};

/* Swizzle of a shared-window address as TMA writes it (CU_TENSOR_MAP_SWIZZLE_*: 16-byte chunks
   permuted within each span by the address bits above the 128-byte row). */
static inline uint32_t tma_swizzle(uint32_t a, int span) {
    if (span == 128) return a ^ (((a >> 7) & 7u) << 4);
    if (span == 64) return a ^ (((a >> 7) & 3u) << 4);
    if (span == 32) return a ^ (((a >> 7) & 1u) << 4);
    return a;
}
static void tma_land(const TmaCopy& c, long long* bytes) {
    TensorMap2d t;
    memcpy(&t, c.map, sizeof t);
    const uint32_t rowb = t.box[0] * (uint32_t)t.esize;
    for (uint32_t i1 = 0; i1 < t.box[1]; ++i1)
        for (uint32_t i0 = 0; i0 < t.box[0]; ++i0) {
            const long long x = (long long)c.c0 + i0, y = (long long)c.c1 + i1;
            const uint32_t a = tma_swizzle(c.dst + i1 * rowb + i0 * (uint32_t)t.esize, t.swizzle);
            unsigned char* d = smem_at(a, (size_t)t.esize, "TMA copy");
            if (x >= 0 && y >= 0 && (uint64_t)x < t.dim[0] && (uint64_t)y < t.dim[1])
                memcpy(d, t.base + (uint64_t)y * t.stride1 + (uint64_t)x * (uint64_t)t.esize, (size_t)t.esize);
            else
                memset(d, 0, (size_t)t.esize);   /* out of bounds: zero fill */
        }
    *bytes = (long long)rowb * t.box[1];
}

/* ---- wgmma ---- */
struct WgArg { uint64_t da, db; float* d; int n, prec, ta, tb; };
static inline WarpgroupState& warpgroup(Runner& R) {
    if (!R.wgs) {
        R.wgs = (WarpgroupState*)calloc(8, sizeof(WarpgroupState));
        if (!R.wgs) abort();
    }
    return R.wgs[R.cur / 128];
}
/* A warpgroup collective: every thread of the warpgroup (threads 128i .. 128i+127) waits at it
   until all have arrived; the last calls fn(data of each thread) once. */
static inline void group_collective(void* data, WarpFn fn, const char* what, const char* file, int line) {
    Runner& R = runner();
    if (!R.active) {
        fprintf(stderr, "lc_emu: %s called outside of a kernel (%s:%d)\n", what, file, line);
        abort();
    }
    const int t = R.cur, g0 = t - t % 128;
    const int nt = (int)(blockDim.x * blockDim.y * blockDim.z);
    if (g0 + 128 > nt) {
        fprintf(stderr, "lc_emu: %s: thread %d is not in a whole warpgroup (block of %d threads) (%s:%d)\n", what,
                t, nt, file, line);
        abort();
    }
    Fiber& f = R.fibers[t];
    f.state = FiberState::AtGroup;
    f.warp_fn = fn;
    f.warp_data = data;
    f.warp_what = what;
    f.bar_file = file;
    f.bar_line = line;
    void* lanes[128];
    for (int l = 0; l < 128; ++l) {
        const Fiber& g = R.fibers[g0 + l];
        if (g.state != FiberState::AtGroup) {   /* not everyone is here yet: wait */
            swapcontext(&f.ctx, &R.sched);
            return;
        }
        if (g.warp_fn != fn) {
            fprintf(stderr, "lc_emu: DIVERGENT WARPGROUP COLLECTIVE: thread %d calls %s (%s:%d) while thread %d "
                            "waits at %s (%s:%d)\n", t, what, file, line, g0 + l, g.warp_what, g.bar_file, g.bar_line);
            abort();
        }
        lanes[l] = g.warp_data;
    }
    fn(lanes, 0);
    for (int l = 0; l < 128; ++l) R.fibers[g0 + l].state = FiberState::Ready;
}
static void wg_fence(void* const*, unsigned) { warpgroup(runner()).fenced = true; }
static void wg_record(void* const* d, unsigned) {
    Runner& R = runner();
    WarpgroupState& s = warpgroup(R);
    const WgArg& a0 = *(const WgArg*)d[0];
    if (!s.fenced) {   /* PTX ISA, wgmma.fence: required before the warpgroup's first mma_async */
        fprintf(stderr, "lc_emu: wgmma.mma_async before any wgmma.fence of its warpgroup\n");
        abort();
    }
    if (s.n_ops == LC_EMU_MAX_WGMMA) {
        fprintf(stderr, "lc_emu: more than %d wgmma.mma_async in flight in one warpgroup\n", LC_EMU_MAX_WGMMA);
        abort();
    }
    WgmmaOp& op = s.ops[s.n_ops++];
    op.da = a0.da, op.db = a0.db, op.n = a0.n, op.prec = a0.prec, op.ta = a0.ta, op.tb = a0.tb, op.group = -1;
    for (int l = 0; l < 128; ++l) {
        const WgArg& a = *(const WgArg*)d[l];
        if (a.da != a0.da || a.db != a0.db || a.n != a0.n || a.prec != a0.prec || a.ta != a0.ta || a.tb != a0.tb) {
            fprintf(stderr, "lc_emu: wgmma.mma_async: thread %d of the warpgroup passes other descriptors or shape "
                            "than thread 0\n", l);
            abort();
        }
        op.d[l] = a.d;
    }
}
static void wg_commit(void* const*, unsigned) {
    WarpgroupState& s = warpgroup(runner());
    for (int i = 0; i < s.n_ops; ++i)
        if (s.ops[i].group < 0) s.ops[i].group = s.committed;
    ++s.committed;
}

/* Matrix descriptor (PTX ISA 9.7.15.5.1.2.2): fields decoded from the 64-bit value. */
struct MatDesc { uint32_t start, lbo, sbo; int base_offset, swizzle_bytes; };
static inline MatDesc decode_desc(uint64_t d) {
    MatDesc m;
    m.start = (uint32_t)(d & 0x3FFFu) << 4;            /* bits 13-0 */
    m.lbo = (uint32_t)((d >> 16) & 0x3FFFu) << 4;      /* bits 29-16 */
    m.sbo = (uint32_t)((d >> 32) & 0x3FFFu) << 4;      /* bits 45-32 */
    m.base_offset = (int)((d >> 49) & 7u);             /* bits 51-49 */
    const int mode = (int)((d >> 62) & 3u);            /* bits 63-62: 0 none, 1 128B, 2 64B, 3 32B */
    m.swizzle_bytes = mode == 1 ? 128 : mode == 2 ? 64 : mode == 3 ? 32 : 0;
    if (m.base_offset != 0) {
        fprintf(stderr, "lc_emu: wgmma matrix descriptor with base offset %d: not modelled\n", m.base_offset);
        abort();
    }
    return m;
}
/* Byte address of element (i along M or N, j along K) of an operand (canonical layouts of PTX ISA
   9.7.15.5.1.2.1.3, see above), before the swizzle. */
static inline uint32_t desc_offset(const MatDesc& m, int i, int j, int esize, bool mn_major) {
    const int T = 16 / esize;   /* elements per 16 bytes */
    const uint32_t W = (uint32_t)m.swizzle_bytes;
    if (!mn_major) {
        if (!W) return (uint32_t)(i % 8) * 16 + (uint32_t)(i / 8) * m.sbo + (uint32_t)(j % T) * esize +
                       (uint32_t)(j / T) * m.lbo;
        return (uint32_t)(i % 8) * W + (uint32_t)(i / 8) * m.sbo + (uint32_t)j * esize;
    }
    if (!W) return (uint32_t)(i % T) * esize + (uint32_t)(i / T) * m.sbo + (uint32_t)(j % 8) * 16 +
                   (uint32_t)(j / 8) * m.lbo;
    const int per = (int)W / esize;   /* elements of one swizzle row along MN */
    return (uint32_t)(i % per) * esize + (uint32_t)(i / per) * m.lbo + (uint32_t)(j % 8) * W + (uint32_t)(j / 8) * m.sbo;
}
/* Swizzle<B,4,3> on a byte address: bits [4, 4+B) ^= bits [7, 7+B); B = 3, 2, 1 for 128, 64, 32 bytes. */
static inline uint32_t desc_swizzle(uint32_t a, int bytes) {
    const int B = bytes == 128 ? 3 : bytes == 64 ? 2 : bytes == 32 ? 1 : 0;
    const uint32_t mask = (1u << B) - 1u;
    return a ^ (((a >> 7) & mask) << 4);
}
static inline double wg_operand(uint64_t desc, int i, int j, int prec, bool mn_major) {
    const MatDesc m = decode_desc(desc);
    const int esize = prec == 2 ? 2 : 4;
    const uint32_t a = desc_swizzle(m.start + desc_offset(m, i, j, esize, mn_major), m.swizzle_bytes);
    const unsigned char* p = smem_at(a, (size_t)esize, "wgmma operand");
    uint32_t bits = 0;
    if (esize == 2) {
        uint16_t h;
        memcpy(&h, p, 2);
        bits = (uint32_t)h << 16;
    } else {
        memcpy(&bits, p, 4);
        bits &= 0xffffe000u;   /* tf32: the low 13 bits are ignored */
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
static void wg_perform(const WgmmaOp& op) {
    const int K = op.prec == 2 ? 16 : 8, N = op.n;
    static thread_local double A[64][16], B[16][256];
    for (int m = 0; m < 64; ++m)
        for (int k = 0; k < K; ++k) A[m][k] = wg_operand(op.da, m, k, op.prec, op.ta != 0);
    for (int n = 0; n < N; ++n)
        for (int k = 0; k < K; ++k) B[k][n] = wg_operand(op.db, n, k, op.prec, op.tb != 0);
    for (int t = 0; t < 128; ++t) {
        const int w = t / 32, l = t % 32, g = l / 4, q = l % 4;
        for (int i = 0; i < N / 2; ++i) {
            const int row = 16 * w + g + 8 * ((i / 2) % 2), col = 8 * (i / 4) + 2 * q + i % 2;
            double s = op.d[t][i];
            for (int k = 0; k < K; ++k) s += A[row][k] * B[k][col];
            op.d[t][i] = (float)s;
        }
    }
}
template <int N>
static void wg_wait(void* const*, unsigned) {
    WarpgroupState& s = warpgroup(runner());
    int kept = 0;
    for (int i = 0; i < s.n_ops; ++i) {
        if (s.ops[i].group >= 0 && s.ops[i].group < s.committed - N) wg_perform(s.ops[i]);
        else s.ops[kept++] = s.ops[i];
    }
    s.n_ops = kept;
}
template <int N, int PREC, bool TA, bool TB>
static inline void wgmma(float* d, uint64_t da, uint64_t db, const char* file, int line) {
    static_assert(N % 8 == 0 && N >= 8 && N <= 256, "wgmma: N is a multiple of 8 in 8..256");
    static_assert(PREC == 2 || (!TA && !TB), "wgmma tf32: A and B are K-major (no transpose)");
    WgArg a{da, db, d, N, PREC, TA, TB};
    group_collective(&a, wg_record, PREC == 2 ? "wgmma.mma_async bf16" : "wgmma.mma_async tf32", file, line);
}
static inline Mbarrier& mbar_new(uint32_t addr, unsigned count) {
    Runner& R = runner();
    if (!R.mbars) {
        R.mbars = (Mbarrier*)calloc(LC_EMU_MAX_MBARRIERS, sizeof(Mbarrier));
        if (!R.mbars) abort();
    }
    Mbarrier* m = nullptr;
    for (int i = 0; i < R.n_mbars; ++i)
        if (R.mbars[i].addr == addr) m = &R.mbars[i];
    if (!m) {
        if (R.n_mbars == LC_EMU_MAX_MBARRIERS) {
            fprintf(stderr, "lc_emu: more than %d mbarrier objects in one block\n", LC_EMU_MAX_MBARRIERS);
            abort();
        }
        m = &R.mbars[R.n_mbars++];
    }
    if (addr % 8 || count < 1 || count > (1u << 20) - 1) {
        fprintf(stderr, "lc_emu: mbarrier.init: address 0x%x not 8-byte aligned or count %u outside 1..2^20-1\n",
                addr, count);
        abort();
    }
    *m = Mbarrier{addr, (int)count, (int)count, 0, 0, 0, {}};
    return *m;
}
}  // namespace lc_emu

#define __grid_constant__
#ifndef CUDART_VERSION
#define CUDART_VERSION 13000
#endif
/* The driver API's tensor-map types (cuda.h), as far as lincompile uses them. */
typedef struct CUtensorMap_st { alignas(64) unsigned long long opaque[16]; } CUtensorMap;
typedef uint32_t cuuint32_t;
typedef uint64_t cuuint64_t;
typedef enum { CUDA_SUCCESS = 0, CUDA_ERROR_INVALID_VALUE = 1 } CUresult;
typedef enum { CU_TENSOR_MAP_DATA_TYPE_UINT16 = 1, CU_TENSOR_MAP_DATA_TYPE_FLOAT32 = 7,
               CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 = 9 } CUtensorMapDataType;
typedef enum { CU_TENSOR_MAP_INTERLEAVE_NONE = 0 } CUtensorMapInterleave;
typedef enum { CU_TENSOR_MAP_SWIZZLE_NONE = 0, CU_TENSOR_MAP_SWIZZLE_32B, CU_TENSOR_MAP_SWIZZLE_64B,
               CU_TENSOR_MAP_SWIZZLE_128B } CUtensorMapSwizzle;
typedef enum { CU_TENSOR_MAP_L2_PROMOTION_NONE = 0, CU_TENSOR_MAP_L2_PROMOTION_L2_64B,
               CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B } CUtensorMapL2promotion;
typedef enum { CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE = 0 } CUtensorMapFloatOOBfill;
/* cuTensorMapEncodeTiled with the driver's argument checks (those lincompile can hit); the
   result is this emulator's stand-in, read by lc_tma_load_2d. */
static inline CUresult lc_emu_encode_tiled(CUtensorMap* map, CUtensorMapDataType type, cuuint32_t rank, void* addr,
                                           const cuuint64_t* dim, const cuuint64_t* strides, const cuuint32_t* box,
                                           const cuuint32_t* elem_strides, CUtensorMapInterleave interleave,
                                           CUtensorMapSwizzle swizzle, CUtensorMapL2promotion,
                                           CUtensorMapFloatOOBfill oob) {
    const int esize = type == CU_TENSOR_MAP_DATA_TYPE_FLOAT32 ? 4 : type == CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 ||
                      type == CU_TENSOR_MAP_DATA_TYPE_UINT16 ? 2 : 0;
    const int span = swizzle == CU_TENSOR_MAP_SWIZZLE_128B ? 128 : swizzle == CU_TENSOR_MAP_SWIZZLE_64B ? 64
                     : swizzle == CU_TENSOR_MAP_SWIZZLE_32B ? 32 : 0;
    if (!map || ((uintptr_t)map & 63u) || !addr || ((uintptr_t)addr & 15u) || !dim || !strides || !box)
        return CUDA_ERROR_INVALID_VALUE;
    if (rank != 2 || esize == 0 || interleave != CU_TENSOR_MAP_INTERLEAVE_NONE || oob != CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE ||
        (elem_strides && (elem_strides[0] != 1 || elem_strides[1] != 1)) ||
        (span && box[0] * (cuuint32_t)esize != (cuuint32_t)span)) {
        fprintf(stderr, "lc_emu: cuTensorMapEncodeTiled: this configuration is not modelled (rank 2, fp32/bf16, "
                        "element strides 1, no interleave, zero fill, swizzled boxes one swizzle span wide)\n");
        abort();
    }
    for (int i = 0; i < 2; ++i)
        if (dim[i] == 0 || dim[i] > (1ull << 32) || box[i] == 0 || box[i] > 256) return CUDA_ERROR_INVALID_VALUE;
    if (strides[0] % 16 || strides[0] >= (1ull << 40) || (box[0] * (cuuint32_t)esize) % 16) return CUDA_ERROR_INVALID_VALUE;
    lc_emu::TensorMap2d t{lc_emu::TMAP_MAGIC, (const unsigned char*)addr, {dim[0], dim[1]}, strides[0],
                          {box[0], box[1]}, esize, span};
    memset(map, 0, sizeof *map);
    memcpy(map, &t, sizeof t);
    return CUDA_SUCCESS;
}
enum cudaDriverEntryPointQueryResult { cudaDriverEntryPointSuccess = 0, cudaDriverEntryPointSymbolNotFound = 1,
                                       cudaDriverEntryPointVersionNotSufficent = 2 };
#define cudaEnableDefault 0x0
static inline cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** fn, unsigned int,
                                                           unsigned long long,
                                                           cudaDriverEntryPointQueryResult* status = nullptr) {
    const bool ok = strcmp(symbol, "cuTensorMapEncodeTiled") == 0;
    *fn = ok ? (void*)&lc_emu_encode_tiled : nullptr;
    if (status) *status = ok ? cudaDriverEntryPointSuccess : cudaDriverEntryPointSymbolNotFound;
    return cudaSuccess;
}
static inline cudaError_t cudaGetDriverEntryPoint(const char* symbol, void** fn, unsigned long long flags,
                                                  cudaDriverEntryPointQueryResult* status = nullptr) {
    return cudaGetDriverEntryPointByVersion(symbol, fn, 12000, flags, status);
}

static inline uint32_t lc_smem_u32(const void* p) { return lc_emu::smem_addr(p, "shared-memory address"); }
static inline void lc_mbar_init(uint64_t* bar, unsigned count) {
    lc_emu::mbar_new(lc_emu::smem_addr(bar, "mbarrier.init"), count);
}
static inline void lc_mbar_arrive(uint64_t* bar) {
    lc_emu::Runner& R = lc_emu::runner();
    lc_emu::mbar_arrive(*lc_emu::mbar_find(R, lc_emu::smem_addr(bar, "mbarrier.arrive"), "mbarrier.arrive"));
}
static inline void lc_mbar_arrive_expect_tx(uint64_t* bar, unsigned bytes) {
    lc_emu::Runner& R = lc_emu::runner();
    lc_emu::Mbarrier& m = *lc_emu::mbar_find(R, lc_emu::smem_addr(bar, "mbarrier.arrive.expect_tx"),
                                             "mbarrier.arrive.expect_tx");
    if (bytes > (1u << 20) - 1) {
        fprintf(stderr, "lc_emu: mbarrier.arrive.expect_tx of %u bytes: the tx-count range is 0..2^20-1\n", bytes);
        abort();
    }
    m.tx += bytes;
    lc_emu::mbar_arrive(m);
}
static inline bool lc_mbar_try_wait(uint64_t* bar, unsigned parity, LC_EMU_SITE) {
    lc_emu::Runner& R = lc_emu::runner();
    const uint32_t a = lc_emu::smem_addr(bar, "mbarrier.try_wait");
    lc_emu::Mbarrier& m = *lc_emu::mbar_find(R, a, "mbarrier.try_wait");
    lc_emu::mbar_land(m);
    if ((m.phase & 1u) != (parity & 1u)) return true;
    lc_emu::Fiber& f = R.fibers[R.cur];   /* blocks until the scheduler sees the phase complete */
    f.state = lc_emu::FiberState::AtMbar;
    f.mbar_addr = a;
    f.mbar_parity = parity & 1u;
    f.bar_file = lc_file_;
    f.bar_line = lc_line_;
    swapcontext(&f.ctx, &R.sched);
    return true;
}
static inline void lc_fence_mbar_init() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void lc_tma_load_2d(void* dst, const CUtensorMap* map, int c0, int c1, uint64_t* bar) {
    lc_emu::Runner& R = lc_emu::runner();
    lc_emu::TensorMap2d t;
    memcpy(&t, map, sizeof t);
    const uint32_t d = lc_emu::smem_addr(dst, "cp.async.bulk.tensor");
    if (t.magic != lc_emu::TMAP_MAGIC || d % (t.swizzle ? 1024u : 128u)) {
        fprintf(stderr, "lc_emu: cp.async.bulk.tensor: not a tensor map from cuTensorMapEncodeTiled, or shared "
                        "destination 0x%x not %d-byte aligned\n", d, t.swizzle ? 1024 : 128);
        abort();
    }
    lc_emu::smem_at(d, (size_t)t.box[0] * t.box[1] * t.esize, "cp.async.bulk.tensor");
    lc_emu::Mbarrier& m = *lc_emu::mbar_find(R, lc_emu::smem_addr(bar, "cp.async.bulk.tensor"), "cp.async.bulk.tensor");
    if (m.n_copies == LC_EMU_MAX_TMA) {
        fprintf(stderr, "lc_emu: more than %d TMA copies in flight on one mbarrier\n", LC_EMU_MAX_TMA);
        abort();
    }
    lc_emu::TmaCopy& c = m.copies[m.n_copies++];
    c.dst = d;
    memcpy(c.map, map, sizeof c.map);
    c.c0 = c0;
    c.c1 = c1;
}
static inline void lc_wgmma_fence(LC_EMU_SITE) {
    int dummy = 0;
    lc_emu::group_collective(&dummy, lc_emu::wg_fence, "wgmma.fence", lc_file_, lc_line_);
}
static inline void lc_wgmma_commit(LC_EMU_SITE) {
    int dummy = 0;
    lc_emu::group_collective(&dummy, lc_emu::wg_commit, "wgmma.commit_group", lc_file_, lc_line_);
}
template <int N>
static inline void lc_wgmma_wait(LC_EMU_SITE) {
    int dummy = 0;
    lc_emu::group_collective(&dummy, lc_emu::wg_wait<N>, "wgmma.wait_group", lc_file_, lc_line_);
}
template <int R>
static inline void lc_wgmma_fence_acc(float*) {}
template <int N, bool TA, bool TB>
static inline void lc_wgmma_bf16(float* d, uint64_t da, uint64_t db, LC_EMU_SITE) {
    lc_emu::wgmma<N, 2, TA, TB>(d, da, db, lc_file_, lc_line_);
}
template <int N>
static inline void lc_wgmma_tf32(float* d, uint64_t da, uint64_t db, LC_EMU_SITE) {
    lc_emu::wgmma<N, 1, false, false>(d, da, db, lc_file_, lc_line_);
}
#endif /* sm_90 building blocks */
#endif /* LC_CUDA_CPU_H */
