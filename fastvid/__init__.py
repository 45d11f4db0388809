"""fastvid: high-throughput GPU data loading and training for video and event-camera data.

Importing fastvid is cheap and works without a GPU, CuPy or DALI; heavy and GPU-only
modules are imported where they are used (see fastvid._gpu).
"""

__version__ = "0.1.0"
