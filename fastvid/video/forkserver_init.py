"""Imported first by the fork server that starts the PyAV decode workers (see fastvid.video.pyav_backend).

The server is in the trainer's process group, so a scheduler's SIGTERM to the group reaches it: it ignores
the signal and keeps it blocked, and the workers it forks start with it blocked (the mask is inherited), so
none is killed before it is set up to leave SIGTERM to the trainer (fastvid.store.writer.obey_parent). The
server still ends when the trainer does (its pipe closes), and the workers with it.
"""

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
