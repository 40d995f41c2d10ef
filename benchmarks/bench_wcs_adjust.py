"""Shift error (pixels, against the simulator's true pointings) and wall time of the WCS-adjust steps.

Usage::

    python benchmarks/bench_wcs_adjust.py           # full-frame MIRI, 3 x 3 tiles x 4 dithers
    python benchmarks/bench_wcs_adjust.py --quick   # 256 x 256 detectors, 2 x 2 tiles x 2 dithers
    python benchmarks/bench_wcs_adjust.py --geometry siaf [--binning 2]   # real MIRI geometry (SIAF)

Rows: jwst's own TweakRegStep (what calwebb_image3 does today), the catalog
(tweakreg) method and cross-correlation on a source-rich field, and
cross-correlation on the same visits with extended emission and no point
source.  "stated" is the median 1-sigma shift uncertainty the table reports.  The error is measured after removing the common shift and
rotation of the whole mosaic (the alignment is relative: it keeps the pointing
error of its reference visit).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "true")

import numpy as np

from jwst_skymatch_plus.inputs import each_model
from jwst_skymatch_plus.simulate import alignment_errors, simulate_mosaic
from jwst_skymatch_plus.steps.wcs_adjust import ApplyWCSAdjustStep, GetWCSAdjustStep


def _errors(models, sim, relative: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per exposure: mean and worst (5x5 grid) offset from the true WCS (common rigid transform removed)."""
    return alignment_errors(models, sim.true_wcs, sim.layout.pixel_scale, relative=relative)


def run(quick: bool, seed: int = 3, rows: str = "", geometry: str = "simple", binning: int = 1) -> None:
    """Simulate, measure, apply, and print one table row per method."""
    rng = np.random.default_rng(seed)
    if quick:
        layout = dict(shape=(256, 256), tiles=(2, 2), tile_overlap=0.5, dithers=2)
        n_sources = 3000
    else:
        layout = dict(tiles=(3, 3), tile_overlap=0.2, dithers=4)
        n_sources = 20000
    if geometry == "siaf":
        # Real apertures and distortion: no free detector shape (binning
        # keeps the geometry with fewer pixels); MIRI's cycling dithers.
        if quick:
            layout = dict(tiles=(2, 2), tile_overlap=0.5, dithers=2, binning=4)
        layout = {k: v for k, v in layout.items() if k != "shape"}
        layout.setdefault("binning", binning)
        layout["geometry"] = "siaf"
        # The same source density as the full-size table: the real field is
        # the full MIRI imager even when binned.
        n_sources = 7000 if quick else 20000
    n_visits = layout["tiles"][0] * layout["tiles"][1]
    misalignment = {
        v + 1: (*rng.uniform(-0.7, 0.7, 2), float(rng.uniform(-0.05, 0.05))) for v in range(n_visits)
    }
    rich = simulate_mosaic(
        "miri", **layout, misalignment=misalignment, n_sources=n_sources, emission=1.0, seed=seed
    )
    emission = simulate_mosaic(
        "miri", **layout, misalignment=misalignment, n_sources=0, emission=30.0, n_blobs=200, seed=seed
    )
    print(f"{len(rich.models)} exposures of {rich.models[0].data.shape}, {n_visits} visits")
    print(
        f"{'method':26s} {'visits measured':>16s} {'rms err px':>11s} {'max err px':>11s} "
        f"{'corner px':>10s} {'stated px':>10s} {'before px':>10s} {'get s':>7s} {'apply s':>8s}"
    )
    stock_time = None
    if not rows or "stock" in rows:
        stock_time = _stock_row(rich)
    with tempfile.TemporaryDirectory() as tmp:
        reference = str(emission.write_reference_image(f"{tmp}/reference.fits", gain=2.5, level=4.0))
        for label, sim, kwargs in (
            ("tweakreg (sources)", rich, {"tweakreg_parameters": "{'searchrad': 3.0}"}),
            ("cross_corr (sources)", rich, {"method": "cross_corr"}),
            ("cross_corr (emission)", emission, {"method": "cross_corr"}),
            ("cross_corr phase (emiss.)", emission, {"method": "cross_corr", "coarse_search": "phase"}),
            ("cross_corr + ref. image*", emission, {"method": "cross_corr", "reference_image": reference}),
        ):
            if not rows or any(r.strip() and r.strip() in label for r in rows.split(",")):
                _row(label, sim, kwargs, n_visits, stock_time, relative="reference_image" not in kwargs)
    print("* absolute errors: aligned to a reference image of the true sky (other units, noise 0.05)")


def _models(library) -> list:
    return [m for _, m in each_model(library)]


def _stock_row(sim) -> float:
    """jwst's TweakRegStep with its defaults (searchrad 3 arcsec): what calwebb_image3 does today."""
    from jwst.tweakreg import TweakRegStep

    before, _ = _errors(sim.models, sim)
    t0 = time.perf_counter()
    result = TweakRegStep.call([m.copy() for m in sim.models], searchrad=3.0)
    elapsed = time.perf_counter() - t0
    rel, worst = _errors(_models(result), sim)
    print(
        f"{'jwst tweakreg (stock)':26s} {'-':>16s} {np.sqrt(np.mean(rel**2)):11.4f} "
        f"{rel.max():11.4f} {worst.max():10.4f} {'-':>10s} {before.max():10.2f} {elapsed:7.1f} {'-':>8s}"
    )
    return elapsed


def _row(
    label: str, sim, kwargs: dict, n_visits: int, stock_time: float | None, relative: bool = True
) -> None:
    before, _ = _errors(sim.models, sim, relative)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        step = GetWCSAdjustStep(**kwargs, table_path=f"{tmp}/t.ecsv")
        step.run([m.copy() for m in sim.models])
        t1 = time.perf_counter()
        result = ApplyWCSAdjustStep.call([m.copy() for m in sim.models], table=str(step.table_paths[0]))
        t2 = time.perf_counter()
        rel, worst = _errors(_models(result), sim, relative)
        measured = int(np.sum(step.table["measured"]))
        stated = float(np.nanmedian(step.table["shift_error"])) / sim.layout.pixel_scale
        ratio = f" ({(t1 - t0) / stock_time:.1f}x stock)" if stock_time else ""
        print(
            f"{label:26s} {measured:>10d} / {n_visits:<3d} {np.sqrt(np.mean(rel**2)):11.4f} "
            f"{rel.max():11.4f} {worst.max():10.4f} {stated:10.4f} {before.max():10.2f} "
            f"{t1 - t0:7.1f} {t2 - t1:8.1f}{ratio}"
        )


def main() -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small detectors (a few seconds)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument(
        "--rows", default="", help="comma-separated label parts, e.g. 'emission' (default: all)"
    )
    parser.add_argument("--geometry", choices=("simple", "siaf"), default="simple", help="simulator geometry")
    parser.add_argument("--binning", type=int, default=1, help="siaf only: binned detector pixels")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # the table, not the steps' progress logs
    run(args.quick, args.seed, args.rows, args.geometry, args.binning)


if __name__ == "__main__":
    main()
