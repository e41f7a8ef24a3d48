"""Options of a training job that only the administrator may set: machines beyond this one.

``nodes`` above 1, ``rdzv_endpoint`` and ``rdzv_timeout`` make the database's process host a rendezvous on a port
the request chooses and wait, up to a day, for machines that may never come, while every other job stays PENDING
behind it (jobs run one at a time). A non-administrator's CREATE, SWEEP or ESTIMATE that sets any of them is
refused before anything is created, with an error naming the options. (Per-role limits on cost, and a fair queue
across roles, are issue 30's remaining part.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import PermissionDenied
from ..options import TrainingOptions

if TYPE_CHECKING:
    from ..surface.engine import Session

#: The options of several machines, with their one-machine defaults.
MULTI_NODE = {"nodes": 1, "rdzv_endpoint": None, "rdzv_timeout": TrainingOptions.rdzv_timeout}


def check_training_options(session: Session, opts: TrainingOptions) -> None:
    """Refuse multi-machine options to a non-administrator (the error names them)."""
    if session.is_admin:
        return
    set_ = [f"{k} {getattr(opts, k)!r}" for k, default in MULTI_NODE.items() if getattr(opts, k) != default]
    if set_:
        raise PermissionDenied.of(PermissionDenied.ADMINISTRATOR, role=session.role,
                                  reason=f"the multi-machine options ({', '.join(set_)}) are for the administrator "
                                         "only: a job on several machines holds the job queue and opens a rendezvous "
                                         "port on the database's machine")
