"""Frame decoders for fastvid.video.threaded_backend: one module per library, each guarded by fastvid._gpu.

Each module: DECODE_DEVICE, can_decode(codec, device, width, height), make_decoder(device) -> decode(data, indices).
"""
