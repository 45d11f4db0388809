"""The kind-free loading pipeline: a rank's work items -> a backend (fastvid.pipeline.backends) yielding
Chunk | Failure -> exact batches (fastvid.pipeline.contract.rebatch) under one failure policy, with one
stage-statistics hook (stats) and one move to the device (device), run by fastvid.pipeline.runner."""
