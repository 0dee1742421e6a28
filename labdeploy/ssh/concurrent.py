"""Independent remote calls at once, each on its own channel of the one SSH connection.

Over a slow network a command costs a round trip or two of waiting, whatever its size; calls
that do not depend on each other wait together instead of one after the other.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable


def together(*calls: Callable[[], object]) -> list:
    """Run `calls` at once; their results in order. The first failure (in the order given) is
    raised once all have finished, so none is left running behind the caller's back."""
    if not calls:
        return []
    if len(calls) == 1:
        return [calls[0]()]
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="labdeploy-together") as workers:
        futures = [workers.submit(call) for call in calls]
    return [future.result() for future in futures]
