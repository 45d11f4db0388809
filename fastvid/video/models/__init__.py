"""Video classification models with torchvision-compatible parameter names (R3D-18, MC3-18, R(2+1)D-18,
S3D, TSM-ResNet50), registered in the one model registry (fastvid.train.models) by fastvid.video.kind.
Every model takes (B, 3, T, H, W) clips."""
