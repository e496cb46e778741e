// preprocess.cu: camera frame -> engine input in one pass.
//
// uint8 BGR HWC (any size, any row stride) -> letterbox (bilinear resize that
// keeps the aspect ratio, pad 114) -> RGB -> /255 -> float32 CHW.
// Sampling follows cv2.resize(INTER_LINEAR): half-pixel centers
// (sx = (x + 0.5) * scale - 0.5), clamped at the borders the same way. OpenCV
// rounds to uint8 with 11-bit fixed-point weights; we keep the float value, so
// the two differ by at most about one intensity level (tests measure it).
// The letterbox geometry (new_w/new_h/left/top/scale) comes from the host,
// agent.kernels.letterbox_geometry, so the mapping back lives in one place.
//
// Launch: grid min(ceil(dst_w*dst_h/256), 4096), block 256 (grid-stride loop).

#define EA_PRE_TPB 256

extern "C" __global__ void ea_letterbox(const unsigned char* src, int src_w, int src_h, int src_stride,
                                        float* dst, int dst_w, int dst_h, int new_w, int new_h,
                                        int left, int top, float scale_x, float scale_y) {
    const int plane = dst_w * dst_h;
    for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < plane; p += gridDim.x * blockDim.x) {
        const int x = p % dst_w - left;
        const int y = p / dst_w - top;
        float r, g, b;
        if (x < 0 || y < 0 || x >= new_w || y >= new_h) {
            r = g = b = 114.f;
        } else {
            float fx = (x + 0.5f) * scale_x - 0.5f;
            float fy = (y + 0.5f) * scale_y - 0.5f;
            int sx = (int)floorf(fx);
            int sy = (int)floorf(fy);
            fx -= sx;
            fy -= sy;
            if (sx < 0) { sx = 0; fx = 0.f; }
            if (sy < 0) { sy = 0; fy = 0.f; }
            if (sx >= src_w - 1) { sx = src_w - 1; fx = 0.f; }
            if (sy >= src_h - 1) { sy = src_h - 1; fy = 0.f; }
            const int sx1 = min(sx + 1, src_w - 1);
            const int sy1 = min(sy + 1, src_h - 1);
            const unsigned char* r0 = src + (long long)sy * src_stride;
            const unsigned char* r1 = src + (long long)sy1 * src_stride;
            float w00 = (1.f - fx) * (1.f - fy), w01 = fx * (1.f - fy);
            float w10 = (1.f - fx) * fy, w11 = fx * fy;
            float v[3];
            for (int c = 0; c < 3; ++c) {
                v[c] = w00 * r0[sx * 3 + c] + w01 * r0[sx1 * 3 + c] + w10 * r1[sx * 3 + c] + w11 * r1[sx1 * 3 + c];
            }
            b = v[0];
            g = v[1];
            r = v[2];
        }
        dst[p] = r * (1.0f / 255.0f);  // same constant as agent.preprocess (float32(1/255))
        dst[plane + p] = g * (1.0f / 255.0f);
        dst[2 * plane + p] = b * (1.0f / 255.0f);
    }
}

#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)  // host build through the shim only
extern "C" void ea_letterbox_host(const unsigned char* src, int src_w, int src_h, int src_stride, float* dst,
                                  int dst_w, int dst_h, int new_w, int new_h, int left, int top,
                                  float scale_x, float scale_y) {
    // A small grid on the host: each block costs a round of 256 thread wake-ups,
    // and it makes every thread take many trips through the grid-stride loop.
    int grid = min((dst_w * dst_h + EA_PRE_TPB - 1) / EA_PRE_TPB, 8);
    EA_LAUNCH(ea_letterbox, dim3(grid), dim3(EA_PRE_TPB), src, src_w, src_h, src_stride, dst, dst_w, dst_h,
              new_w, new_h, left, top, scale_x, scale_y);
}
#endif
