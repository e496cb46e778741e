// nms.cu: greedy non-maximum suppression on the GPU, torchvision nms_kernel.cu style.
//
// Contract (same as agent.postprocess.nms.nms and cv2.dnn.NMSBoxes):
//   * boxes are x1, y1, x2, y2 floats; area = (x2 - x1) * (y2 - y1);
//   * visit boxes by descending score; equal scores keep the lower original
//     index first (a stable sort);
//   * box j is suppressed by an earlier kept box i iff IoU(i, j) > iou_threshold
//     (strict: a pair exactly at the threshold survives);
//   * two zero-area boxes have IoU 0 (cv2 computes 0/0 = NaN and suppresses).
//   * class-aware: boxes of different classes never suppress each other. The
//     sort kernel carries each box's class next to it and the mask kernel
//     compares classes. (torchvision's batched_nms instead shifts boxes by
//     class_id * (max_coord + 1): in float32 that shift rounds coordinates
//     (ulp 0.004 px at 51k) and breaks for negative coordinates, which YOLO
//     boxes at the image border have; the class test is exact and cheaper.)
//   * IoU is computed in float32 with explicitly rounded ops (identical on the GPU
//     and in the host build); the numpy reference computes it in float64, so a
//     pair within ~1 ulp of the threshold may be decided differently.
//
// Launch sequence (agent/kernels/gpu.py and the host entry point below):
//   1. ea_nms_sort       grid ceil(n/64), block 64     stable rank sort of all n boxes
//   2. ea_nms_mask       grid (cb, cb),   block 64     over the first m = min(n, top_k)
//                                                      sorted boxes, cb = ceil(m/64)
//   3. ea_nms_keep       grid 1,          block 256    keep list (+ kept detections)
// top_k is applied after the sort for free: greedy NMS decides a box from
// higher-ranked boxes only, so NMS over the m best boxes is exact.
// The keep sweep runs on the device so only `count` and the kept detections
// cross to the host: on Xavier NX the mask for 10k boxes is 12.5 MB, the keep
// list a few hundred bytes. The sweep is serial in the boxes but only 64 at a
// time, from shared memory; the work per kept box is spread over the block.

#define EA_NMS_TPB 64             // boxes per tile == threads per mask block
#define EA_NMS_SORT_TPB 64
#define EA_NMS_KEEP_TPB 256       // threads of the single keep block
#define EA_NMS_MAX_COL_BLOCKS 256  // => at most 16384 boxes per call

// Explicitly rounded single-precision ops: nvcc would otherwise fuse w * h and the
// sums into FMAs (--fmad=true is its default), and the GPU could decide a pair near
// the threshold differently from the host build the tests check against.
__device__ __forceinline__ float ea_iou(const float* a, const float* b) {
    float left = fmaxf(a[0], b[0]);
    float right = fminf(a[2], b[2]);
    float top = fmaxf(a[1], b[1]);
    float bottom = fminf(a[3], b[3]);
    float w = fmaxf(__fsub_rn(right, left), 0.f);
    float h = fmaxf(__fsub_rn(bottom, top), 0.f);
    float inter = __fmul_rn(w, h);
    float area_a = __fmul_rn(__fsub_rn(a[2], a[0]), __fsub_rn(a[3], a[1]));
    float area_b = __fmul_rn(__fsub_rn(b[2], b[0]), __fsub_rn(b[3], b[1]));
    float uni = __fsub_rn(__fadd_rn(area_a, area_b), inter);
    return uni > 0.f ? __fdiv_rn(inter, uni) : 0.f;
}

// Stable descending sort by rank: rank(i) = #{j : s_j > s_i or (s_j == s_i and key_j < key_i)}.
// O(n^2) compares, tiled through shared memory; for n <= 16k that is cheaper
// than a sort library we cannot ship. key = tiekey[i] if use_tiekey else i.
extern "C" __global__ void ea_nms_sort(const float* boxes, const float* scores, const int* classes,
                                       int use_classes, const int* tiekey, int use_tiekey,
                                       int n, float* sorted_boxes, int* sorted_cls, int* sorted_idx) {
    __shared__ float tile_s[EA_NMS_SORT_TPB];
    __shared__ int tile_k[EA_NMS_SORT_TPB];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float si = 0.f;
    int ki = 0;
    if (i < n) {
        si = scores[i];
        ki = use_tiekey ? tiekey[i] : i;
    }
    int rank = 0;
    for (int base = 0; base < n; base += EA_NMS_SORT_TPB) {
        int j = base + threadIdx.x;
        if (j < n) {
            tile_s[threadIdx.x] = scores[j];
            tile_k[threadIdx.x] = use_tiekey ? tiekey[j] : j;
        }
        __syncthreads();
        int m = min(EA_NMS_SORT_TPB, n - base);
        if (i < n) {
            for (int t = 0; t < m; ++t) {
                float sj = tile_s[t];
                rank += (sj > si || (sj == si && tile_k[t] < ki)) ? 1 : 0;
            }
        }
        __syncthreads();
    }
    if (i < n) {
        for (int c = 0; c < 4; ++c) sorted_boxes[rank * 4 + c] = boxes[i * 4 + c];
        sorted_cls[rank] = use_classes ? classes[i] : 0;
        sorted_idx[rank] = i;
    }
}

// mask[i * cb + c] bit k set <=> sorted box i suppresses sorted box c*64+k (k > i).
extern "C" __global__ void ea_nms_mask(int n, float iou_threshold, const float* sorted_boxes,
                                       const int* sorted_cls, unsigned long long* mask) {
    const int row_start = blockIdx.y;
    const int col_start = blockIdx.x;
    if (row_start > col_start) return;  // lower triangle is never read
    const int row_size = min(n - row_start * EA_NMS_TPB, EA_NMS_TPB);
    const int col_size = min(n - col_start * EA_NMS_TPB, EA_NMS_TPB);
    const int col_blocks = (n + EA_NMS_TPB - 1) / EA_NMS_TPB;

    __shared__ float block_boxes[EA_NMS_TPB * 4];
    __shared__ int block_cls[EA_NMS_TPB];
    if ((int)threadIdx.x < col_size) {
        block_cls[threadIdx.x] = sorted_cls[EA_NMS_TPB * col_start + threadIdx.x];
        for (int c = 0; c < 4; ++c)
            block_boxes[threadIdx.x * 4 + c] = sorted_boxes[(EA_NMS_TPB * col_start + threadIdx.x) * 4 + c];
    }
    __syncthreads();

    if ((int)threadIdx.x < row_size) {
        const int cur = EA_NMS_TPB * row_start + threadIdx.x;
        const float* cur_box = sorted_boxes + cur * 4;
        const int cur_cls = sorted_cls[cur];
        unsigned long long t = 0;
        int start = (row_start == col_start) ? threadIdx.x + 1 : 0;
        for (int k = start; k < col_size; ++k) {
            if (block_cls[k] == cur_cls && ea_iou(cur_box, block_boxes + k * 4) > iou_threshold) t |= 1ULL << k;
        }
        mask[cur * col_blocks + col_start] = t;
    }
}

// One block of EA_NMS_KEEP_TPB threads (any blockDim >= EA_NMS_TPB works) sweeps
// the tiles in score order. out[0] = kept count (-1 if n is too large); keep[0..count)
// = original indices of the kept boxes, best first; the sweep stops at max_out kept
// boxes. With `gather`, det[k] = (x1, y1, x2, y2, score, class) of keep[k], read from
// the unsorted inputs, so the host copies back only the kept detections.
//
// The sweep is serial over the tiles, so each tile's critical path touches shared
// memory only: (1) the block loads the tile's 64 diagonal mask words and sorted
// indices into shared memory; (2) thread 0 resolves the tile from them (no global
// load inside the loop); (3) the block writes the kept boxes' outputs in parallel
// (position = kept before this tile + kept below it in the tile) and ORs the kept
// rows into the removal bitmap of every later tile, one (row, column) word per
// thread, loads independent of the kept bits so several are in flight.
extern "C" __global__ void ea_nms_keep(int n, const unsigned long long* mask, const int* sorted_idx, int max_out,
                                       const float* boxes, const float* scores, const int* classes, int gather,
                                       int* keep, float* det, int* out) {
    __shared__ unsigned long long remv[EA_NMS_MAX_COL_BLOCKS];
    __shared__ unsigned long long diag[EA_NMS_TPB];
    __shared__ int sidx[EA_NMS_TPB];
    __shared__ unsigned long long kept_tile;
    __shared__ int count;
    const int col_blocks = (n + EA_NMS_TPB - 1) / EA_NMS_TPB;
    if (col_blocks > EA_NMS_MAX_COL_BLOCKS) {
        if (threadIdx.x == 0) out[0] = -1;
        return;
    }
    for (int c = threadIdx.x; c < col_blocks; c += blockDim.x) remv[c] = 0ULL;
    if (threadIdx.x == 0) count = 0;
    for (int nb = 0; nb < col_blocks; ++nb) {
        const int size = min(n - nb * EA_NMS_TPB, EA_NMS_TPB);
        const int t = threadIdx.x;
        if (t < size) {
            diag[t] = mask[(nb * EA_NMS_TPB + t) * col_blocks + nb];
            sidx[t] = sorted_idx[nb * EA_NMS_TPB + t];
        }
        __syncthreads();
        if (t == 0) {
            unsigned long long removed = remv[nb];
            unsigned long long kept = 0ULL;
            int c = count;
            for (int k = 0; k < size && c < max_out; ++k) {
                if (removed & (1ULL << k)) continue;
                kept |= 1ULL << k;
                ++c;
                removed |= diag[k];
            }
            kept_tile = kept;
        }
        __syncthreads();
        const unsigned long long kept = kept_tile;
        const int base = count;
        if (t < size && ((kept >> t) & 1ULL)) {
            const int pos = base + __popcll(kept & ((1ULL << t) - 1ULL));
            const int slot = sidx[t];
            keep[pos] = slot;
            if (gather) {
                for (int q = 0; q < 4; ++q) det[pos * 6 + q] = boxes[slot * 4 + q];
                det[pos * 6 + 4] = scores[slot];
                det[pos * 6 + 5] = (float)classes[slot];
            }
        }
        const int total = base + __popcll(kept);
        const int later = col_blocks - nb - 1;  // > 0 only for a full tile: all 64 rows exist
        if (kept != 0ULL && later > 0 && total < max_out) {
#pragma unroll 4
            for (int f = t; f < EA_NMS_TPB * later; f += blockDim.x) {
                const int k = f / later;
                const int c = nb + 1 + f % later;
                const unsigned long long w = mask[(nb * EA_NMS_TPB + k) * col_blocks + c];
                if (((kept >> k) & 1ULL) && w) atomicOr(&remv[c], w);
            }
        }
        __syncthreads();
        if (t == 0) count = total;  // read again only after the next tile's first barrier
        if (total >= max_out) break;  // uniform: every thread computed the same total
    }
    if (threadIdx.x == 0) out[0] = count;
}

#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)  // host build through the shim only
// Host entry point for tests: same launch sequence as agent/kernels/gpu.py.
// boxes: n x 4 x1y1x2y2; classes may be NULL (class-agnostic). Returns the
// kept count, or -1 when n exceeds the kernel's capacity.
extern "C" int ea_nms_host(const float* boxes, const float* scores, const int* classes, int n,
                           float iou_threshold, int* keep) {
    if (n <= 0) return 0;
    const int cb = (n + EA_NMS_TPB - 1) / EA_NMS_TPB;
    if (cb > EA_NMS_MAX_COL_BLOCKS) return -1;
    std::vector<int> sorted_cls(n), sorted_idx(n), out(1, 0);
    std::vector<int> no_classes(1, 0);
    std::vector<float> sorted_boxes((size_t)n * 4);
    std::vector<unsigned long long> mask((size_t)n * cb, 0ULL);
    const int grid = (n + EA_NMS_SORT_TPB - 1) / EA_NMS_SORT_TPB;
    EA_LAUNCH(ea_nms_sort, dim3(grid), dim3(EA_NMS_SORT_TPB), boxes, scores,
              classes ? classes : no_classes.data(), classes ? 1 : 0, (const int*)no_classes.data(), 0,
              n, sorted_boxes.data(), sorted_cls.data(), sorted_idx.data());
    EA_LAUNCH(ea_nms_mask, dim3(cb, cb), dim3(EA_NMS_TPB), n, iou_threshold,
              (const float*)sorted_boxes.data(), (const int*)sorted_cls.data(), mask.data());
    // 64 keep threads, not EA_NMS_KEEP_TPB: any block of >= 64 threads gives the same
    // result, and 4x fewer host threads keep the randomized tests fast. gpu.py's launch
    // (256 threads) runs on the CPU in the wrapper tests (tests/test_kernels_host.py).
    EA_LAUNCH(ea_nms_keep, dim3(1), dim3(EA_NMS_TPB), n, (const unsigned long long*)mask.data(),
              (const int*)sorted_idx.data(), n, boxes, scores, (const int*)no_classes.data(), 0, keep,
              (float*)nullptr, out.data());
    return out[0];
}
#endif
