"""tether.io: the atomic write keeps files readable and leaves no temporary behind; the listing digest."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from tether.io import atomic_write_text, sha256_file, sha256_listing


def test_atomic_write_gives_the_mode_open_would(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        target = atomic_write_text(tmp_path / "sub" / "a.json", '{"x": 1}')
        plain = tmp_path / "plain.json"
        plain.write_text("{}")
    finally:
        os.umask(old)
    assert target.read_text() == '{"x": 1}'
    # mkstemp's 0o600 would make a shared model cache unreadable to other users.
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_a_failed_atomic_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")

    with pytest.raises(TypeError):
        atomic_write_text(target, 3)  # type: ignore[arg-type]  # fh.write() refuses it after mkstemp
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_sha256_listing_is_sha256sum_of_the_sorted_folder(tmp_path: Path) -> None:
    for name, data in {"b.safetensors": b"bb", "a.safetensors": b"a"}.items():
        (tmp_path / name).write_bytes(data)
    named = {p.name: sha256_file(p) for p in tmp_path.iterdir()}
    listing = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in [("a.safetensors", b"a"), ("b.safetensors", b"bb")])
    assert sha256_listing(named) == hashlib.sha256(listing.encode()).hexdigest()
