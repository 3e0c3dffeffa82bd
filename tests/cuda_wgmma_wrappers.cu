/* Test entry points of tests/test_cuda_wgmma.py for the sm_90 building blocks of
   templates/cuda/cuda_cpu.h (built with g++ -include cuda_cpu.h): TMA copies, mbarrier phases
   and wgmma from shared-memory images that the test lays out itself. */
#include <stdint.h>

/* One warpgroup: the shared-memory image, then one wgmma (bf16 or tf32, N columns) with the
   given descriptors, accumulating into d = c; out[t][i] = thread t's d[i]. */
template <int N, int PREC, bool TA, bool TB>
__global__ void wgmma_kernel(const unsigned char* image, long long bytes, uint64_t da, uint64_t db, const float* c,
                             float* out) {
    LC_DYNAMIC_SHARED(unsigned char, smem);
    const int t = threadIdx.x;
    for (long long i = t; i < bytes; i += 128) smem[i] = image[i];
    __syncthreads();
    float d[N / 2];
    for (int i = 0; i < N / 2; ++i) d[i] = c[t * (N / 2) + i];
    lc_wgmma_fence();
    if constexpr (PREC == 2) lc_wgmma_bf16<N, TA, TB>(d, da, db);
    else lc_wgmma_tf32<N>(d, da, db);
    lc_wgmma_commit();
    for (int i = 0; i < N / 2; ++i) out[128 * (N / 2) + t * (N / 2) + i] = d[i];   /* before the wait: old values */
    lc_wgmma_wait<0>();
    for (int i = 0; i < N / 2; ++i) out[t * (N / 2) + i] = d[i];
}

/* One TMA copy of the box at (c0, c1) of the rows x cols matrix g (row stride ld elements of
   esize bytes) with the given swizzle (0, 32, 64, 128 bytes) into shared memory at offset dst,
   waited for on an mbarrier by 32 threads; out: the whole shared memory afterwards (0xab
   before); flags[0]: the phase before the first counts as complete, flags[1]: the first is. */
__global__ void tma_kernel(const CUtensorMap map, int c0, int c1, int dst, long long bytes, unsigned char* out,
                           int* flags) {
    LC_DYNAMIC_SHARED(unsigned char, smem);
    uint64_t* bar = reinterpret_cast<uint64_t*>(smem + bytes - 8);
    const int t = threadIdx.x;
    for (long long i = t; i < bytes - 8; i += 32) smem[i] = 0xab;
    if (t == 0) {
        lc_mbar_init(bar, 1);
        lc_fence_mbar_init();
    }
    __syncthreads();
    if (t == 0) {
        flags[0] = lc_mbar_try_wait(bar, 1) ? 1 : 0;   /* the phase before the first: complete */
        lc_mbar_arrive_expect_tx(bar, (unsigned)flags[3]);
        lc_tma_load_2d(smem + dst, &map, c0, c1, bar);
    }
    while (!lc_mbar_try_wait(bar, 0)) {
    }
    __syncthreads();
    if (t == 0) flags[1] = lc_mbar_try_wait(bar, 0) ? 1 : 0;   /* still complete */
    for (long long i = t; i < bytes - 8; i += 32) out[i] = smem[i];
}

/* An mbarrier nobody completes: the emulator reports a deadlock. */
__global__ void stuck_kernel() {
    LC_DYNAMIC_SHARED(uint64_t, bar);
    if (threadIdx.x == 0) lc_mbar_init(bar, 64);
    __syncthreads();
    lc_mbar_arrive(bar);
    while (!lc_mbar_try_wait(bar, 0)) {   /* 32 arrivals of 64: never completes */
    }
}

/* wgmma.mma_async without a wgmma.fence first: the emulator aborts. */
__global__ void unfenced_kernel() {
    LC_DYNAMIC_SHARED(unsigned char, smem);
    float d[4] = {0, 0, 0, 0};
    const uint64_t desc = (uint64_t)(lc_smem_u32(smem) >> 4) | 1ull << 16 | 8ull << 32;   /* no swizzle */
    lc_wgmma_bf16<8, false, false>(d, desc, desc);
    lc_wgmma_commit();
    lc_wgmma_wait<0>();
}

extern "C" {
int t_wgmma(int prec, int n, int ta, int tb, const void* image, long long bytes, uint64_t da, uint64_t db,
            const float* c, float* out) {
    void (*k)(const unsigned char*, long long, uint64_t, uint64_t, const float*, float*) = nullptr;
    if (prec == 2 && n == 64) {
        if (ta && tb) k = wgmma_kernel<64, 2, true, true>;
        else if (ta) k = wgmma_kernel<64, 2, true, false>;
        else if (tb) k = wgmma_kernel<64, 2, false, true>;
        else k = wgmma_kernel<64, 2, false, false>;
    } else if (prec == 2 && n == 128 && !ta && tb) {
        k = wgmma_kernel<128, 2, false, true>;
    } else if (prec == 2 && n == 16 && !ta && !tb) {
        k = wgmma_kernel<16, 2, false, false>;
    } else if (prec == 1 && n == 64 && !ta && !tb) {
        k = wgmma_kernel<64, 1, false, false>;
    } else if (prec == 1 && n == 24 && !ta && !tb) {
        k = wgmma_kernel<24, 1, false, false>;
    }
    if (!k) return -1;
    LC_LAUNCH(k, 1, 128, bytes, 0)((const unsigned char*)image, bytes, da, db, c, out);
    return (int)cudaGetLastError();
}
int t_tma(const void* g, long long rows, long long cols, long long ld, int esize, int swizzle, int box0, int box1,
          int c0, int c1, int dst, long long bytes, unsigned char* out, int* flags) {
    CUtensorMap map;
    const cuuint64_t dim[2] = {(cuuint64_t)cols, (cuuint64_t)rows}, stride[1] = {(cuuint64_t)(ld * esize)};
    const cuuint32_t box[2] = {(cuuint32_t)box0, (cuuint32_t)box1}, es[2] = {1, 1};
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult q;
    cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q);
    const CUresult r = ((CUresult(*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                     const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                     CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill))fn)(
        &map, esize == 4 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(g),
        dim, stride, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE,
        swizzle == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : swizzle == 64 ? CU_TENSOR_MAP_SWIZZLE_64B
        : swizzle == 32 ? CU_TENSOR_MAP_SWIZZLE_32B : CU_TENSOR_MAP_SWIZZLE_NONE,
        CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) return 1000 + (int)r;
    auto k = tma_kernel;
    LC_LAUNCH(k, 1, 32, bytes, 0)(map, c0, c1, dst, bytes, out, flags);
    return (int)cudaGetLastError();
}
int t_stuck() {
    LC_LAUNCH(stuck_kernel, 1, 32, 64, 0)();
    return 0;
}
int t_unfenced() {
    LC_LAUNCH(unfenced_kernel, 1, 128, 4096, 0)();
    return 0;
}
}
