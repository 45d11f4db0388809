"""fastvid: high-throughput GPU data loading and training for video and event-camera data.

Layout: the core (fastvid.store: shard sets, local or remote; fastvid.pipeline: work items -> backends ->
batches; fastvid.train: one trainer with task plug-ins; fastvid.kernels) knows no kind of data. The kinds
(fastvid.video, fastvid.events) register their readers, backends, models and commands into it; the two
imports below are that registration. Importing fastvid is cheap and works without a GPU, CuPy or DALI;
heavy and GPU-only modules are imported where they are used (see fastvid._gpu).
"""

__version__ = "0.1.0"

from fastvid.events import kind as _events_kind  # noqa: E402,F401
from fastvid.video import kind as _video_kind  # noqa: E402,F401
