"""The video kind: sources and transcoding for `fastvid shard videos`, the video sample reader, clip
sampling (torchvision's grid and samplers), presets and crop geometry, the loader backends (DALI, PyAV,
NVDEC candidates) behind `VideoLoader`, and the classification models. Registered into the core by
fastvid.video.kind."""
