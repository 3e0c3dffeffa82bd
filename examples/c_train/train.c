/* Train the digits MLP (64-32-10) in pure C with lincompile's generated code.
 *
 * model.h (made by prepare.py) declares, in the order documented there:
 *   model_train_step(N, x, target, fc1.weight, fc1.weight.velocity, fc1.bias, ...,
 *                    lr, loss, fc1.weight.next, fc1.weight.velocity.next, ..., workspace)
 *   model_forward(N, x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, logits, workspace)
 *   model_train_step_init(...)   the initial weights, velocities at zero
 * Every X.next may be X itself, so the state is updated in place.
 */
#define _POSIX_C_SOURCE 200112L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

enum { FEATURES = 64, HIDDEN = 32, CLASSES = 10, BATCH = 32 };

static void *alloc(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 1) != 0) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

static void read_exact(FILE *f, void *dst, size_t bytes)
{
    if (fread(dst, 1, bytes, f) != bytes) {
        fprintf(stderr, "digits file is truncated\n");
        exit(1);
    }
}

static double accuracy(const float *x, const int64_t *y, long n, const float *w1,
                       const float *b1, const float *w2, const float *b2, void *ws)
{
    float *logits = alloc(sizeof(float) * (size_t)n * CLASSES);
    long right = 0;
    model_forward(n, x, w1, b1, w2, b2, logits, ws);
    for (long i = 0; i < n; i++) {
        int best = 0;
        for (int c = 1; c < CLASSES; c++)
            if (logits[i * CLASSES + c] > logits[i * CLASSES + best])
                best = c;
        right += best == y[i];
    }
    free(logits);
    return (double)right / (double)n;
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "build/digits.bin";
    int epochs = argc > 2 ? atoi(argv[2]) : 10;
    FILE *f = fopen(path, "rb");
    char magic[8];
    uint32_t head[4];
    if (!f) {
        perror(path);
        return 1;
    }
    read_exact(f, magic, 8);
    read_exact(f, head, sizeof head);
    if (memcmp(magic, "LCDIGIT1", 8) != 0 || head[2] != FEATURES || head[3] != CLASSES) {
        fprintf(stderr, "%s: not a 64-feature, 10-class digits file\n", path);
        return 1;
    }
    long n_train = head[0], n_test = head[1];
    float *x_train = alloc(sizeof(float) * n_train * FEATURES);
    int64_t *y_train = alloc(sizeof(int64_t) * n_train);
    float *x_test = alloc(sizeof(float) * n_test * FEATURES);
    int64_t *y_test = alloc(sizeof(int64_t) * n_test);
    read_exact(f, x_train, sizeof(float) * n_train * FEATURES);
    read_exact(f, y_train, sizeof(int64_t) * n_train);
    read_exact(f, x_test, sizeof(float) * n_test * FEATURES);
    read_exact(f, y_test, sizeof(int64_t) * n_test);
    fclose(f);

    /* parameters and their momentum buffers, updated in place by every step */
    float *w1 = alloc(sizeof(float) * HIDDEN * FEATURES), *v_w1 = alloc(sizeof(float) * HIDDEN * FEATURES);
    float *b1 = alloc(sizeof(float) * HIDDEN), *v_b1 = alloc(sizeof(float) * HIDDEN);
    float *w2 = alloc(sizeof(float) * CLASSES * HIDDEN), *v_w2 = alloc(sizeof(float) * CLASSES * HIDDEN);
    float *b2 = alloc(sizeof(float) * CLASSES), *v_b2 = alloc(sizeof(float) * CLASSES);
    model_train_step_init(w1, v_w1, b1, v_b1, w2, v_w2, b2, v_b2);

    long biggest = n_test > BATCH ? n_test : BATCH;
    void *ws = alloc(model_workspace_size(biggest));   /* one workspace for every call */
    float *xb = alloc(sizeof(float) * BATCH * FEATURES);
    int64_t *yb = alloc(sizeof(int64_t) * BATCH);
    long *order = alloc(sizeof(long) * n_train);
    const float lr = 0.05f;
    uint64_t rng = 12345;
    for (long i = 0; i < n_train; i++)
        order[i] = i;

    printf("before training: test accuracy %.4f\n",
           accuracy(x_test, y_test, n_test, w1, b1, w2, b2, ws));
    for (int epoch = 1; epoch <= epochs; epoch++) {
        double total = 0;
        for (long i = n_train - 1; i > 0; i--) {   /* shuffle (xorshift64) */
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
            long j = (long)(rng % (uint64_t)(i + 1)), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        for (long start = 0; start < n_train; start += BATCH) {
            long n = n_train - start < BATCH ? n_train - start : BATCH;   /* last batch: smaller N */
            float loss;
            for (long k = 0; k < n; k++) {
                memcpy(xb + k * FEATURES, x_train + order[start + k] * FEATURES,
                       sizeof(float) * FEATURES);
                yb[k] = y_train[order[start + k]];
            }
            model_train_step(n, xb, yb, w1, v_w1, b1, v_b1, w2, v_w2, b2, v_b2, &lr,
                             &loss, w1, v_w1, b1, v_b1, w2, v_w2, b2, v_b2, ws);
            total += loss * n;
        }
        printf("epoch %2d: train loss %.4f, test accuracy %.4f\n", epoch, total / n_train,
               accuracy(x_test, y_test, n_test, w1, b1, w2, b2, ws));
    }
    free(x_train); free(y_train); free(x_test); free(y_test);
    free(w1); free(v_w1); free(b1); free(v_b1); free(w2); free(v_w2); free(b2); free(v_b2);
    free(ws); free(xb); free(yb); free(order);
    return 0;
}
