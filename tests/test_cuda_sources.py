"""Every CUDA C source shipped in fastvid.kernels compiles with nvcc and stays NVRTC-friendly.

CuPy compiles these files at run time with NVRTC, which has no host headers: a source that includes
one, or fails to compile, would only break on a GPU machine, so CI compiles them here. Without nvcc the
test skips, except under CI (env CI set), where a missing nvcc is a failure.
"""

import importlib.resources
import os
import re
import shutil
import subprocess

import pytest

SOURCES = sorted(p.name for p in importlib.resources.files("fastvid.kernels").iterdir() if p.name.endswith(".cu"))
# The kernels each source must export under C linkage (names the Python launchers look up).
EXPECTED_ENTRIES = {
    "crop.cu": {"crop_resize_normalize_f32", "crop_resize_normalize_f16", "crop_resize_normalize_bf16"},
    "events.cu": {"histogram", "stacked_histogram", "voxel_grid", "time_surface", "event_frame"},
}


def _nvcc():
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc is None:
        if os.environ.get("CI"):
            pytest.fail("nvcc not found but CI is set: the CUDA kernels must be compiled in CI")
        pytest.skip("nvcc not found (set CI=1 to make this a failure)")
    return nvcc


def test_sources_are_shipped():
    assert set(EXPECTED_ENTRIES) <= set(SOURCES)


@pytest.mark.parametrize("name", SOURCES)
def test_source_has_no_host_includes(name):
    text = importlib.resources.files("fastvid.kernels").joinpath(name).read_text()
    includes = re.findall(r"^\s*#\s*include\s*[<\"]([^>\"]+)", text, flags=re.M)
    assert includes == [], f"{name} includes {includes}; NVRTC has no host headers"


@pytest.mark.parametrize("name", SOURCES)
def test_nvcc_compiles_to_ptx_with_c_entry_points(name, tmp_path):
    nvcc = _nvcc()
    src = importlib.resources.files("fastvid.kernels").joinpath(name)
    ptx = tmp_path / (name + ".ptx")
    with importlib.resources.as_file(src) as path:
        proc = subprocess.run([nvcc, "-arch=sm_90", "-std=c++17", "--ptx", "-Werror", "all-warnings", str(path), "-o", str(ptx)],
                              capture_output=True, text=True)
    assert proc.returncode == 0, f"nvcc failed on {name}:\n{proc.stderr}"
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx.read_text()))
    assert EXPECTED_ENTRIES.get(name, set()) <= entries, f"{name}: missing kernels {EXPECTED_ENTRIES[name] - entries}"


# --- The kernels' logic, run on the CPU -------------------------------------------------------------
# The .cu files are compiled as plain C++ with this prelude standing in for the CUDA built-ins: one
# "thread" (grid 1 x block 1) walks every element through the kernels' grid-stride loops, and atomics
# become plain read-modify-writes. This checks indexing, formulas, flips, window search and dropped
# counting against the Numba twins on machines without a GPU; the GPU tests check the real thing.
HOST_PRELUDE = r"""
#include <math.h>
#include <string.h>
#define FASTVID_HOST_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
struct fv_dim3 { unsigned int x, y, z; };
static const fv_dim3 threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
inline float atomicAdd(float* a, float v) { float o = *a; *a = o + v; return o; }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) { unsigned long long o = *a; *a = o + v; return o; }
inline int atomicMax(int* a, int v) { int o = *a; if (v > o) *a = v; return o; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline unsigned int __float_as_uint(float f) { unsigned int u; memcpy(&u, &f, 4); return u; }
inline unsigned short float_to_half_bits(float v) { _Float16 h = (_Float16)v; unsigned short r; memcpy(&r, &h, 2); return r; }
"""


def _host_library(name, tmp_path):
    import ctypes

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        if os.environ.get("CI"):
            pytest.fail("g++ not found but CI is set")
        pytest.skip("no C++ compiler for the CPU emulation of the CUDA kernels")
    prelude = tmp_path / "prelude.h"
    prelude.write_text(HOST_PRELUDE)
    lib = tmp_path / (name + ".so")
    with importlib.resources.as_file(importlib.resources.files("fastvid.kernels").joinpath(name)) as path:
        proc = subprocess.run([cxx, "-O1", "-std=c++17", "-shared", "-fPIC", "-include", str(prelude), "-x", "c++",
                               str(path), "-o", str(lib)], capture_output=True, text=True)
    assert proc.returncode == 0, f"host emulation build of {name} failed:\n{proc.stderr}"
    return ctypes.CDLL(str(lib))


def _ptr(a):
    import ctypes

    return ctypes.c_void_p(a.ctypes.data)


@pytest.mark.parametrize("kind", ["histogram", "stacked_histogram", "voxel_grid", "time_surface", "event_frame"])
def test_events_kernel_logic_matches_numba(kind, tmp_path):
    import ctypes

    import numpy as np

    from fastvid.events import EVENT_DTYPE, REPRESENTATIONS, represent_batch

    lib = _host_library("events.cu", tmp_path)
    width, height, bins, tau = 40, 30, 4, 15_000.0
    rng = np.random.default_rng(0)
    n = 6000
    ev = np.zeros(n, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, 100_000, n))
    ev["x"], ev["y"], ev["p"] = rng.integers(-2, width + 2, n), rng.integers(-2, height + 2, n), rng.integers(0, 2, n)
    offsets = np.array([0, 1500, 1500, 4000, 6000], dtype=np.int64)
    for t0, t1 in ((None, None), (np.array([0, 0, 20_000, 60_000]), np.array([40_000, 1, 70_000, 99_000]))):
        expect, expect_dropped = represent_batch(ev, offsets, kind, (width, height), bins=bins, tau_us=tau, t0=t0, t1=t1,
                                                 return_dropped=True)
        channels = REPRESENTATIONS[kind].channels(bins)
        out = np.zeros((4, channels, height, width), np.float32)
        dropped = np.zeros(4, np.uint64)
        cols = [np.ascontiguousarray(ev[k]) for k in ("t", "x", "y", "p")]
        t0s = np.zeros(4, np.int64) if t0 is None else t0.astype(np.int64)
        t1s = np.zeros(4, np.int64) if t1 is None else t1.astype(np.int64)
        getattr(lib, kind)(*map(_ptr, cols), _ptr(offsets), ctypes.c_int(4), _ptr(t0s), _ptr(t1s),
                           ctypes.c_int(t0 is not None), ctypes.c_int(t1 is not None), ctypes.c_int(bins),
                           ctypes.c_float(1.0 / tau), ctypes.c_int(height), ctypes.c_int(width), ctypes.c_int(channels),
                           _ptr(out), _ptr(dropped))
        assert np.array_equal(dropped.astype(np.int64), expect_dropped.numpy())
        if kind in ("histogram", "stacked_histogram", "event_frame"):
            assert np.array_equal(out, expect.numpy())
        else:
            np.testing.assert_allclose(out, expect.numpy(), rtol=1e-5, atol=2e-5)
        assert np.abs(out).sum() > 0


def test_crop_kernel_logic_matches_numba(tmp_path):
    import ctypes

    import numpy as np
    import torch

    from fastvid.video.boxes import sample_multiscale_boxes
    from fastvid.kernels import crop_resize_normalize

    lib = _host_library("crop.cu", tmp_path)
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (3, 2, 40, 52, 3), dtype=np.uint8)
    boxes = sample_multiscale_boxes(40, 52, 3, seed=4, out_size=24)
    flip = np.array([1, 0, 1], np.uint8)
    mean, std = np.array([0.4, 0.5, 0.6], np.float32), np.array([0.2, 0.25, 0.3])
    inv_std = (1.0 / std).astype(np.float32)
    out_h, out_w = 24, 30
    expect = crop_resize_normalize(frames, boxes, (out_h, out_w), flip=flip.astype(bool), mean=mean, std=std)
    for kernel, dtype in (("crop_resize_normalize_f32", torch.float32), ("crop_resize_normalize_f16", torch.float16),
                          ("crop_resize_normalize_bf16", torch.bfloat16)):
        out = np.zeros((3, 3, 2, out_h, out_w), np.float32 if dtype == torch.float32 else np.int16)
        getattr(lib, kernel)(_ptr(frames), _ptr(boxes), _ptr(flip), _ptr(mean), _ptr(inv_std), ctypes.c_float(1 / 255),
                             _ptr(out), *(ctypes.c_int(v) for v in (3, 2, 40, 52, 3, out_h, out_w)))
        got = torch.from_numpy(out) if dtype == torch.float32 else torch.from_numpy(out).view(dtype)
        if dtype == torch.float32:
            torch.testing.assert_close(got, expect, rtol=1e-6, atol=1e-6)
        else:
            # Rounding float32 -> half/bfloat16 must be round-to-nearest-even, as torch's .to(dtype).
            assert torch.equal(got, expect.to(dtype))
