/* The host's fp32 FMA peak on one thread, in GFLOP/s: many independent chains of
 * vector FMAs (enough to cover latency x ports on any current x86-64 core), timed with a
 * monotonic clock, best of several trials (the least disturbed by other load).
 *
 *   cc -O2 -march=native -o peak benchmarks/peak.c && ./peak [seconds]
 *
 * Prints one line: "<GFLOP/s> <vector width in floats>". benchmarks/bench_c.py builds
 * it with the same -march as the generated code, and also as a shared library
 * (-shared -fPIC) whose peak_run(iters) does peak_flops_per_iter() * iters flops, so
 * that the peak can be timed in the same interleaved rounds as the products. */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if defined(__AVX512F__)
#include <immintrin.h>
typedef __m512 vf;
#define VL 16
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define SET1(x) _mm512_set1_ps(x)
#define SUM(v) _mm512_reduce_add_ps(v)
#elif defined(__FMA__)
#include <immintrin.h>
typedef __m256 vf;
#define VL 8
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define SET1(x) _mm256_set1_ps(x)
static float SUM(__m256 v)
{
    float t[8], s = 0;
    _mm256_storeu_ps(t, v);
    for (int i = 0; i < 8; i++)
        s += t[i];
    return s;
}
#else
typedef float vf __attribute__((vector_size(16)));
#define VL 4
#define FMA(a, b, c) ((a) * (b) + (c))
#define SET1(x) ((vf){x, x, x, x})
#define SUM(v) ((v)[0] + (v)[1] + (v)[2] + (v)[3])
#endif

/* More independent chains than FMA latency (4-5 cycles) x FMA ports (2) on every core we
 * target, and no more than the vector registers hold (32 with AVX-512, else 16). */
#if VL == 16
#define CHAINS 24
#else
#define CHAINS 12
#endif

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* iters x CHAINS FMAs; returns a sum so the work cannot be dropped.  The chains are
 * written out (X-macro) so they live in registers at any optimization level. */
#define C12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define C24(X) C12(X) X(12) X(13) X(14) X(15) X(16) X(17) X(18) X(19) X(20) X(21) X(22) \
    X(23)
#if CHAINS == 24
#define CHAIN C24
#else
#define CHAIN C12
#endif
#define DECL(c) vf acc##c = SET1((float)c);
#define STEP(c) acc##c = FMA(acc##c, a, b); __asm__("" : "+v"(acc##c));
#define ADD(c) s += SUM(acc##c);

float peak_run(long iters, float x)
{
    vf a = SET1(x), b = SET1(1.0f - x);
    float s = 0;
    CHAIN(DECL)
    for (long i = 0; i < iters; i++) {
        CHAIN(STEP)
    }
    CHAIN(ADD)
    return s;
}

/* Floating-point operations per iteration of peak_run. */
long peak_flops_per_iter(void)
{
    return 2L * VL * CHAINS;
}

int main(int argc, char **argv)
{
    double budget = argc > 1 ? atof(argv[1]) : 0.3, best = 0, start = now();
    long iters = 1 << 16;
    float sink = 0;
    sink += peak_run(iters, 0.5f);   /* warm up (clock ramp) */
    while (now() - start < budget) {
        double t0 = now();
        sink += peak_run(iters, 0.5f);
        double dt = now() - t0, gf = 2.0 * VL * CHAINS * iters / dt / 1e9;
        if (dt < 1e-3)
            iters *= 2;
        else if (gf > best)
            best = gf;
    }
    printf("%.1f %d\n", best, VL);
    return sink == 12345.0f;   /* never true in practice; keeps sink live */
}
