// decode.cu: YOLOv8 head output -> candidate boxes above a confidence threshold.
//
// Input `pred` is the engine output [1, 4 + nc, N] (channel-major): rows 0..3
// are cx, cy, w, h of each anchor, rows 4.. the class scores. One thread per
// anchor (grid-stride): best class (lowest class id on ties, like np.argmax),
// keep iff score > conf_threshold (strict, like cv2.dnn.NMSBoxes), then a slot
// from an atomicAdd counter. Boxes are written as x1, y1, x2, y2 in network
// input pixels; anchors[] records the anchor index so NMS can break score ties
// by it (ea_nms_sort's tiekey) and results stay deterministic.
//
// Capacity: count[0] is the number of anchors above the threshold, which can
// exceed `capacity`; only the first `capacity` slots are written and WHICH
// candidates land there is arbitrary (atomic order). Callers detect overflow as
// count > capacity. GpuDecode defaults capacity to N, so it cannot overflow.
//
// Launch: grid min(ceil(N/256), 1024), block 256; zero count[0] first.

#define EA_DECODE_TPB 256

extern "C" __global__ void ea_decode_yolov8(const float* pred, int num_classes, int num_anchors,
                                            float conf_threshold, int capacity, float* boxes,
                                            float* scores, int* classes, int* anchors, int* count) {
    for (int a = blockIdx.x * blockDim.x + threadIdx.x; a < num_anchors; a += gridDim.x * blockDim.x) {
        const float* cls = pred + 4 * num_anchors + a;
        float best = cls[0];
        int best_c = 0;
        for (int c = 1; c < num_classes; ++c) {
            float s = __ldg(cls + c * num_anchors);
            if (s > best) {
                best = s;
                best_c = c;
            }
        }
        if (!(best > conf_threshold)) continue;
        int slot = atomicAdd(count, 1);
        if (slot >= capacity) continue;
        float cx = pred[a], cy = pred[num_anchors + a];
        float hw = pred[2 * num_anchors + a] * 0.5f, hh = pred[3 * num_anchors + a] * 0.5f;
        boxes[slot * 4 + 0] = cx - hw;
        boxes[slot * 4 + 1] = cy - hh;
        boxes[slot * 4 + 2] = cx + hw;
        boxes[slot * 4 + 3] = cy + hh;
        scores[slot] = best;
        classes[slot] = best_c;
        anchors[slot] = a;
    }
}

#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)  // host build through the shim only
// Host entry point for tests; returns count (may exceed capacity).
extern "C" int ea_decode_host(const float* pred, int num_classes, int num_anchors, float conf_threshold,
                              int capacity, float* boxes, float* scores, int* classes, int* anchors) {
    int count = 0;
    if (num_anchors <= 0) return 0;
    int grid = min((num_anchors + EA_DECODE_TPB - 1) / EA_DECODE_TPB, 1024);
    EA_LAUNCH(ea_decode_yolov8, dim3(grid), dim3(EA_DECODE_TPB), pred, num_classes, num_anchors,
              conf_threshold, capacity, boxes, scores, classes, anchors, &count);
    return count;
}
#endif
