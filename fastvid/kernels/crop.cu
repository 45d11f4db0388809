// Fused crop + bilinear resize + horizontal flip + normalize for batches of uint8 clips.
//
// frames: (N, T, H, W, C) uint8, C-contiguous; boxes: (N, 4) int64 y0, x0, h, w (one crop per clip,
// shared by its T frames); flip: (N,) uint8; out: (N, C, T, out_h, out_w).
// out = (bilinear(crop)[c] * scale - mean[c]) / std[c], bilinear with half-pixel centres exactly as
// torch F.interpolate(mode="bilinear", align_corners=False, antialias=False) on the cropped region.
// One thread per output pixel (n, t, y, x), looping over channels; a grid-stride loop covers the
// whole batch with ONE launch. No host headers, so the file compiles with NVRTC and with nvcc.

typedef unsigned char u8;
typedef unsigned short u16;
typedef long long i64;

// float -> IEEE half bits, round to nearest even (PTX, so no cuda_fp16.h is needed). The CPU emulation
// in tests/test_cuda_sources.py compiles this file as C++ and supplies its own version.
#ifndef FASTVID_HOST_EMULATION
__device__ __forceinline__ u16 float_to_half_bits(float v) {
    u16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(v));
    return r;
}
#endif

// float -> bfloat16 bits, round to nearest even; NaN stays a quiet NaN.
__device__ __forceinline__ u16 float_to_bf16_bits(float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}

// Source coordinate and weights along one axis, as torch's area_pixel_compute_source_index.
__device__ __forceinline__ void source_index(int dst, float scale, int in_size, int* i0, int* i1, float* l1) {
    float src = scale * ((float)dst + 0.5f) - 0.5f;
    if (src < 0.f) src = 0.f;
    int lo = (int)src;
    if (lo > in_size - 1) lo = in_size - 1;
    *i0 = lo;
    *i1 = lo + ((lo < in_size - 1) ? 1 : 0);
    *l1 = src - (float)lo;
}

template <int KIND>
__device__ __forceinline__ void crop_resize_normalize_impl(
    const u8* __restrict__ frames, const i64* __restrict__ boxes, const u8* __restrict__ flip,
    const float* __restrict__ mean, const float* __restrict__ inv_std, float scale_in, void* out,
    int N, int T, int H, int W, int C, int out_h, int out_w) {
    const i64 plane = (i64)out_h * out_w;
    const i64 total = (i64)N * T * plane;
    for (i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (i64)gridDim.x * blockDim.x) {
        const int x = (int)(idx % out_w);
        const int y = (int)((idx / out_w) % out_h);
        const i64 nt = idx / plane;  // n * T + t
        const int t = (int)(nt % T);
        const int n = (int)(nt / T);

        const i64* box = boxes + 4 * (i64)n;
        const int y0 = (int)box[0], x0 = (int)box[1], bh = (int)box[2], bw = (int)box[3];
        // The flip mirrors the resized output, so read column out_w - 1 - x.
        const int xs = flip[n] ? (out_w - 1 - x) : x;

        int h0, h1, w0, w1;
        float hl1, wl1;
        source_index(y, (float)bh / (float)out_h, bh, &h0, &h1, &hl1);
        source_index(xs, (float)bw / (float)out_w, bw, &w0, &w1, &wl1);
        const float hl0 = 1.f - hl1, wl0 = 1.f - wl1;

        const u8* frame = frames + nt * (i64)H * W * C;
        const u8* r0 = frame + ((i64)(y0 + h0) * W + x0) * C;
        const u8* r1 = frame + ((i64)(y0 + h1) * W + x0) * C;
        for (int c = 0; c < C; ++c) {
            const float v00 = (float)r0[(i64)w0 * C + c], v01 = (float)r0[(i64)w1 * C + c];
            const float v10 = (float)r1[(i64)w0 * C + c], v11 = (float)r1[(i64)w1 * C + c];
            const float v = hl0 * (wl0 * v00 + wl1 * v01) + hl1 * (wl0 * v10 + wl1 * v11);
            const float o = (v * scale_in - mean[c]) * inv_std[c];
            // out index: ((n * C + c) * T + t) * plane + y * out_w + x
            const i64 oi = (((i64)n * C + c) * T + t) * plane + (i64)y * out_w + x;
            if (KIND == 0) ((float*)out)[oi] = o;
            else if (KIND == 1) ((u16*)out)[oi] = float_to_half_bits(o);
            else ((u16*)out)[oi] = float_to_bf16_bits(o);
        }
    }
}

#define CRN_ARGS                                                                                      \
    const u8 *__restrict__ frames, const i64 *__restrict__ boxes, const u8 *__restrict__ flip,       \
        const float *__restrict__ mean, const float *__restrict__ inv_std, float scale_in, void *out, \
        int N, int T, int H, int W, int C, int out_h, int out_w
#define CRN_CALL frames, boxes, flip, mean, inv_std, scale_in, out, N, T, H, W, C, out_h, out_w

extern "C" __global__ void crop_resize_normalize_f32(CRN_ARGS) { crop_resize_normalize_impl<0>(CRN_CALL); }
extern "C" __global__ void crop_resize_normalize_f16(CRN_ARGS) { crop_resize_normalize_impl<1>(CRN_CALL); }
extern "C" __global__ void crop_resize_normalize_bf16(CRN_ARGS) { crop_resize_normalize_impl<2>(CRN_CALL); }
