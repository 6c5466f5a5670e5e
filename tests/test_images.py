"""Atomic writes: a reader sees the old file or the whole new one, and a failure leaves nothing behind."""

import pytest
from PIL import Image

from hirm.images import grid, save_atomic, write_text_atomic


def test_write_text_atomic_is_utf8_and_leaves_no_temp_file_on_failure(tmp_path):
    path = write_text_atomic("Mönch, ✓\n", tmp_path / "a" / "notes.md")
    assert path.read_bytes() == "Mönch, ✓\n".encode()
    with pytest.raises(TypeError):
        write_text_atomic(123, tmp_path / "b.md")  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_save_atomic_and_grid(tmp_path):
    tiles = [Image.new("RGB", (4, 4), c) for c in ("red", "green", "blue")]
    out = save_atomic(grid(tiles, cols=2), tmp_path / "g.png")
    with Image.open(out) as im:
        assert im.size[0] >= 8 and im.getpixel((0, 0))[:3] == (255, 0, 0)
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]
