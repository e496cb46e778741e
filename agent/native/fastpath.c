/* The CPU's hand-written fast paths, called through ctypes (agent/native/__init__.py).
 *
 * No Python API and no numpy headers: setup.py builds this file as an optional extension
 * (only a C compiler needed); where it is not built, the numpy paths run. Each function
 * names its reference, which the tests hold it to exactly. Built with -ffp-contract=off, so
 * that every floating-point operation rounds as the reference's (no fused multiply-add).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* ---- greedy NMS (reference: agent/postprocess/nms_reference.py) ---------------------- */

/* Box a suppresses box b: OpenCV's rule, 1.f - (float)(1 - IoU in double) > (float)thr. */
static int suppresses(const double *a, double area_a, const double *b, double area_b, float thr)
{
    double iw = MIN(a[2], b[2]) - MAX(a[0], b[0]);
    double ih = MIN(a[3], b[3]) - MAX(a[1], b[1]);
    if (!(iw > 0) || !(ih > 0))
        return 0;
    double inter = iw * ih;
    float dist = (float)(1.0 - inter / (area_a + area_b - inter));
    return 1.0f - dist > thr;
}

#define SPAN_MAX 16 /* a box over more grid cells than this is compared with every kept box */

typedef struct {
    double x0, y0, cell;
    int64_t cells_x, cells_y; /* the grid's extent in cells (coordinates beyond it are clamped) */
    uint64_t mask;            /* buckets - 1 (a power of two) */
    int32_t *head;            /* first node of each bucket's list of kept boxes, -1 if none */
    int32_t *next, *item;     /* the nodes */
    int32_t nodes, capacity;
} grid_t;

static int64_t cell_of(double v, double v0, double cell, int64_t cells)
{
    double f = (v - v0) / cell;
    if (!(f > 0))
        return 0;
    return f >= (double)(cells - 1) ? cells - 1 : (int64_t)f;
}

/* The bucket of grid cell (x, y) for boxes of class c: a hash, so that the table's size follows
 * the number of boxes, not the extent of the grid or the number of classes (boxes of different
 * classes or cells that share a bucket only cost a comparison each). */
static uint64_t bucket(const grid_t *g, int64_t x, int64_t y, int64_t c)
{
    uint64_t h = (uint64_t)x * 0x9E3779B97F4A7C15ull ^ (uint64_t)y * 0xC2B2AE3D27D4EB4Full ^
                 (uint64_t)c * 0x165667B19E3779F9ull;
    return (h ^ (h >> 29)) & g->mask;
}

/* Greedy NMS over the boxes (n x 4 x1 y1 x2 y2) visited in ``order`` (best first): the kept
 * indices go to ``keep``, at most ``limit``; returns how many, or -1 when out of memory.
 * ``cls``: each box's class (boxes of different classes never suppress each other), or NULL.
 * A box with no area (or a NaN side) is kept and never suppresses, as in the reference.
 *
 * Kept boxes are filed by grid cell and class, so a box is compared only with the kept boxes
 * of its class in the cells it covers: exact, because two boxes that overlap share a cell (a
 * box's cells are the range between the cells of its corners, and cell_of is monotonic).
 * The cell is the boxes' mean longer side, so a box usually covers 1 to 4 cells; one covering
 * more than SPAN_MAX (or not finite) is compared with every kept box and, when kept, filed in
 * a list every box is compared with. Dense clusters then cost a few comparisons per box
 * (OpenCV's loop: the kept boxes until one suppresses it), and sparse sets no longer grow as
 * n x kept. */
int64_t ea_nms(const double *boxes, const int64_t *order, const int64_t *cls, int64_t n,
               float thr, int64_t limit, int64_t *keep)
{
    size_t room = (size_t)(n > 0 ? n : 1);
    double *area = malloc(sizeof(double) * room);
    int64_t *kept_valid = malloc(sizeof(int64_t) * room); /* kept boxes with an area */
    int64_t *wide = malloc(sizeof(int64_t) * room);       /* ... and of those, the ones filed in no cell */
    grid_t g = {0.0, 0.0, 1.0, 1, 1, 0, NULL, NULL, NULL, 0, 0};
    int64_t kept = 0, nvalid_kept = 0, nwide = 0;
    if (!area || !kept_valid || !wide)
        goto fail;
    double lo_x = INFINITY, lo_y = INFINITY, hi_x = -INFINITY, hi_y = -INFINITY, sum_side = 0.0;
    int64_t counted = 0;
    for (int64_t i = 0; i < n; i++) {
        const double *b = boxes + 4 * i;
        double w = b[2] - b[0], h = b[3] - b[1];
        area[i] = (w > 0 && h > 0) ? w * h : 0.0;
        if (area[i] > 0 && isfinite(area[i])) {
            lo_x = MIN(lo_x, b[0]); lo_y = MIN(lo_y, b[1]);
            hi_x = MAX(hi_x, b[2]); hi_y = MAX(hi_y, b[3]);
            sum_side += MAX(w, h);
            counted++;
        }
    }
    if (counted) {
        g.cell = sum_side / (double)counted;
        g.x0 = lo_x;
        g.y0 = lo_y;
        g.cells_x = (int64_t)MIN(ceil((hi_x - lo_x) / g.cell) + 1, 1e9);
        g.cells_y = (int64_t)MIN(ceil((hi_y - lo_y) / g.cell) + 1, 1e9);
    }
    uint64_t buckets = 16;
    while (buckets < 2 * (uint64_t)counted)
        buckets *= 2;
    g.mask = buckets - 1;
    g.head = malloc(sizeof(int32_t) * buckets);
    g.capacity = (int32_t)MIN((int64_t)4 * n + 16, (int64_t)INT32_MAX / 2);
    g.next = malloc(sizeof(int32_t) * (size_t)g.capacity);
    g.item = malloc(sizeof(int32_t) * (size_t)g.capacity);
    if (!g.head || !g.next || !g.item)
        goto fail;
    for (uint64_t c = 0; c < buckets; c++)
        g.head[c] = -1;

    for (int64_t r = 0; r < n && kept < limit; r++) {
        int64_t i = order[r], c = cls ? cls[i] : 0;
        const double *b = boxes + 4 * i;
        if (!(area[i] > 0)) {
            keep[kept++] = i;
            continue;
        }
        int64_t x0 = cell_of(b[0], g.x0, g.cell, g.cells_x), x1 = cell_of(b[2], g.x0, g.cell, g.cells_x);
        int64_t y0 = cell_of(b[1], g.y0, g.cell, g.cells_y), y1 = cell_of(b[3], g.y0, g.cell, g.cells_y);
        int filed = isfinite(area[i]) && (x1 - x0 + 1) * (y1 - y0 + 1) <= SPAN_MAX;
        int suppressed = 0;
        if (!filed) { /* compared with every kept box */
            for (int64_t k = 0; k < nvalid_kept && !suppressed; k++) {
                int64_t j = kept_valid[k];
                suppressed = (!cls || cls[j] == c) && suppresses(boxes + 4 * j, area[j], b, area[i], thr);
            }
        } else {
            for (int64_t k = 0; k < nwide && !suppressed; k++) {
                int64_t j = wide[k];
                suppressed = (!cls || cls[j] == c) && suppresses(boxes + 4 * j, area[j], b, area[i], thr);
            }
            for (int64_t y = y0; y <= y1 && !suppressed; y++)
                for (int64_t x = x0; x <= x1 && !suppressed; x++)
                    for (int32_t node = g.head[bucket(&g, x, y, c)]; node >= 0 && !suppressed; node = g.next[node]) {
                        int64_t j = g.item[node];
                        suppressed = (!cls || cls[j] == c) && suppresses(boxes + 4 * j, area[j], b, area[i], thr);
                    }
        }
        if (suppressed)
            continue;
        keep[kept++] = i;
        kept_valid[nvalid_kept++] = i;
        if (!filed) {
            wide[nwide++] = i;
            continue;
        }
        int32_t cells = (int32_t)((x1 - x0 + 1) * (y1 - y0 + 1));
        if (g.nodes + cells > g.capacity) {
            int32_t capacity = g.capacity * 2 + cells;
            int32_t *next = realloc(g.next, sizeof(int32_t) * (size_t)capacity);
            if (next)
                g.next = next;
            int32_t *item = next ? realloc(g.item, sizeof(int32_t) * (size_t)capacity) : NULL;
            if (!item)
                goto fail;
            g.item = item;
            g.capacity = capacity;
        }
        for (int64_t y = y0; y <= y1; y++)
            for (int64_t x = x0; x <= x1; x++) {
                uint64_t h = bucket(&g, x, y, c);
                g.item[g.nodes] = (int32_t)i;
                g.next[g.nodes] = g.head[h];
                g.head[h] = g.nodes++;
            }
    }
    free(area); free(kept_valid); free(wide); free(g.head); free(g.next); free(g.item);
    return kept;
fail:
    free(area); free(kept_valid); free(wide); free(g.head); free(g.next); free(g.item);
    return -1;
}

/* ---- decode (reference: agent/postprocess/decode.py, decode_v8_reference) -------------- */

/* Per anchor (column) of the nc x n float32 class scores (rows ``step`` floats apart), its
 * best score and the first class that has it, as numpy's max and argmax along the rows give
 * them: a NaN in a column makes its best NaN. Rows outer, anchors inner: every pass runs
 * along a contiguous row, which numpy's argmax across rows cannot (it transposes a copy). */
void ea_best_class(const float *restrict scores, int64_t nc, int64_t n, int64_t step, float *restrict best,
                   int32_t *restrict cls)
{
    for (int64_t a = 0; a < n; a++) {
        best[a] = scores[a];
        cls[a] = 0;
    }
    for (int64_t c = 1; c < nc; c++) {
        const float *row = scores + c * step;
        int32_t cc = (int32_t)c;
        for (int64_t a = 0; a < n; a++) { /* every load first, then selects: the compiler vectorizes it */
            float v = row[a], b = best[a];
            int32_t k = cls[a];
            best[a] = (v > b || v != v) ? v : b;
            cls[a] = v > b ? cc : k;
        }
    }
}

/* ---- the tracker's per-frame arithmetic (agent/track) ----------------------------------
 * Each function does, operation for operation, what its numpy reference does, so that the
 * two give the same bits: numpy's minimum and maximum (NaN propagates; on a tie the first
 * operand), the same order of additions, no contraction. */

static double np_min(double a, double b) { return (a <= b || isnan(a)) ? a : b; }
static double np_max(double a, double b) { return (a >= b || isnan(a)) ? a : b; }

/* IoU of every box of a (n x 4 xyxy) with every box of b into out (n x m); b comes
 * coordinates first (bt: 4 x m, x1 row, y1 row, x2 row, y2 row), so that the loop over it
 * vectorizes. With ``buffer`` (n, or NULL), both boxes of pair (i, j) first grow by
 * buffer[i] x their width and height on each side (C-BIoU). Reference: agent/track/iou.py,
 * iou_matrix and buffered_iou (where a row's buffer is 0 the IoU is the plain one). */
void ea_iou(const double *restrict a, int64_t n, const double *restrict bt, int64_t m, const double *restrict buffer,
            double *restrict out)
{
    const double *bx0 = bt, *by0 = bt + m, *bx1 = bt + 2 * m, *by1 = bt + 3 * m;
    for (int64_t i = 0; i < n; i++) {
        const double *p = a + 4 * i;
        double g = buffer ? buffer[i] : 0.0, *row = out + i * m;
        if (g == 0) {
            double area_a = (p[2] - p[0]) * (p[3] - p[1]);
            for (int64_t j = 0; j < m; j++) {
                double w = np_max(np_min(p[2], bx1[j]) - np_max(p[0], bx0[j]), 0.0);
                double h = np_max(np_min(p[3], by1[j]) - np_max(p[1], by0[j]), 0.0);
                double inter = w * h;
                double uni = area_a + (bx1[j] - bx0[j]) * (by1[j] - by0[j]);
                uni -= inter;
                row[j] = inter / np_max(uni, 1e-9);
            }
            continue;
        }
        double gx = (p[2] - p[0]) * g, gy = (p[3] - p[1]) * g;
        double ax0 = p[0] - gx, ay0 = p[1] - gy, ax1 = p[2] + gx, ay1 = p[3] + gy;
        double area_a = (ax1 - ax0) * (ay1 - ay0);
        for (int64_t j = 0; j < m; j++) {
            double hx = (bx1[j] - bx0[j]) * g, hy = (by1[j] - by0[j]) * g;
            double qx0 = bx0[j] - hx, qy0 = by0[j] - hy, qx1 = bx1[j] + hx, qy1 = by1[j] + hy;
            double w = np_max(np_min(ax1, qx1) - np_max(ax0, qx0), 0.0);
            double h = np_max(np_min(ay1, qy1) - np_max(ay0, qy0), 0.0);
            double inter = w * h;
            double uni = area_a + (qx1 - qx0) * (qy1 - qy0);
            uni -= inter;
            row[j] = inter / np_max(uni, 1e-9);
        }
    }
}

static int64_t pixel_index(double v, int64_t last)
{
    /* numpy: astype(intp) (toward zero), then clipped to [0, last] */
    if (!(v > 0))
        return 0;
    return v >= (double)last ? last : (int64_t)v;
}

/* The median colour of a grid of pixels mid-box, per box: out (m x 3, float64) from image
 * (h x w x channels uint8; its steps in bytes between rows, pixels and channels) and boxes (m x 4 xyxy); ``offsets``: the grid's positions
 * (``grid`` of them, fractions of the box from its centre). An image of other than 3 channels
 * (grey) gives its first channel's median thrice. Reference: agent/track/appearance.py, describe. */
void ea_colours(const uint8_t *image, int64_t h, int64_t w, int64_t channels, int64_t row_step, int64_t pixel_step,
                int64_t channel_step, const double *boxes, int64_t m, const double *offsets, int64_t grid, double *out)
{
    uint8_t values[3][64];
    int64_t count = grid * grid, mid = count / 2;
    if (count > 64 || channels < 1)
        return;
    for (int64_t k = 0; k < m; k++) {
        const double *b = boxes + 4 * k;
        double cx = (b[0] + b[2]) * 0.5, cy = (b[1] + b[3]) * 0.5, bw = b[2] - b[0], bh = b[3] - b[1];
        int64_t used = channels == 3 ? 3 : 1, at = 0; /* the reference: not 3 channels, the first one thrice */
        for (int64_t gy = 0; gy < grid; gy++) {
            int64_t y = pixel_index(cy + bh * offsets[gy], h - 1);
            for (int64_t gx = 0; gx < grid; gx++, at++) {
                int64_t x = pixel_index(cx + bw * offsets[gx], w - 1);
                const uint8_t *px = image + y * row_step + x * pixel_step;
                for (int64_t c = 0; c < used; c++)
                    values[c][at] = px[c * channel_step];
            }
        }
        for (int64_t c = 0; c < used; c++) { /* insertion sort of a few values: the median */
            uint8_t *v = values[c];
            for (int64_t i = 1; i < count; i++) {
                uint8_t x = v[i];
                int64_t j = i;
                for (; j > 0 && v[j - 1] > x; j--)
                    v[j] = v[j - 1];
                v[j] = x;
            }
            out[3 * k + c] = (double)v[mid];
        }
        for (int64_t c = used; c < 3; c++)
            out[3 * k + c] = out[3 * k];
    }
}

/* One frame ahead, in place, for n tracks: means (8 per track, rows ``mstep`` doubles apart)
 * and covariances (p, c, v: 3 x 4 per track, rows ``cstep`` apart); ``noise``: the process
 * noise weights (2 x 8: std = height x row 0 + row 1). Reference: agent/track/kalman.py, predict. */
void ea_kalman_predict(double *means, int64_t mstep, double *covs, int64_t cstep, int64_t n, const double *noise)
{
    for (int64_t i = 0; i < n; i++) {
        double *x = means + i * mstep, *p = covs + i * cstep, *c = p + 4, *v = p + 8;
        double h = x[3];
        for (int k = 0; k < 4; k++) {
            double qp = h * noise[k] + noise[8 + k], qv = h * noise[4 + k] + noise[12 + k];
            qp *= qp;
            qv *= qv;
            x[k] += x[4 + k];
            p[k] += c[k];
            c[k] += v[k];
            p[k] += c[k];
            p[k] += qp;
            v[k] += qv;
        }
    }
}

/* Correct n tracks (laid out as for ea_kalman_predict) with their measurements z (n x 4 xyah);
 * ``noise``: the measurement noise weights (2 x 4). Reference: agent/track/kalman.py, update. */
void ea_kalman_update(double *means, int64_t mstep, double *covs, int64_t cstep, int64_t n, const double *z,
                      const double *noise)
{
    for (int64_t i = 0; i < n; i++) {
        double *x = means + i * mstep, *p = covs + i * cstep, *c = p + 4, *v = p + 8;
        double h = x[3];
        for (int k = 0; k < 4; k++) {
            double s = h * noise[k] + noise[4 + k];
            s *= s;
            s += p[k];
            double gp = p[k] / s, gc = c[k] / s, innovation = z[4 * i + k] - x[k];
            x[k] += gp * innovation;
            x[4 + k] += gc * innovation;
            v[k] -= gc * c[k];
            p[k] -= gp * p[k];
            c[k] -= gp * c[k];
        }
    }
}

/* Colour distance of a and b (3 each), times ``scale``: sqrt(((a0 - b0)^2 + (a1 - b1)^2) +
 * (a2 - b2)^2) x scale, in that order. Reference: agent/track/appearance.py, distance. */
static double colour_distance(const double *a, const double *b, double scale)
{
    double d0 = a[0] - b[0], d1 = a[1] - b[1], d2 = a[2] - b[2];
    double s = d0 * d0 + d1 * d1;
    s += d2 * d2;
    return sqrt(s) * scale;
}

/* The tracker's fused score of each track (n) and detection (m) pair from their IoU (n x m):
 * IoU - weight x colour distance (0 for a track without a colour, ``coloured`` 0, or a
 * detection not ``clean``), -1 beyond ``gate``; then at least 1e-6, and 0 below -0.5.
 * Reference: agent/track/tracker.py, Tracker._similarity. */
void ea_similarity(const double *iou, int64_t n, int64_t m, const double *track_colours, const double *coloured,
                   const double *colours, const uint8_t *clean, double scale, double weight, double gate, double *out)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < m; j++) {
            double dist = colour_distance(track_colours + 3 * i, colours + 3 * j, scale);
            dist *= coloured[i];
            dist *= clean[j] ? 1.0 : 0.0;
            double sim = iou[i * m + j] - weight * dist;
            if (dist > gate)
                sim = -1.0;
            double score = np_max(sim, 1e-6);
            out[i * m + j] = sim < -0.5 ? 0.0 : score;
        }
}

/* The cost of re-finding lost tracks by colour: for each track rows[r] (of pred, n x 4 xyxy,
 * and of the colours at ``track_colours``, rows ``colour_step`` doubles apart) and detection
 * cols[c] (of boxes, m x 4, and colours, m x 3), its colour distance where it is at most
 * ``gate`` and the detection's centre is within ``reach`` x the track's longer side of the
 * predicted centre, else 2; into cost (len(rows) x len(cols)).
 * Reference: agent/track/tracker.py, Tracker._refind. Returns 1 when no row and no column
 * has two such pairs (the optimum is then every one of them), 0 otherwise, -1 when out of
 * memory. */
int64_t ea_refind_cost(const double *pred, const int64_t *rows, int64_t nr, const double *boxes,
                       const int64_t *cols, int64_t nc, const double *track_colours, int64_t colour_step,
                       const double *colours, double scale, double gate, double reach, double *cost)
{
    uint8_t *taken = calloc((size_t)(nc > 0 ? nc : 1), 1);
    int64_t single = 1;
    if (!taken)
        return -1;
    for (int64_t r = 0; r < nr; r++) {
        int64_t in_row = 0;
        const double *p = pred + 4 * rows[r], *tc = track_colours + colour_step * rows[r];
        double side = np_max(p[2] - p[0], p[3] - p[1]), limit = reach * side;
        for (int64_t c = 0; c < nc; c++) {
            const double *b = boxes + 4 * cols[c];
            double dist = colour_distance(tc, colours + 3 * cols[c], scale);
            double dx = (p[0] + p[2]) - (b[0] + b[2]), dy = (p[1] + p[3]) - (b[1] + b[3]);
            int ok = dist <= gate && dx * dx + dy * dy <= limit * limit;
            cost[r * nc + c] = ok ? dist : 2.0;
            if (ok) {
                single &= !in_row && !taken[c];
                in_row = 1;
                taken[c] = 1;
            }
        }
    }
    free(taken);
    return single;
}

/* Boxes (n x 4 xyxy) to centre x, centre y, aspect (w / h), height (n x 4, the height at least
 * 1e-3). Reference: agent/track/kalman.py, xyxy_to_xyah. */
void ea_xyxy_to_xyah(const double *boxes, int64_t n, double *out)
{
    for (int64_t i = 0; i < n; i++) {
        const double *b = boxes + 4 * i;
        double *o = out + 4 * i;
        double w = b[2] - b[0], h = np_max(b[3] - b[1], 1e-3);
        o[0] = b[0] + w / 2;
        o[1] = b[1] + h / 2;
        o[2] = w / h;
        o[3] = h;
    }
}

/* The inverse (rows of xyah ``step`` doubles apart) into out (n x 4). Reference:
 * agent/track/kalman.py, xyah_to_xyxy. */
void ea_xyah_to_xyxy(const double *xyah, int64_t n, int64_t step, double *out)
{
    for (int64_t i = 0; i < n; i++) {
        const double *s = xyah + step * i;
        double *o = out + 4 * i;
        double w = s[2] * s[3], h = s[3];
        o[0] = s[0] - w / 2;
        o[1] = s[1] - h / 2;
        o[2] = o[0] + w;
        o[3] = o[1] + h;
    }
}

/* Per detection, from the IoU of every pair of detections (dd, m x m) and their scores: whether a
 * more confident one overlaps it by more than ``duplicate_iou`` (duplicate), and whether it
 * overlaps at most one box, itself, by more than ``isolated_iou`` (clean). Reference:
 * agent/track/tracker.py, _flags. */
void ea_detection_flags(const double *dd, int64_t m, const double *scores, double duplicate_iou, double isolated_iou,
                        uint8_t *duplicate, uint8_t *clean)
{
    for (int64_t i = 0; i < m; i++) {
        const double *row = dd + i * m;
        int dup = 0;
        int64_t over = 0;
        for (int64_t j = 0; j < m; j++) {
            dup |= row[j] > duplicate_iou && scores[j] > scores[i];
            over += row[j] > isolated_iou;
        }
        duplicate[i] = (uint8_t)dup;
        clean[i] = over <= 1;
    }
}

/* Tracks matched to detections di (n of them; their state rows at ``rows``, ``step`` doubles
 * apart: colour at ``colour``, has-a-colour flag at ``colour + 3``) learn the colours of the
 * clean detections scored at least ``high``: a moving average with ``momentum``, or the colour
 * itself for a track without one. Reference: agent/track/tracker.py, Tracker._learn. */
void ea_learn_colours(double *rows, int64_t n, int64_t step, int64_t colour, const int64_t *di, const double *colours,
                      const double *scores, const uint8_t *clean, double high, double momentum)
{
    for (int64_t k = 0; k < n; k++) {
        int64_t d = di[k];
        if (!(clean[d] && scores[d] >= high))
            continue;
        double *row = rows + k * step + colour;
        double keep = row[3] == 0 ? 0.0 : momentum;
        for (int c = 0; c < 3; c++)
            row[c] = keep * row[c] + (1.0 - keep) * colours[3 * d + c];
        row[3] = 1.0;
    }
}

/* The cost matrix of one association pass, negated for a minimum-cost solver: for tracks rows
 * (nr) and detections cols (nc) of the n x m matrices iou and sim (NULL: IoU alone), -sim (or
 * -IoU) of each pair, -0 where the IoU is below ``min_iou`` (refused). Reference:
 * agent/track/tracker.py, Tracker._match. Returns 1 when no row and no column has more than
 * one candidate (a cost below 0): the optimal assignment is then those pairs, every one of
 * them, with no solver; 0 otherwise, and -1 when out of memory. */
int64_t ea_pass_cost(const double *iou, const double *sim, int64_t m, const int64_t *rows, int64_t nr,
                     const int64_t *cols, int64_t nc, double min_iou, double *out)
{
    const double *score = sim ? sim : iou;
    uint8_t *taken = calloc((size_t)(nc > 0 ? nc : 1), 1);
    int64_t single = 1;
    if (!taken)
        return -1;
    for (int64_t r = 0; r < nr; r++) {
        const double *a = iou + rows[r] * m, *s = score + rows[r] * m;
        int64_t in_row = 0;
        for (int64_t c = 0; c < nc; c++) {
            double cost = -(a[cols[c]] < min_iou ? 0.0 : s[cols[c]]);
            out[r * nc + c] = cost;
            if (cost < 0) {
                single &= !in_row && !taken[c];
                in_row = 1;
                taken[c] = 1;
            }
        }
    }
    free(taken);
    return single;
}
