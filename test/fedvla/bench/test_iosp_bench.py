"""`fedvla bench iosp` runs and reports every stage (figures only: no timing is asserted)."""
import pytest

pytest.importorskip("metaworld")


def test_iosp_bench_reports_each_setting_with_and_without_the_cache() -> None:
    from fedvla.bench.iosp import bench_iosp

    figures = bench_iosp(frames=3, every_n=2)
    assert [(f.setting, f.cached) for f in figures] == [("640x480, 1 camera", False), ("640x480, 1 camera", True),
                                                        ("128x128, 3 cameras", False), ("128x128, 3 cameras", True)]
    for f in figures:
        assert set(f.stage_ms) == {"detect", "group", "select"} and f.total_mean_ms > 0 and f.rate_hz > 0
