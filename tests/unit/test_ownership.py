"""service_manager.domain.ownership: which ACTIVE sessions another instance holds (left to
it on an account's suspension) and which are between streams (any instance ends them)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from service_manager.domain.ownership import OWNER_LEASE, held_elsewhere
from tests.unit.test_session_rules import session

pytestmark = pytest.mark.unit

UPDATED = session()
NOW = UPDATED.last_update_at + timedelta(seconds=1)


@pytest.mark.parametrize(
    ("owner", "quiet", "elsewhere"),
    [
        ("", timedelta(0), False),  # no instance took it over yet
        ("me", timedelta(0), False),  # ours: a stream here would be live here
        ("other", timedelta(0), True),  # another instance updated it just now
        ("other", OWNER_LEASE - timedelta(seconds=1), True),
        ("other", OWNER_LEASE, False),  # quiet for the whole lease: its stream is gone
        ("other", timedelta(minutes=5), False),
    ],
)
def test_only_a_recently_updated_session_of_another_instance_is_held_elsewhere(
    owner: str, quiet: timedelta, elsewhere: bool
) -> None:
    found = replace(UPDATED, owner_id=owner)
    assert held_elsewhere(found, "me", found.last_update_at + quiet) is elsewhere


def test_the_lease_can_be_given() -> None:
    found = replace(UPDATED, owner_id="other")
    assert not held_elsewhere(found, "me", NOW, lease=timedelta(milliseconds=500))
    assert held_elsewhere(found, "me", NOW, lease=timedelta(seconds=2))
