// Event-to-tensor representations for a batch of event windows in ONE launch.
//
// Events are columns t (int64 us), x, y (int16), p (int8, >0 = ON) concatenated over all windows;
// window w owns events [offsets[w], offsets[w+1]). One thread per event (grid-stride loop): it finds
// its window by binary search in offsets, drops (and counts) events outside the sensor, and scatters
// into out (N, C, H, W) float32 with atomics. out must be zeroed before the launch.
//
// Kinds (template parameter, one extern "C" entry point each):
//   histogram          C = 2:      out[p, y, x] += 1
//   stacked_histogram  C = 2*bins: out[p*bins + b, y, x] += 1, b = floor((t-t0)*bins / max(t1-t0, 1)) clamped
//   voxel_grid         C = bins:   ts = (bins-1)(t-t0)/(t1-t0) (t1 == t0 -> 1), bilinear in time, +1/-1
//   time_surface       C = 2:      out[p, y, x] = max over events of exp(-(t1 - t) / tau)
//   event_frame        C = 1:      out[0, y, x] += +1 / -1
// t0/t1 come from per-window arrays when has_t0/has_t1, else from the window's first/last event
// (stacked_histogram_rvt, RVT's convention, is stacked_histogram launched with has_t0 = has_t1 = 0).
// No host headers, so the file compiles with NVRTC and with nvcc.

typedef long long i64;
typedef unsigned long long u64;
typedef short i16;
typedef signed char i8;

#define KIND_HISTOGRAM 0
#define KIND_STACKED_HISTOGRAM 1
#define KIND_VOXEL_GRID 2
#define KIND_TIME_SURFACE 3
#define KIND_EVENT_FRAME 4

// The window w with offsets[w] <= i < offsets[w+1] (the last such w, so empty windows are skipped).
__device__ __forceinline__ int window_of(const i64* __restrict__ offsets, int n_windows, i64 i) {
    int lo = 0, hi = n_windows;
    while (hi - lo > 1) {
        const int mid = (lo + hi) >> 1;
        if (offsets[mid] <= i) lo = mid;
        else hi = mid;
    }
    return lo;
}

template <int KIND>
__device__ __forceinline__ void events_to_tensor(
    const i64* __restrict__ t, const i16* __restrict__ x, const i16* __restrict__ y, const i8* __restrict__ p,
    const i64* __restrict__ offsets, int n_windows, const i64* __restrict__ t0s, const i64* __restrict__ t1s,
    int has_t0, int has_t1, int bins, float inv_tau, int height, int width, int channels,
    float* __restrict__ out, u64* __restrict__ dropped) {
    const i64 first = offsets[0];
    const i64 count = offsets[n_windows] - first;
    const i64 plane = (i64)height * width;
    for (i64 k = (i64)blockIdx.x * blockDim.x + threadIdx.x; k < count; k += (i64)gridDim.x * blockDim.x) {
        const i64 i = first + k;
        const int w = window_of(offsets, n_windows, i);
        const int xi = x[i], yi = y[i];
        if (xi < 0 || xi >= width || yi < 0 || yi >= height) {
            atomicAdd(dropped + w, (u64)1);
            continue;
        }
        const int on = p[i] > 0;
        float* frame = out + (i64)w * channels * plane + (i64)yi * width + xi;
        if (KIND == KIND_HISTOGRAM) {
            atomicAdd(frame + on * plane, 1.f);
        } else if (KIND == KIND_EVENT_FRAME) {
            atomicAdd(frame, on ? 1.f : -1.f);
        } else {
            const i64 a = has_t0 ? t0s[w] : t[offsets[w]];
            const i64 b = has_t1 ? t1s[w] : t[offsets[w + 1] - 1];
            const i64 rel = t[i] - a;
            if (KIND == KIND_STACKED_HISTOGRAM) {
                const i64 span = (b - a) > 1 ? (b - a) : 1;
                i64 bin = rel * bins / span;
                bin = bin < 0 ? 0 : (bin > bins - 1 ? bins - 1 : bin);
                atomicAdd(frame + ((i64)on * bins + bin) * plane, 1.f);
            } else if (KIND == KIND_VOXEL_GRID) {
                const float scale = (float)(bins - 1) / ((b != a) ? (float)(b - a) : 1.f);
                const float ts = (float)rel * scale;
                const float lo = floorf(ts);
                const int bin = (int)lo;
                const float frac = ts - lo;
                const float pol = on ? 1.f : -1.f;
                if (bin >= 0 && bin < bins) atomicAdd(frame + (i64)bin * plane, pol * (1.f - frac));
                if (bin + 1 >= 0 && bin + 1 < bins) atomicAdd(frame + (i64)(bin + 1) * plane, pol * frac);
            } else {  // KIND_TIME_SURFACE
                // exp(...) >= 0 and is increasing in t, and non-negative floats order like their bits,
                // so an integer atomicMax keeps the newest event's value.
                const float v = expf(-(float)(b - t[i]) * inv_tau);
                atomicMax((int*)(frame + on * plane), __float_as_int(v));
            }
        }
    }
}

#define ETT_ARGS                                                                                              \
    const i64 *__restrict__ t, const i16 *__restrict__ x, const i16 *__restrict__ y, const i8 *__restrict__ p, \
        const i64 *__restrict__ offsets, int n_windows, const i64 *__restrict__ t0s, const i64 *__restrict__ t1s, \
        int has_t0, int has_t1, int bins, float inv_tau, int height, int width, int channels,                  \
        float *__restrict__ out, u64 *__restrict__ dropped
#define ETT_CALL t, x, y, p, offsets, n_windows, t0s, t1s, has_t0, has_t1, bins, inv_tau, height, width, channels, out, dropped

extern "C" __global__ void histogram(ETT_ARGS) { events_to_tensor<KIND_HISTOGRAM>(ETT_CALL); }
extern "C" __global__ void stacked_histogram(ETT_ARGS) { events_to_tensor<KIND_STACKED_HISTOGRAM>(ETT_CALL); }
extern "C" __global__ void voxel_grid(ETT_ARGS) { events_to_tensor<KIND_VOXEL_GRID>(ETT_CALL); }
extern "C" __global__ void time_surface(ETT_ARGS) { events_to_tensor<KIND_TIME_SURFACE>(ETT_CALL); }
extern "C" __global__ void event_frame(ETT_ARGS) { events_to_tensor<KIND_EVENT_FRAME>(ETT_CALL); }
