/* Test entry points of tests/test_cuda_precision.py around templates/cuda/gemm_mma.cu.j2
   (rendered next to this file as gemm_mma.cu; built with g++ -include cuda_cpu.h). */
#include "gemm_mma.cu"

extern "C" {
int t_mma_gemm(int prec, int ta, int tb, long long M, long long N, long long K, float alpha,
               const float* alpha_dev, const void* A, long long lda, const void* B, long long ldb,
               float beta, float* C, long long ldc, const float* bias, int act, void* Cb,
               long long ldcb) {
    return (int)lc_mma_gemm(prec, ta != 0, tb != 0, M, N, K, alpha, alpha_dev, A, lda, B, ldb, beta,
                            C, ldc, bias, act, (__nv_bfloat16*)Cb, ldcb, (cudaStream_t)0);
}
int t_cast_bf16(long long rows, long long cols, const float* X, long long ldx, void* Y, long long ldy) {
    return (int)lc_cast_bf16(rows, cols, X, ldx, (__nv_bfloat16*)Y, ldy, (cudaStream_t)0);
}
}
