"""Sky matching on the real (SIAF) instrument geometry: every method, per instrument and layout, in one run.

Each scenario is a mosaic simulated with ``geometry='siaf'`` (real apertures,
distortion, module gap, subarrays, coronagraph regions, JWST dither
patterns, APT-style tiles) and ``background='jwst'`` (zodiacal plus thermal
background per filter, changing between visits and drifting inside them).
Rows, all on the same exposures:

* ``stock``: jwst's ``SkyMatchStep`` with its defaults (as calwebb_image3 runs it);
* ``pixel_skymatch``: ``PixelSkyMatchStep`` with its defaults;
* ``level_match``: ``LevelMatchStep`` with its defaults (all stages' levels added up);
* ``reproject``: reproject's ``reproject_and_coadd(match_background=True)``
  on every exposure (flagged pixels NaN), its per-exposure corrections.

``rms`` is the RMS error of the per-exposure offsets against the truth (one
free constant removed), ``floor`` the noise limit of an ideal estimator
(:func:`~jwst_skymatch_plus.simulate.offset_noise_floor`), times are wall
times of the method alone.

Usage::

    python benchmarks/bench_siaf.py                  # full-size detectors (long)
    python benchmarks/bench_siaf.py --binning 2      # 2 x 2 binned pixels: real geometry, 1/4 of the pixels
    python benchmarks/bench_siaf.py --binning 2 --sw-binning 4   # the table in docs/performance.rst
    python benchmarks/bench_siaf.py --quick          # binned by 8 (MIRI) / 16 (NIRCam): a smoke run
    python benchmarks/bench_siaf.py --only miri_f2100w --methods pixel_skymatch,stock
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings

os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "true")

import numpy as np

from jwst_skymatch_plus.simulate import (
    level_match_totals,
    offset_noise_floor,
    offset_rms_error,
    recorded_levels,
    simulate_mosaic,
)

METHODS = ("stock", "pixel_skymatch", "level_match", "reproject")


def scenarios() -> dict[str, dict]:
    """Instrument and layout of each table (before binning)."""
    miri = {
        "instrument": "miri",
        "geometry": "siaf",
        "background": "jwst",
        "tiles": (2, 2),
        "tile_overlap": 0.15,
        "dithers": 4,
        "dither_pattern": "CYCLING",
        "n_blobs": 60,
        "n_sources": 150,
        "exposure_offset_sigma": 0.0,
        "visit_offset_sigma": 0.0,
    }
    return {
        "miri_f770w": {
            **miri,
            "filter": "F770W",
            "noise": 0.05,
            "emission": 10.0,
            "seed": 11,
            "note": "MIRI F770W, FULL, 2 x 2 tiles x 4 cycling dithers",
        },
        "miri_f2100w": {
            **miri,
            "filter": "F2100W",
            "noise": 0.5,
            "emission": 20.0,
            "seed": 12,
            "note": "MIRI F2100W, FULL, 2 x 2 tiles x 4 cycling dithers (large thermal drifts)",
        },
        "miri_brightsky_full": {
            **miri,
            "filter": "F770W",
            "subarray": ["FULL", "BRIGHTSKY"],
            "visits_per_tile": 2,
            "noise": 0.05,
            "emission": 10.0,
            "seed": 13,
            "note": "MIRI F770W, each of 2 x 2 tiles observed FULL and BRIGHTSKY, 4 dithers each",
        },
        "nircam_f200w_sw": {
            "instrument": "nircam_short",
            "geometry": "siaf",
            "background": "jwst",
            "filter": "F200W",
            "tiles": (2, 1),
            "tile_overlap": 0.1,
            "dithers": 4,
            "dither_pattern": "FULLBOX",
            "noise": 0.01,
            "emission": 0.5,
            "n_blobs": 60,
            "n_sources": 600,
            "detector_offset_sigma": 0.005,
            "module_offset_sigma": 0.01,
            "exposure_offset_sigma": 0.0,
            "visit_offset_sigma": 0.0,
            "seed": 14,
            "note": "NIRCam F200W, 8 SW detectors, 2 x 1 tiles x 4 FULLBOX, chip and module offsets",
        },
        "nircam_f444w_lw": {
            "instrument": "nircam_long",
            "geometry": "siaf",
            "background": "jwst",
            "filter": "F444W",
            "tiles": (2, 1),
            "tile_overlap": 0.1,
            "dithers": 4,
            "dither_pattern": "FULLBOX",
            "noise": 0.01,
            "emission": 0.5,
            "n_blobs": 60,
            "n_sources": 400,
            "module_offset_sigma": 0.01,
            "exposure_offset_sigma": 0.0,
            "visit_offset_sigma": 0.0,
            "seed": 15,
            "note": "NIRCam F444W, 2 LW detectors, 2 x 1 tiles x 4 FULLBOX, module offsets",
        },
    }


def _fits_wcs(model):
    """The exposure's FITS (SIP) WCS from its metadata, as a header reader sees it."""
    from astropy.io import fits
    from astropy.wcs import WCS

    header = fits.Header()
    for key, value in model.meta.wcsinfo.instance.items():
        if key.startswith(("crpix", "crval", "ctype", "cunit", "cd", "a_", "b_", "ap_", "bp_")):
            header[key.upper()] = value
    header["NAXIS"] = 2
    header["NAXIS1"], header["NAXIS2"] = model.data.shape[1], model.data.shape[0]
    if "A_ORDER" in header:
        header["CTYPE1"], header["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    return WCS(header)


def reproject_levels(models) -> np.ndarray:
    """Per-exposure corrections of reproject's ``match_background`` (its own solver, unchanged)."""
    import importlib

    from astropy import units as u
    from reproject import reproject_interp
    from reproject.mosaicking import find_optimal_celestial_wcs, reproject_and_coadd

    inputs = []
    for m in models:
        data = np.array(m.data, dtype=float)
        data[(m.dq & 1) != 0] = np.nan
        inputs.append((data, _fits_wcs(m)))
    scale = float(np.sqrt(abs(np.linalg.det(inputs[0][1].pixel_scale_matrix)))) * 3600.0
    wcs_out, shape_out = find_optimal_celestial_wcs(inputs, resolution=scale * u.arcsec)
    # reproject subtracts its corrections before co-adding and returns none:
    # capture them from its solver (the module reproject_and_coadd uses).
    coadd = importlib.import_module(reproject_and_coadd.__module__)
    found = {}
    solve = coadd.solve_corrections_sgd

    def capture(offset_matrix, *args, **kwargs):
        found["corrections"] = solve(offset_matrix, *args, **kwargs)
        return found["corrections"]

    coadd.solve_corrections_sgd = capture
    try:
        reproject_and_coadd(
            inputs, wcs_out, shape_out=shape_out, reproject_function=reproject_interp, match_background=True
        )
    finally:
        coadd.solve_corrections_sgd = solve
    return np.asarray(found["corrections"], dtype=float)


def run(name: str, spec: dict, binning: int, methods) -> list[dict]:
    """Simulate one scenario and run every method on it."""
    from jwst.skymatch import SkyMatchStep

    from jwst_skymatch_plus import PixelSkyMatchStep
    from jwst_skymatch_plus.steps.level_match import LevelMatchStep

    spec = {k: v for k, v in spec.items() if k != "note"}
    instrument = spec.pop("instrument")
    t0 = time.perf_counter()
    sim = simulate_mosaic(instrument, binning=binning, **spec)
    t_sim = time.perf_counter() - t0
    floor = offset_noise_floor(sim)
    shape = sim.models[0].data.shape
    rows = []
    for method in methods:
        models = [m.copy() for m in sim.models]
        t0 = time.perf_counter()
        if method == "stock":
            levels = recorded_levels(SkyMatchStep.call(models))
        elif method == "pixel_skymatch":
            levels = recorded_levels(PixelSkyMatchStep.call(models))
        elif method == "level_match":
            levels = level_match_totals(LevelMatchStep.call(models))
        else:
            levels = reproject_levels(models)
        elapsed = time.perf_counter() - t0
        rows.append(
            {
                "scenario": name,
                "method": method,
                "n": len(sim.models),
                "shape": shape,
                "rms": offset_rms_error(levels, sim.truth.level),
                "floor": floor,
                "time": elapsed,
                "t_sim": t_sim,
            }
        )
        del models
    return rows


def main(argv=None) -> int:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--binning", type=int, default=1, help="simulated pixels of binning x binning detector pixels"
    )
    parser.add_argument(
        "--sw-binning",
        type=int,
        default=None,
        help="binning of the NIRCam short-wavelength table (default --binning)",
    )
    parser.add_argument("--quick", action="store_true", help="binned by 8 (MIRI) and 16 (NIRCam)")
    parser.add_argument("--only", nargs="*", help="scenario names")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated rows")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    specs = scenarios()
    names = args.only or list(specs)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    size = "quick" if args.quick else f"binning {args.binning}, NIRCam SW {args.sw_binning or args.binning}"
    print(f"# bench_siaf (geometry='siaf', background='jwst'; {size}; detector: simulated array per readout)")
    header = (
        f"| {'scenario':<20} | {'method':<14} | {'n':>3} | {'detector':>9} | {'rms':>9} | {'floor':>8} | "
        f"{'rms/floor':>9} | {'time [s]':>8} |"
    )
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for name in names:
        binning = args.binning
        if specs[name]["instrument"] == "nircam_short" and args.sw_binning:
            binning = args.sw_binning
        if args.quick:
            binning = 8 if specs[name]["instrument"] == "miri" else 16
        for r in run(name, specs[name], binning, methods):
            shape = f"{r['shape'][1]}x{r['shape'][0]}"
            print(
                f"| {name:<20} | {r['method']:<14} | {r['n']:>3} | {shape:>9} | {r['rms']:>9.5f} | "
                f"{r['floor']:>8.5f} | {r['rms'] / r['floor']:>9.2f} | {r['time']:>8.1f} |",
                flush=True,
            )
    print()
    for name in names:
        print(f"  {name}: {specs[name]['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
