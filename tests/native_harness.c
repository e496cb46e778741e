/* Runs every function of agent/native/fastpath.c on inputs drawn from a fixed generator and
 * prints one FNV-1a hash per function over its output bytes. tests/test_native.py builds it
 * for this machine and, cross-compiled, for aarch64 (the Jetson's CPU, whose compilers fuse
 * multiply-adds unless told not to) run under qemu: the hashes must be equal, bit for bit.
 *   cc -std=c99 -O3 -ffp-contract=off native_harness.c ../agent/native/fastpath.c -lm */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

int64_t ea_nms(const double *, const int64_t *, const int64_t *, int64_t, float, int64_t, int64_t *);
void ea_best_class(const float *, int64_t, int64_t, int64_t, float *, int32_t *);
void ea_iou(const double *, int64_t, const double *, int64_t, const double *, double *);
void ea_colours(const uint8_t *, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const double *, int64_t,
                const double *, int64_t, double *);
void ea_kalman_predict(double *, int64_t, double *, int64_t, int64_t, const double *);
void ea_kalman_update(double *, int64_t, double *, int64_t, int64_t, const double *, const double *);
void ea_similarity(const double *, int64_t, int64_t, const double *, const double *, const double *,
                   const uint8_t *, double, double, double, double *);
int64_t ea_refind_cost(const double *, const int64_t *, int64_t, const double *, const int64_t *, int64_t,
                    const double *, int64_t, const double *, double, double, double, double *);
void ea_xyxy_to_xyah(const double *, int64_t, double *);
void ea_xyah_to_xyxy(const double *, int64_t, int64_t, double *);
void ea_detection_flags(const double *, int64_t, const double *, double, double, uint8_t *, uint8_t *);
void ea_learn_colours(double *, int64_t, int64_t, int64_t, const int64_t *, const double *, const double *,
                      const uint8_t *, double, double);
int64_t ea_pass_cost(const double *, const double *, int64_t, const int64_t *, int64_t, const int64_t *, int64_t,
                  double, double *);

#define N 200
static uint64_t state = 88172645463325252ull;
static double uniform(double lo, double hi) /* xorshift64: the same numbers everywhere */
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return lo + (hi - lo) * (double)(state >> 11) / 9007199254740992.0;
}

static uint64_t fnv(const void *data, size_t size)
{
    const uint8_t *p = data;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < size; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static void boxes(double *b, int n, double spread)
{
    for (int i = 0; i < n; i++) {
        double x = uniform(0, spread), y = uniform(0, spread);
        b[4 * i] = x; b[4 * i + 1] = y;
        b[4 * i + 2] = x + uniform(1, 90); b[4 * i + 3] = y + uniform(1, 90);
    }
}

int main(void)
{
    static double a[4 * N], b[4 * N], out[N * N], buffer[N], table[N * 24], z[4 * N], colours[3 * N];
    static double scores[N], dd[N * N], iou[N * N], sim[N * N], coloured[N];
    static int64_t order[N], keep[N], cls[N], idx[N];
    static float fscores[8 * N], best[N];
    static int32_t best_cls[N];
    static uint8_t image[64 * 96 * 3], clean[N], dup[N];
    double process[16] = {0.1, 0.1, 0, 0.1, 0.01, 0.01, 0, 0.01, 0, 0, 0.01, 0, 0, 0, 1e-5, 0};
    double measure[8] = {0.05, 0.05, 0, 0.05, 0, 0, 0.1, 0};
    double offsets[3] = {-1.0 / 6, 0.0, 1.0 / 6};

    boxes(a, N, 300); boxes(b, N, 300);
    for (int i = 0; i < N; i++) {
        order[i] = i; cls[i] = i % 3; idx[i] = (i * 7) % N; buffer[i] = i % 4 ? 0.0 : uniform(0, 0.5);
        scores[i] = uniform(0, 1); coloured[i] = i % 5 ? 1.0 : 0.0; clean[i] = i % 3 != 0;
        for (int c = 0; c < 3; c++) colours[3 * i + c] = uniform(0, 255);
        for (int k = 0; k < 24; k++) table[24 * i + k] = uniform(0.5, 200);
        for (int k = 0; k < 4; k++) z[4 * i + k] = uniform(1, 300);
    }
    for (int i = 0; i < N * N; i++) {
        dd[i] = uniform(0, 1); iou[i] = (double)(int)uniform(0, 8) / 8; sim[i] = uniform(-1, 1);
    }
    for (int i = 0; i < 8 * N; i++) fscores[i] = (float)uniform(0, 1);
    for (size_t i = 0; i < sizeof image; i++) image[i] = (uint8_t)uniform(0, 256);

    int64_t kept = ea_nms(a, order, NULL, N, 0.45f, N, keep);
    printf("nms %016" PRIx64 "\n", fnv(keep, sizeof keep[0] * (size_t)kept) ^ (uint64_t)kept);
    kept = ea_nms(a, order, cls, N, 0.3f, N, keep);
    printf("nms_classes %016" PRIx64 "\n", fnv(keep, sizeof keep[0] * (size_t)kept) ^ (uint64_t)kept);
    ea_best_class(fscores, 8, N, N, best, best_cls);
    printf("best_class %016" PRIx64 "\n", fnv(best, sizeof best) ^ fnv(best_cls, sizeof best_cls));
    double bt[4 * N];
    for (int j = 0; j < N; j++)
        for (int k = 0; k < 4; k++) bt[k * N + j] = b[4 * j + k];
    ea_iou(a, N, bt, N, buffer, out);
    printf("iou %016" PRIx64 "\n", fnv(out, sizeof out[0] * N * N));
    ea_colours(image, 64, 96, 3, 96 * 3, 3, 1, a, N, offsets, 3, out);
    printf("colours %016" PRIx64 "\n", fnv(out, sizeof out[0] * 3 * N));
    ea_kalman_predict(table, 24, table + 8, 24, N, process);
    ea_kalman_update(table, 24, table + 8, 24, N, z, measure);
    printf("kalman %016" PRIx64 "\n", fnv(table, sizeof table));
    ea_similarity(iou, N, N, colours, coloured, colours, clean, 1.0 / 441.67, 0.5, 0.3, out);
    printf("similarity %016" PRIx64 "\n", fnv(out, sizeof out[0] * N * N));
    ea_refind_cost(a, idx, N, b, order, N, colours, 3, colours, 1.0 / 441.67, 0.4, 6.0, out);
    printf("refind %016" PRIx64 "\n", fnv(out, sizeof out[0] * N * N));
    ea_xyxy_to_xyah(a, N, out);
    ea_xyah_to_xyxy(out, N, 4, out + 4 * N);
    printf("boxes %016" PRIx64 "\n", fnv(out, sizeof out[0] * 8 * N));
    ea_detection_flags(dd, N, scores, 0.7, 0.05, dup, clean);
    printf("flags %016" PRIx64 "\n", fnv(dup, sizeof dup) ^ fnv(clean, sizeof clean));
    for (int i = 0; i < N; i++) clean[i] = i % 3 != 0;  /* the flags above made them all overlapped */
    ea_learn_colours(table, N, 24, 20, idx, colours, scores, clean, 0.5, 0.9);
    printf("learn %016" PRIx64 "\n", fnv(table, sizeof table));
    ea_pass_cost(iou, sim, N, idx, N / 2, order, N, 0.3, out);
    printf("pass_cost %016" PRIx64 "\n", fnv(out, sizeof out[0] * (N / 2) * N));
    return 0;
}
