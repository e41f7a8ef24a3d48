"""The order queued jobs start in: fair across roles (issue 30 item 3).

Jobs run one at a time per database. Taken in arrival order, one role's 64-job SWEEP would hold every other
role's job until its last job finished. Instead the worker takes, among the queued jobs, the first one of the role
it served least recently (a role never served first; ties in arrival order), so roles alternate while several
wait and a role alone runs its jobs in order. The administrator's jobs are a role like any other.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

def take(queue: deque[str], owner_of: Callable[[str], str | None], served: dict[str, int]) -> str:
    """Remove and return the job to start next from ``queue``; ``served`` (role -> when it last had a job started,
    a counter) is updated for that job's owner."""
    owners = [owner_of(j) or "" for j in queue]
    best = min(range(len(owners)), key=lambda i: (served.get(owners[i], 0), i))
    job = queue[best]
    del queue[best]
    served[owners[best]] = max(served.values(), default=0) + 1
    return job
