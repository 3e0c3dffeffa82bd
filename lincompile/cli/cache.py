"""``lincompile cache``: where the cache of built C/CUDA libraries is, its size, clearing it."""

from __future__ import annotations

from .base import OK, command


def _cache_args(p):
    p.add_argument("action", choices=["info", "clear"],
                   help="info: where the build cache is, its entries and size; clear: delete "
                        "what lincompile keeps there")


@command("cache", _cache_args,
         "show where the cache of built C/CUDA libraries is and its size, or clear it",
         "lincompile cache info")
def cache_(a) -> int:
    import os

    from ..backends.build import cache_info, clear_cache

    info = cache_info()
    where = ("from $LINCOMPILE_CACHE" if os.environ.get("LINCOMPILE_CACHE")
             else "default; set LINCOMPILE_CACHE to move it")
    if a.action == "clear":
        removed, freed = clear_cache()
        print(f"removed {removed} entries ({freed / 1e6:.1f} MB) from {info.path}")
        return OK
    print(f"cache:   {info.path} ({where})")
    if not info.writable:
        print("         not writable: each process builds into a private temporary cache")
    print(f"entries: {info.entries} builds")
    print(f"size:    {info.bytes / 1e6:.1f} MB")
    return OK
