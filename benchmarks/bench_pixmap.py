"""Cost and error of evaluating pixel maps on a sparse grid.

Resampling maps every detector pixel onto the matching grid through the
exposure's WCS.  Evaluating the WCS every ``stepsize`` pixels and
interpolating between is what makes this cheap; this script prints, for
full-frame detectors (MIRI imager, and a NIRCam detector with jwst's real
distortion model), the time of the map at several step sizes and its largest
error against the exact map (stepsize 1).

Usage::

    python benchmarks/bench_pixmap.py
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "true")

import numpy as np

from jwst_skymatch_plus.core.grid import SkyGrid
from jwst_skymatch_plus.core.resample import grid_pixmap
from jwst_skymatch_plus.simulate import simulate_mosaic


def main() -> int:
    cases = {
        "MIRI imager 1032x1024 (TAN)": simulate_mosaic(
            "miri", tiles=(1, 1), dithers=1, n_sources=0, n_blobs=2, seed=1
        ),
        "NIRCam NRCA1 2048x2048 (distorted)": simulate_mosaic(
            "nircam_short",
            tiles=(1, 1),
            dithers=1,
            detectors=["NRCA1"],
            distortion=True,
            n_sources=0,
            n_blobs=2,
            seed=1,
        ),
    }
    print("| detector | stepsize | time [s] | speed-up | max error [pixel] |")
    print("|---|---|---|---|---|")
    for label, sim in cases.items():
        model = sim.models[0]
        grid = SkyGrid.for_exposures([model.meta.wcs], [model.data.shape])
        t0 = time.perf_counter()
        exact = grid_pixmap(model.meta.wcs, model.data.shape, grid, stepsize=1)
        t_exact = time.perf_counter() - t0
        print(f"| {label} | 1 | {t_exact:.2f} | 1 | 0 |")
        for step in (4, 16, 64):
            t0 = time.perf_counter()
            sparse = grid_pixmap(model.meta.wcs, model.data.shape, grid, stepsize=step)
            t = time.perf_counter() - t0
            err = float(np.nanmax(np.abs(sparse - exact)))
            print(f"| {label} | {step} | {t:.3f} | {t_exact / t:.0f} | {err:.5f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
