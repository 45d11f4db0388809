"""The in-memory event layout shared by readers, shards, representations and loaders."""

import numpy as np

# t: microseconds (int64), x/y: pixel coordinates, p: polarity 0 (OFF) / 1 (ON).
EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "<i1")])

# GEN1 (ATIS) sensor, (width, height).
GEN1_SENSOR_SIZE = (304, 240)
