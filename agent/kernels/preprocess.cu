// preprocess.cu: camera frame -> engine input in one pass.
//
// uint8 BGR HWC (any size, any row stride) -> letterbox (bilinear resize that
// keeps the aspect ratio, pad 114) -> RGB -> /255 -> float32 CHW.
// Sampling and rounding follow cv2.resize(INTER_LINEAR) on 8-bit images (OpenCV's
// resize.cpp): half-pixel centers (sx = (x + 0.5) * scale - 0.5, in double, then float),
// clamped at the borders the same way; 11-bit fixed-point weights, each rounded on its
// own; a horizontal pass into integers, then the vertical one as OpenCV's 8-bit path
// computes it, ((b0 * (h0 >> 4)) >> 16) + ((b1 * (h1 >> 4)) >> 16) + 2) >> 2. So the
// fused path sees the very pixels the CPU letterbox does (tests compare them; bit-exact
// where OpenCV takes this path, which covers every downscale; upscales may differ by one
// level where OpenCV uses another).
// The letterbox geometry (new_w/new_h/left/top/scale) comes from the host,
// agent.kernels.letterbox_geometry, so the mapping back lives in one place.
//
// Launch: grid min(ceil(dst_w*dst_h/256), 4096), block 256 (grid-stride loop).

#define EA_PRE_TPB 256

#define EA_COEF_SCALE 2048  // OpenCV's INTER_RESIZE_COEF_SCALE (11 bits)

// One axis: the two source taps and their fixed-point weights for destination index d.
__device__ __forceinline__ void ea_taps(int d, double scale, int size, int* s0, int* s1, int* w0, int* w1) {
    // Explicitly rounded: no FMA contraction, so the position is OpenCV's to the last bit.
    float f = (float)__dsub_rn(__dmul_rn(__dadd_rn((double)d, 0.5), scale), 0.5);
    int s = (int)floorf(f);
    f -= s;
    if (s < 0) { s = 0; f = 0.f; }
    if (s >= size - 1) { s = size - 1; f = 0.f; }
    *s0 = s;
    *s1 = min(s + 1, size - 1);
    *w0 = __float2int_rn((1.f - f) * EA_COEF_SCALE);  // OpenCV: saturate_cast<short>, round half even
    *w1 = __float2int_rn(f * EA_COEF_SCALE);
}

extern "C" __global__ void ea_letterbox(const unsigned char* src, int src_w, int src_h, int src_stride,
                                        float* dst, int dst_w, int dst_h, int new_w, int new_h,
                                        int left, int top, double scale_x, double scale_y) {
    const int plane = dst_w * dst_h;
    for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < plane; p += gridDim.x * blockDim.x) {
        const int x = p % dst_w - left;
        const int y = p / dst_w - top;
        int v[3] = {114, 114, 114};
        if (x >= 0 && y >= 0 && x < new_w && y < new_h) {
            int sx, sx1, a0, a1, sy, sy1, b0, b1;
            ea_taps(x, scale_x, src_w, &sx, &sx1, &a0, &a1);
            ea_taps(y, scale_y, src_h, &sy, &sy1, &b0, &b1);
            const unsigned char* r0 = src + (long long)sy * src_stride;
            const unsigned char* r1 = src + (long long)sy1 * src_stride;
            for (int c = 0; c < 3; ++c) {
                const int h0 = r0[sx * 3 + c] * a0 + r0[sx1 * 3 + c] * a1;
                const int h1 = r1[sx * 3 + c] * a0 + r1[sx1 * 3 + c] * a1;
                const int out = (((b0 * (h0 >> 4)) >> 16) + ((b1 * (h1 >> 4)) >> 16) + 2) >> 2;
                v[c] = min(max(out, 0), 255);
            }
        }
        dst[p] = v[2] * (1.0f / 255.0f);  // same constant as agent.preprocess (float32(1/255))
        dst[plane + p] = v[1] * (1.0f / 255.0f);
        dst[2 * plane + p] = v[0] * (1.0f / 255.0f);
    }
}

#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)  // host build through the shim only
extern "C" void ea_letterbox_host(const unsigned char* src, int src_w, int src_h, int src_stride, float* dst,
                                  int dst_w, int dst_h, int new_w, int new_h, int left, int top,
                                  double scale_x, double scale_y) {
    // A small grid on the host: each block costs a round of 256 thread wake-ups,
    // and it makes every thread take many trips through the grid-stride loop.
    int grid = min((dst_w * dst_h + EA_PRE_TPB - 1) / EA_PRE_TPB, 8);
    EA_LAUNCH(ea_letterbox, dim3(grid), dim3(EA_PRE_TPB), src, src_w, src_h, src_stride, dst, dst_w, dst_h,
              new_w, new_h, left, top, scale_x, scale_y);
}
#endif
