"""screenshots.save_screenshot writes a docs screenshot only when the page's structure
changed, the PNG is missing, or EXAMCACHE_SCREENSHOTS=1 asks: a normal run of the browser
tests leaves docs/_static untouched."""
from __future__ import annotations

import pytest

from . import screenshots


class Page:
    """What save_screenshot uses of a Playwright page: its outline and a PNG."""

    def __init__(self, outline: list, png: bytes) -> None:
        self.outline, self.png = outline, png

    def evaluate(self, script: str) -> dict:
        assert "querySelectorAll" in script
        return {"outline": self.outline, "size": [1180, 720]}

    def screenshot(self, full_page: bool = False) -> bytes:
        return self.png


@pytest.fixture
def static(tmp_path, monkeypatch):
    monkeypatch.setattr(screenshots, "FINGERPRINTS", tmp_path / "screenshots.json")
    monkeypatch.delenv(screenshots.FORCE, raising=False)
    return tmp_path


def test_written_when_missing_kept_when_only_pixels_change(static):
    path = static / "admin.png"
    outline = [["H1", "", "", "", ""], ["TABLE", "jobs", "", "", ""]]
    assert screenshots.save_screenshot(Page(outline, b"first"), path)[1] is True
    assert path.read_bytes() == b"first"
    # new job ids and times: other pixels, the same structure -> not written
    assert screenshots.save_screenshot(Page(outline, b"second"), path)[1] is False
    assert path.read_bytes() == b"first"


def test_written_when_the_structure_changes_or_when_asked(static, monkeypatch):
    path = static / "admin.png"
    outline = [["H1", "", "", "", ""]]
    screenshots.save_screenshot(Page(outline, b"first"), path)
    changed = outline + [["BUTTON", "retry", "", "", "submit"]]
    assert screenshots.save_screenshot(Page(changed, b"second"), path)[1] is True
    assert path.read_bytes() == b"second"
    monkeypatch.setenv(screenshots.FORCE, "1")
    assert screenshots.save_screenshot(Page(changed, b"third"), path)[1] is True
    assert path.read_bytes() == b"third"
