"""After start-up: hide what it allocated from the collector, and collect the young generation less often.

Request handling (gateway serve) and row encoding (gateway sink) allocate and free many short-lived
containers; with the default threshold (700) the collector runs thousands of times a second and walks
what start-up left (modules, settings, clients), which lives as long as the process anyway.
"""

from __future__ import annotations

import gc

# Objects allocated between young-generation collections. Python's default (700) collects every few
# requests or rows although reference counting frees nearly all of their objects.
GC_YOUNG_THRESHOLD = 50_000


def settle_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
