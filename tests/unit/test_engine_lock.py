"""runtime.sole_engine_lock: one engine per SQLite file, whatever name the file is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgewarm.errors import StoreError
from edgewarm.runtime import sole_engine_lock


def test_a_second_engine_on_the_same_file_is_refused_by_any_of_its_names(tmp_path: Path) -> None:
    """The lock is named after the file itself: a second engine given a symbolic link to it (left where the
    file was moved from, say) is refused as one given the same path is (before, it took back the first one's
    running items as left by a dead process, and both sent them)."""
    (tmp_path / "real.db").touch()
    (tmp_path / "link.db").symlink_to("real.db")
    (tmp_path / "folder").symlink_to(tmp_path, target_is_directory=True)
    with sole_engine_lock(f"sqlite:///{tmp_path}/real.db") as sole:
        assert sole is True
        for other in ("real.db", "link.db", "folder/real.db"):
            with pytest.raises(StoreError) as refused, sole_engine_lock(f"sqlite:///{tmp_path}/{other}"):
                pass
            assert str(refused.value).startswith(
                f"another edgewarm engine is already working on {tmp_path}/{other}: stop it"
            )
    with sole_engine_lock(f"sqlite:///{tmp_path}/link.db") as sole:  # free again once the first one ends
        assert sole is True


def test_removing_the_lock_file_under_its_holder_lets_no_second_engine_in(tmp_path: Path) -> None:
    """The lock file stays after a stop, and looks stale: a tester removed it while an engine ran, and a second
    `serve` started on the same store, took back the first one's running items and claimed beside it. The
    database file is locked too."""
    store = f"sqlite:///{tmp_path}/e.db"
    with sole_engine_lock(store):
        (tmp_path / "e.db.engine.lock").unlink()
        with pytest.raises(StoreError) as refused, sole_engine_lock(store):
            pass
        assert str(refused.value).startswith(f"another edgewarm engine is already working on {tmp_path}/e.db: stop it")
    assert (tmp_path / "e.db").stat().st_mode & 0o777 == 0o600  # made for its owner only, as the store makes it
    with sole_engine_lock(store) as sole:
        assert sole is True
