"""fedvla bench transfer's Flower path: an update's bytes through a TLS SuperLink and authenticated
SuperNodes on loopback, fetch and upload timed apart."""
import pytest

from fedvla.app.flower_local import BIN

pytest.importorskip("flwr")


@pytest.mark.timeout(600)
@pytest.mark.skipif(not (BIN / "flower-superlink").exists(), reason="flwr's executables are not installed")
def test_an_update_goes_through_flower_and_both_directions_are_timed(tmp_path) -> None:
    from fedvla.bench.flower_transfer import flower_transfer

    figures = flower_transfer(2_000_000, 2, tmp_path)
    assert figures["clients"] == 2 and figures["bytes_per_client"] == 2_000_000
    assert 0 < figures["fetch_s"] < figures["done"] - figures["sent"] + 1e-6
    assert 0 < figures["upload_s"] <= figures["done"] - figures["sent"] + 1e-6
    assert figures["fetch_mb_s"] > 0 and figures["upload_mb_s"] > 0
