"""fastvid.kernels: CUDA C kernels (compiled at first use with CuPy/NVRTC) and their Numba CPU twins."""
