"""The command-line tools: demo, simulate, collect-cfgs."""

import json

import pytest

from jwst_skymatch_plus.cli import main, run_demo


@pytest.mark.slow
def test_demo_reports_truth_and_writes_the_figure(tmp_path, capsys):
    out = run_demo(tmp_path, quick=True)
    printed = capsys.readouterr().out
    assert "noise-limited floor" in printed and "PixelSkyMatchStep" in printed
    assert out["pixel_rms"] < 3 * out["floor"]
    assert out["pixel_rms"] < 0.1 * out["stock_rms"]
    assert out["png"].stat().st_size > 50_000


def test_simulate_command_writes_an_association(tmp_path, capsys):
    assert (
        main(["simulate", str(tmp_path), "--shape", "64", "64", "--tiles", "2", "1", "--dithers", "2"]) == 0
    )
    asn = json.loads((tmp_path / "sim_mosaic_asn.json").read_text())
    members = asn["products"][0]["members"]
    assert len(members) == 4
    assert all((tmp_path / m["expname"]).exists() for m in members)


def test_collect_cfgs_command(tmp_path, capsys):
    assert main(["collect-cfgs", str(tmp_path)]) == 0
    assert (tmp_path / "pixel_skymatch.asdf").exists()
    assert (tmp_path / "calwebb_image3_plus.cfg").exists()
