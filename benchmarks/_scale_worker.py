"""One timed sky-matching run for bench_scale.py (run in a fresh process).

Prints one JSON line: wall time of the matching itself and the RMS error of
the recovered per-exposure offsets against the truth (the parent samples
memory).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "true")
warnings.simplefilter("ignore")

import numpy as np

from jwst_skymatch_plus.inputs import borrowed, each_model
from jwst_skymatch_plus.simulate import offset_rms_error


def levels_of(library) -> dict[str, float]:
    out = {}
    for _, m in each_model(library):
        level = m.meta.background.level
        out[m.meta.filename] = np.nan if level is None else float(level)
    return out


def naive(asn: str) -> dict[str, float]:
    """Group images on full-mosaic arrays, all in memory (the baseline)."""
    from jwst.datamodels import ModelLibrary

    from jwst_skymatch_plus.core.grid import BBox, SkyGrid
    from jwst_skymatch_plus.core.grouping import group_exposures
    from jwst_skymatch_plus.core.resample import resample_to_grid, weighted_coadd

    library = ModelLibrary(asn, on_disk=True)
    with library:
        metas = [dict(library.read_metadata(i)) for i in range(len(library))]
        wcs, shapes, names = [], [], []
        for _, m in each_model(library):
            wcs.append(m.meta.wcs)
            shapes.append(m.data.shape)
            names.append(m.meta.filename)
        grid = SkyGrid.for_exposures(wcs, shapes)
        full = BBox(0, grid.shape[1], 0, grid.shape[0])
        groups = group_exposures(metas, "visit")
        images = []

        def resampled(members):
            for k in members:
                with borrowed(library, k) as m:
                    good = np.isfinite(m.data) & ((m.dq & 1) == 0)
                    r = resample_to_grid(m.data, good, m.meta.wcs, grid, full)
                yield r

        for members in groups:
            # Full-mosaic float32 sums, as a simple implementation would hold them.
            mean = weighted_coadd(resampled(members), full, accumulate=np.float32)
            images.append((mean.image, mean.valid))
    return _solve_full_arrays(images, groups, names)


def naive_jwst(asn: str) -> dict[str, float]:
    """The earlier tool's approach: jwst's own resampling of each group onto the full mosaic.

    Every group goes through jwst's ``ResampleImage`` onto the mosaic grid
    that calwebb_image3 would use (no context or variance arrays, as outlier
    detection resamples), then pairs are differenced over whole arrays.
    """
    from jwst.datamodels import ModelLibrary
    from jwst.resample.resample import ResampleImage
    from jwst.resample.resample_utils import resampled_wcs_from_models

    from jwst_skymatch_plus.core.grouping import group_exposures

    library = ModelLibrary(asn, on_disk=True)
    wcs = resampled_wcs_from_models(library)[0]  # opens the library itself
    with library:
        metas = [dict(library.read_metadata(i)) for i in range(len(library))]
        groups = group_exposures(metas, "visit")
        images, names = [], [None] * len(library)
        for members in groups:
            models = []
            for k in members:
                with borrowed(library, k) as m:
                    names[k] = m.meta.filename
                    models.append(m.copy())
            result = ResampleImage(
                ModelLibrary(models, on_disk=False),
                output_wcs={"wcs": wcs, "pixel_scale": None},
                enable_ctx=False,
                enable_var=False,
                compute_err=None,
                blendheaders=False,
            ).resample_many_to_one()
            images.append((result.data, result.wht > 0))
            del models, result
    return _solve_full_arrays(images, groups, names)


def _solve_full_arrays(images, groups, names) -> dict[str, float]:
    """Median of every pair's full-array difference, then one least-squares solution."""
    from jwst_skymatch_plus.core.solve import apply_match_down, solve_levels

    ii, jj, dd, ss = [], [], [], []
    for a in range(len(images)):
        for b in range(a + 1, len(images)):
            valid = images[a][1] & images[b][1]
            n = int(valid.sum())
            if n < 100:
                continue
            d = images[a][0][valid] - images[b][0][valid]
            d = d[np.isfinite(d)]
            ii.append(a)
            jj.append(b)
            dd.append(float(np.median(d)))
            ss.append(float(1.2533 * np.std(d) / np.sqrt(n)))
    sol = solve_levels(len(groups), ii, jj, dd, ss, robust=False)
    group_levels = apply_match_down(sol.levels[:, 0], sol.component)
    out = {}
    for g, members in enumerate(groups):
        for k in members:
            out[names[k]] = float(group_levels[g])
    return out


def main() -> int:
    method, asn, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    logging.disable(logging.WARNING)
    truth = np.load(Path(asn).parent / "truth.npz")
    # Import everything before timing: start-up is not what we compare.
    from jwst.skymatch import SkyMatchStep

    from jwst_skymatch_plus import PixelSkyMatchStep

    cluster = None
    if method == "ours-dask":
        # An existing cluster, as a user would have: start-up is not timed.
        from distributed import LocalCluster

        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        if os.environ.get("BENCH_DASK_COLD") != "1":
            # Workers of a cluster that has run the step before have imported
            # the package (about 2 s per fresh worker process).
            import importlib

            from distributed import Client

            with Client(cluster) as client:
                client.run(importlib.import_module, "jwst_skymatch_plus.steps._library")
    # The clock times the run; reading the levels back (which opens every
    # model of an on-disk result) is not part of it, in any mode.
    t0 = time.perf_counter()
    if method == "stock":
        result = SkyMatchStep.call(asn, skymethod="match")
    elif method == "ours":
        result = PixelSkyMatchStep.call(asn, n_workers=workers)
    elif method == "ours-default":
        result = PixelSkyMatchStep.call(asn)
    elif method == "ours-disk":
        result = PixelSkyMatchStep.call(asn, in_memory=False, n_workers=workers)
    elif method == "ours-dask":
        result = PixelSkyMatchStep.call(asn, scheduler=cluster.scheduler_address)
    elif method == "naive":
        result = naive(asn)
    elif method == "naive-jwst":
        result = naive_jwst(asn)
    else:
        raise SystemExit(f"unknown method {method}")
    wall = time.perf_counter() - t0
    levels = result if isinstance(result, dict) else levels_of(result)
    if cluster is not None:
        cluster.close()
    rec = np.array([levels.get(str(f), np.nan) for f in truth["files"]])
    print(json.dumps({"wall": wall, "rms": offset_rms_error(rec, truth["level"]), "levels": rec.tolist()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
