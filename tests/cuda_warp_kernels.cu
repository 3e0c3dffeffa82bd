/* Test kernels of tests/test_cuda_mma.py: the emulator's warp-level primitives
   (built with g++ -include cuda_cpu.h). */
#include <type_traits>
#include <stdint.h>

/* ---------------------------------------------------------------- shuffles and votes */
__global__ void k_shfl(const int* v, int* out, int arg, int width) {
    const int t = threadIdx.x;
    const int mode = blockIdx.x;
    int r = 0;
    if (mode == 0) r = __shfl_sync(0xffffffffu, v[t], arg, width);
    if (mode == 1) r = __shfl_up_sync(0xffffffffu, v[t], (unsigned)arg, width);
    if (mode == 2) r = __shfl_down_sync(0xffffffffu, v[t], (unsigned)arg, width);
    if (mode == 3) r = __shfl_xor_sync(0xffffffffu, v[t], arg, width);
    if (mode == 4) r = (int)__ballot_sync(0xffffffffu, v[t] & 1);
    if (mode == 5) r = __any_sync(0xffffffffu, v[t] & 1) + 2 * __all_sync(0xffffffffu, v[t] & 1);
    out[mode * blockDim.x + t] = r;
}

/* A double-precision warp sum by __shfl_xor_sync, then a second one by __shfl_down_sync
   after a __syncwarp, in two halves of the warp with disjoint masks. */
__global__ void k_reduce(const double* v, double* out) {
    const int t = threadIdx.x, lane = t % 32;
    double s = v[t];
    for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    __syncwarp();
    double h = v[t];
    const unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    for (int o = 8; o; o >>= 1) h += __shfl_down_sync(half, h, o, 16);
    out[2 * t] = s;
    out[2 * t + 1] = h;
}

/* -------------------------------------------------------------------- conversions */
extern "C" void t_tf32(const float* x, uint32_t* y, int n) { for (int i = 0; i < n; ++i) y[i] = lc_cvt_tf32(x[i]); }
extern "C" void t_bf16(const float* x, uint32_t* y, int n) { for (int i = 0; i < n; ++i) y[i] = lc_bf16x2(x[i], -x[i]); }

/* ------------------------------------------------------------------------ ldmatrix */
/* NUM 8x8 b16 matrices, matrix i row r at sm[(8i + r) * 24 + 8]; lane l points at row l % 8
   of matrix l / 8 (lanes past 8 * NUM at row 0 of matrix 0: their address is unused). */
template <int NUM, bool TRANS>
__global__ void k_ldmatrix(const uint16_t* m, uint32_t* out) {
    __shared__ __align__(16) uint16_t sm[32 * 24];
    const int l = threadIdx.x;
    for (int i = l; i < NUM * 64; i += 32) sm[(i / 8) * 24 + 8 + i % 8] = m[i];
    __syncthreads();
    const int row = l < 8 * NUM ? l : 0;
    uint32_t r[4] = {0, 0, 0, 0};
    const void* p = &sm[row * 24 + 8];
    if (NUM == 1) { if (TRANS) lc_ldmatrix_x1_trans(r, p); else lc_ldmatrix_x1(r, p); }
    if (NUM == 2) { if (TRANS) lc_ldmatrix_x2_trans(r, p); else lc_ldmatrix_x2(r, p); }
    if (NUM == 4) { if (TRANS) lc_ldmatrix_x4_trans(r, p); else lc_ldmatrix_x4(r, p); }
    for (int i = 0; i < NUM; ++i) out[l * NUM + i] = r[i];
}
extern "C" int t_ldmatrix(int num, int trans, const uint16_t* m, uint32_t* out) {
    void (*k)(const uint16_t*, uint32_t*) = trans ? (num == 1 ? k_ldmatrix<1, true> : num == 2 ? k_ldmatrix<2, true> : k_ldmatrix<4, true>)
                                                  : (num == 1 ? k_ldmatrix<1, false> : num == 2 ? k_ldmatrix<2, false> : k_ldmatrix<4, false>);
    LC_LAUNCH(k, 1, 32, 0, 0)(m, out);
    return (int)cudaGetLastError();
}

/* ---------------------------------------------------------------------------- mma */
/* One warp: D[16][8] = A[16][K] . B[K][8] + C, A and B given as float (rounded to the
   operand type here). src 0: fragments from the PTX formulas, reading global memory;
   src 1: ldmatrix from shared memory with A stored [m][k] (or [k][m] when a_kmajor, .trans
   for bf16, scalar loads for tf32) and B stored [n][k] (or [k][n] when b_kmajor). */
template <bool BF16>
__global__ void k_mma(int K, int src, int a_kmajor, int b_kmajor, const float* A, const float* B,
                      const float* C, float* D) {
    constexpr int KS = BF16 ? 16 : 8;                 /* k per mma */
    constexpr int PAD = BF16 ? 8 : 4;                 /* elements: 16 bytes */
    typedef typename std::conditional<BF16, __nv_bfloat16, float>::type T;
    __shared__ __align__(16) T sa[64 * (64 + 8)];     /* [16][K+PAD] or [K][16+PAD] */
    __shared__ __align__(16) T sb[64 * (64 + 8)];     /* [8][K+PAD] or [K][8+PAD] */
    const int l = threadIdx.x, g = l >> 2, t = l & 3;
    const int lda = a_kmajor ? 16 + PAD : K + PAD, ldb = b_kmajor ? 8 + PAD : K + PAD;
    auto cvt = [](float x) -> T { if constexpr (BF16) return __float2bfloat16_rn(x); else return x; };
    for (int i = l; i < 16 * K; i += 32) {
        const int m = i / K, k = i % K;
        sa[a_kmajor ? k * lda + m : m * lda + k] = cvt(A[i]);
    }
    for (int i = l; i < K * 8; i += 32) {
        const int k = i / 8, n = i % 8;
        sb[b_kmajor ? k * ldb + n : n * ldb + k] = cvt(B[i]);
    }
    __syncthreads();
    auto As = [&](int m, int k) { return sa[a_kmajor ? k * lda + m : m * lda + k]; };
    auto Bs = [&](int k, int n) { return sb[b_kmajor ? k * ldb + n : n * ldb + k]; };
    float acc[4];
    for (int i = 0; i < 4; ++i) acc[i] = C[(g + (i >> 1) * 8) * 8 + 2 * t + (i & 1)];
    for (int k0 = 0; k0 < K; k0 += KS) {
        uint32_t a[4], b[2];
        if constexpr (BF16) {
            auto pair = [](__nv_bfloat16 lo, __nv_bfloat16 hi) { return (uint32_t)lo.__x | (uint32_t)hi.__x << 16; };
            if (src == 0) {
                for (int r = 0; r < 4; ++r) {
                    const int m = g + (r & 1) * 8, k = k0 + 2 * t + (r >> 1) * 8;
                    a[r] = pair(As(m, k), As(m, k + 1));
                }
                for (int r = 0; r < 2; ++r) b[r] = pair(Bs(k0 + 2 * t + 8 * r, g), Bs(k0 + 2 * t + 8 * r + 1, g));
            } else {
                const int i = l >> 3, j = l & 7;
                if (a_kmajor) lc_ldmatrix_x4_trans(a, &sa[(k0 + (i >> 1) * 8 + j) * lda + (i & 1) * 8]);
                else lc_ldmatrix_x4(a, &sa[((i & 1) * 8 + j) * lda + k0 + (i >> 1) * 8]);
                if (b_kmajor) lc_ldmatrix_x2_trans(b, &sb[(k0 + (i & 1) * 8 + j) * ldb]);
                else lc_ldmatrix_x2(b, &sb[j * ldb + k0 + (i & 1) * 8]);
            }
            lc_mma_bf16_m16n8k16(acc, a, b, acc);
        } else {
            if (src == 0 || a_kmajor) {
                for (int r = 0; r < 4; ++r) a[r] = lc_cvt_tf32(As(g + (r & 1) * 8, k0 + t + (r >> 1) * 4));
            } else {
                const int i = l >> 3, j = l & 7;
                lc_ldmatrix_x4(a, &sa[((i & 1) * 8 + j) * lda + k0 + (i >> 1) * 4]);
                for (int r = 0; r < 4; ++r) a[r] = lc_cvt_tf32(__uint_as_float(a[r]));
            }
            if (src == 0 || b_kmajor) {
                for (int r = 0; r < 2; ++r) b[r] = lc_cvt_tf32(Bs(k0 + t + 4 * r, g));
            } else {
                const int i = (l >> 3) & 1, j = l & 7;
                lc_ldmatrix_x2(b, &sb[j * ldb + k0 + i * 4]);
                for (int r = 0; r < 2; ++r) b[r] = lc_cvt_tf32(__uint_as_float(b[r]));
            }
            lc_mma_tf32_m16n8k8(acc, a, b, acc);
        }
    }
    for (int i = 0; i < 4; ++i) D[(g + (i >> 1) * 8) * 8 + 2 * t + (i & 1)] = acc[i];
}
extern "C" int t_mma(int bf16, int K, int src, int a_kmajor, int b_kmajor, const float* A, const float* B,
                     const float* C, float* D) {
    void (*k)(int, int, int, int, const float*, const float*, const float*, float*) = bf16 ? k_mma<true> : k_mma<false>;
    LC_LAUNCH(k, 1, 32, 0, 0)(K, src, a_kmajor, b_kmajor, A, B, C, D);
    return (int)cudaGetLastError();
}

/* ------------------------------------------------------------------------ cp.async */
/* Each thread records the shared words it copies itself, right after issuing (phase 0),
   after wait_group 1 (phase 1: group 0 landed) and after wait_group 0 (phase 2). */
__global__ void k_cp_async(const float* g, float* out) {
    __shared__ __align__(16) float s[64];
    const int t = threadIdx.x;
    s[t] = -1.f;
    s[32 + t] = -1.f;
    __syncthreads();
    int lo0 = 0, n0 = 0, lo1 = 0, n1 = 0;
    if (t < 8) { lo0 = 4 * t; n0 = 4; lc_cp_async_cg16(&s[lo0], &g[lo0], t == 7 ? 8 : 16); }   /* s[30..31] = 0 */
    lc_cp_async_commit();
    if (t < 4) { lo1 = 32 + 4 * t; n1 = 4; lc_cp_async_ca<16>(&s[lo1], &g[lo1]); }
    else if (t < 8) { lo1 = 48 + 2 * (t - 4); n1 = 2; lc_cp_async_ca<8>(&s[lo1], &g[lo1]); }
    else if (t < 16) { lo1 = 56 + t - 8; n1 = 1; lc_cp_async_ca<4>(&s[lo1], &g[lo1], t < 12 ? 4 : 0); }
    lc_cp_async_commit();
    for (int phase = 0; phase < 3; ++phase) {
        if (phase == 1) lc_cp_async_wait<1>();
        if (phase == 2) lc_cp_async_wait<0>();
        for (int i = 0; i < n0; ++i) out[64 * phase + lo0 + i] = s[lo0 + i];
        for (int i = 0; i < n1; ++i) out[64 * phase + lo1 + i] = s[lo1 + i];
    }
}
extern "C" int t_cp_async(const float* g, float* out) {
    LC_LAUNCH(k_cp_async, 1, 32, 0, 0)(g, out);
    return (int)cudaGetLastError();
}
extern "C" int t_shfl(const int* v, int* out, int n, int arg, int width) {
    LC_LAUNCH(k_shfl, 6, n, 0, 0)(v, out, arg, width);
    return (int)cudaGetLastError();
}
extern "C" int t_reduce(const double* v, double* out, int n) {
    LC_LAUNCH(k_reduce, 1, n, 0, 0)(v, out);
    return (int)cudaGetLastError();
}
