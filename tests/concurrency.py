"""Running the same work on many threads at once, for the race tests on PostgreSQL."""

import threading
from concurrent.futures import ThreadPoolExecutor

from django.db import connections


def run_concurrently(n: int, work) -> list:
    """Call `work(i)` for i in range(n) on n threads released together; results in order of i.

    Each thread closes its database connections when done, so transactional tests can flush.
    """
    barrier = threading.Barrier(n)

    def worker(i: int):
        try:
            barrier.wait()
            return work(i)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(worker, range(n)))
