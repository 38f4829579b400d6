"""The names the deploy files borrow from the parallel observability branch, until it lands."""

from __future__ import annotations

from tests.deploy.support import PENDING_PATHS, PENDING_SETTINGS, served_paths, setting_names


def test_pending_names_are_not_yet_served() -> None:
    # When this fails, the code provides these names: empty the sets in support.py so the
    # deploy files are checked against the code alone.
    assert not PENDING_PATHS & served_paths(), "now served: remove from PENDING_PATHS"
    assert not PENDING_SETTINGS & setting_names(), "now settings: remove from PENDING_SETTINGS"
