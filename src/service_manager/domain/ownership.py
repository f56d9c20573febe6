"""Who holds a session's stream, as far as the database can tell: the instance that took
the session over last (`Session.owner_id`), for as long as updates keep coming. Pure
rules; the fencing itself (epochs) is the session store's.

An instance that holds a stream writes each update's time (`last_update_at`) with its
usage batches. So an ACTIVE session whose owner is another instance and whose last update
is recent is that instance's to end (it hears the same account events); one with no
owner, one of ours that no stream here holds, or one whose owner has gone quiet for
longer than the lease is between streams, and any instance may settle it."""

from __future__ import annotations

from datetime import datetime, timedelta

from service_manager.domain.sessions import Session

OWNER_LEASE = timedelta(seconds=10)
"""How long after a session's last update its owner still counts as holding its stream.
Devices report every few seconds (the SDK's default is one), so a stream quiet for this
long is gone, or its instance is."""


def held_elsewhere(
    session: Session, instance: str, now: datetime, lease: timedelta = OWNER_LEASE
) -> bool:
    """Whether another instance than `instance` may hold the session's stream right now:
    it took the session over last, and the session was updated within `lease`."""
    if session.owner_id in ("", instance):
        return False
    return now - session.last_update_at < lease
