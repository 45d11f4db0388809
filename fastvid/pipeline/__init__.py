"""The kind-free loading pipeline: a rank's work items -> a backend (fastvid.pipeline.backends) yielding
Chunk | Failure -> exact batches (fastvid.pipeline.contract.rebatch) under one failure policy."""
