"""The benchmarks' plain table: widths from headers and cells, and no rows at all (a
comparison table of one setting against itself has none)."""

from bench.common import table


def test_table_aligns_cells_and_prints_headers_without_rows() -> None:
    assert table(["user", "accuracy"], [["cas", 0.93], ["wren", 0.625]]).splitlines() == [
        "user  accuracy", "----  --------", " cas      0.93", "wren      0.62"]
    assert table(["setting", "pairs"], []).splitlines() == ["setting  pairs",
                                                            "-------  -----"]
