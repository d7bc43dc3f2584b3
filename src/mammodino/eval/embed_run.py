"""Old home of `load_cache_image`: kept only while report/build.py imports it; then delete.

Cached images are opened by preprocess/cache.py; the embed command's work is eval/embedding_run.py.
"""

from mammodino.preprocess.cache import read_cached_float as load_cache_image

__all__ = ["load_cache_image"]
