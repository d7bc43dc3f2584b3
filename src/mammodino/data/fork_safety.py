"""Loader workers forked safely: OpenCV at one thread while the workers start.

A forked worker inherits OpenCV's thread pool without its threads. Its `cv2.setNumThreads(1)`
(PretrainDataset: one OpenCV thread per worker, the workers already fill the cores) then waits
forever on the missing threads (in pthread_cond_destroy), once this process has run one
multi-threaded OpenCV call: a `prepare` or an earlier run's kNN monitor in the same process (a
notebook, a script, a test session). With the pool at one thread at the fork there are no threads
to inherit, and the workers of a shard stream, which never set it, start at one OpenCV thread too.
Forkserver or spawn workers would avoid it as well, but would re-run every user script that lacks an
`if __name__ == "__main__":` guard.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import cv2


@contextmanager
def opencv_single_threaded() -> Iterator[None]:
    """OpenCV at one thread inside the block (fork loader workers there), then as before."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)
