"""The demo's command line: a run never starts on top of an earlier run's state."""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.__main__ import parse, run


def test_a_non_empty_output_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "adapters").mkdir()
    with pytest.raises(SystemExit, match="is not empty"):
        run(parse(["--headless", "--out", str(tmp_path)]))
