"""PixelSkyMatchStep and LevelMatchStep against other background-matching tools.

Every method runs on the same simulated MIRI mosaics (256 x 256 detectors),
in this process, one after the other, and gives one additive offset per
exposure; the error is the RMS of those offsets against the simulator's
truth (free constant removed, :func:`~jwst_skymatch_plus.simulate.offset_rms_error`),
in units of the noise floor (:func:`~jwst_skymatch_plus.simulate.offset_noise_floor`:
what an ideal estimator using every overlapping pixel could reach), averaged
over the seeds of each layout (:data:`SEEDS`: more where the best methods
are close).  On layouts whose exposures have background
planes (``combined``) the error and the floor remove a common sky plane
instead of the constant alone
(:func:`~jwst_skymatch_plus.simulate.offset_plane_free_error`): the mean
slope of the exposures' planes is indistinguishable from a slope of the sky,
no method can find it, and the plain constant-removed error on those
layouts measures mostly the slope the simulation drew.  Wall times and their ratio to jwst's
``SkyMatchStep`` come from the same run.

Methods
-------
stock
    jwst's ``SkyMatchStep(skymethod='match')``.
pixel, pixel exposure, pixel plane
    ``PixelSkyMatchStep`` with its defaults, with ``grouping='exposure'`` and
    with ``fit_type='level+slope'`` (the plane's value at the detector centre).
level_match
    ``LevelMatchStep`` with its defaults (sum of its stages' levels).
montage level, montage plane
    Montage (``MontagePy``) background rectification as its documentation
    runs it: ``mImgtbl``, ``mMakeHdr``, ``mProjExec``, ``mImgtbl``,
    ``mOverlaps``, ``mDiffExec``, ``mFitExec`` and ``mBgModel``, with the
    level-only switches (``levelOnly``/``noslope``) or with planes; an
    exposure's offset is its correction evaluated at its detector centre
    (Montage's planes are ``A x + B y + C`` with ``x, y`` measured from the
    projected image's ``CRPIX``; the corrections table is keyed by the
    projected-image table's ``cntr``).
reproject
    ``reproject.mosaicking.reproject_and_coadd(..., match_background=True)``
    on ``find_optimal_celestial_wcs``'s frame (bilinear interpolation); the
    per-exposure corrections are those it subtracts (median of each
    overlap's differences, solved by stochastic gradient descent).
pjpipe
    PJPipe's ``LevelMatchStep`` (package ``pjpipe``) with its defaults on cal
    files in a temporary directory; an exposure's offset is the constant its
    output differs from its input by.  PJPipe's package ``__init__`` imports
    every PJPipe step, whose dependencies (``spacepylot``, which is not on
    the package index, ``image_registration``, ``stwcs``, ``stpsf`` ...) the
    level matcher does not use, and writes a log file into the current
    directory: the benchmark loads ``pjpipe.level_match`` without running it
    (``pip install --no-deps pjpipe threadpoolctl`` is enough).  Its
    diagnostic plots (two PNG and two PDF files per overlapping pair) are
    switched off, which only saves time.

The files written for Montage, reproject and PJPipe carry NaN where the DQ
array says DO_NOT_USE, as jwst's cal files do (these tools read no DQ flags,
or not all of them), and in the MIRI Lyot coronagraph box, which our steps
leave out by default (``exclude_lyot=True``: real MIRI data have a background
of their own there) and the noise floor leaves out too: the simulator gives
the box the same sky as the rest of the detector, so a tool reading it would
otherwise get some 20 % more overlap than the others; writing them is not
timed.  Montage and PJPipe run
offline.

Layouts (2 x 2 tiles of 4 dithers unless said otherwise)
--------------------------------------------------------
combined
    Bright extended emission (50), large masked discs in half the
    exposures, a sky gradient common to all exposures and small per-visit
    background gradients (planes the level methods cannot remove), 10 %
    tile overlap.
thin strips
    3 x 3 tiles overlapping by 3 % of the field (strips a few pixels wide).
in-visit offsets
    Offsets drifting by 0.1 from exposure to exposure inside each visit.
sparse dithers
    Dithers a whole detector apart: no exposure overlaps another of its own
    visit; only other tiles tie it to the mosaic.

Usage::

    python benchmarks/bench_peers.py            # SEEDS per layout (3 to 12), ~30 min on 2 shared cores
    python benchmarks/bench_peers.py --quick    # 1 seed per layout (3 x 2 thin strips), ~4 min
    python benchmarks/bench_peers.py --seeds 3  # the same number of seeds for every layout
    python benchmarks/bench_peers.py --only "sparse dithers" --methods pixel pjpipe

Needs ``pip install montagepy reproject`` and ``pip install --no-deps pjpipe
threadpoolctl``; a method whose package is missing is reported and skipped.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import logging
import os
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "true")
os.environ.setdefault("TQDM_DISABLE", "1")  # PJPipe's progress bars

import numpy as np

from jwst_skymatch_plus.core.keys import lyot_region
from jwst_skymatch_plus.simulate import (
    level_match_totals,
    offset_noise_floor,
    offset_plane_free_error,
    offset_rms_error,
    recorded_levels,
    simulate_mosaic,
)

DO_NOT_USE = 1


# --------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------
#: Seeds per layout in a full run.  The errors of noise-limited methods
#: scatter by 20-40 % from one simulation to the next, so the layouts where
#: the best methods are within some 20 % of each other get more seeds: over
#: 3 seeds of 'sparse dithers' PixelSkyMatchStep was behind Montage's
#: level-only fit (1.41 vs 1.29), over 12 ahead of it (1.17 vs 1.34).
SEEDS = {"combined": 6, "thin strips": 3, "in-visit offsets": 3, "sparse dithers": 12}


def layouts(quick: bool) -> dict[str, dict]:
    """Simulation parameters of each layout (``seed`` is added per run)."""
    base = {"shape": (256, 256), "tiles": (2, 2), "dithers": 4}
    return {
        "combined": {
            **base,
            "emission": 50.0,
            "masked_region_probability": 0.5,
            "masked_region_radius": 0.2,
            "sky_gradient": 3.0,
            "gradient_sigma": 0.01,
            "tile_overlap": 0.1,
        },
        "thin strips": {**base, "tiles": (3, 3) if not quick else (3, 2), "tile_overlap": 0.03},
        "in-visit offsets": {**base, "exposure_offset_sigma": 0.1},
        "sparse dithers": {**base, "dither_size": 1.05, "tile_overlap": 0.1},
    }


# --------------------------------------------------------------------------
# Our steps and the stock step
# --------------------------------------------------------------------------
def _step_runner(step_path: str, kwargs: dict, read):
    def run(sim, workdir: Path) -> tuple[np.ndarray, float]:
        module, name = step_path.rsplit(".", 1)
        cls = getattr(__import__(module, fromlist=[name]), name)
        models = [m.copy() for m in sim.models]
        t0 = time.perf_counter()
        library = cls.call(models, **kwargs)
        wall = time.perf_counter() - t0
        return read(library), wall

    return run


# --------------------------------------------------------------------------
# Plain FITS images for the other tools
# --------------------------------------------------------------------------
def _fits_wcs_header(model):
    """FITS WCS of an exposure, from the keywords its SCI header would carry."""
    from astropy.wcs import WCS

    wi = model.meta.wcsinfo
    w = WCS(naxis=2)
    w.wcs.ctype = [wi.ctype1, wi.ctype2]
    w.wcs.crpix = [wi.crpix1, wi.crpix2]
    w.wcs.crval = [wi.crval1, wi.crval2]
    w.wcs.cdelt = [wi.cdelt1, wi.cdelt2]
    w.wcs.pc = [[wi.pc1_1, wi.pc1_2], [wi.pc2_1, wi.pc2_2]]
    w.wcs.cunit = ["deg", "deg"]
    return w


def _nan_masked(model) -> np.ndarray:
    """Data with NaN where DO_NOT_USE and in the MIRI Lyot box (as our steps leave it out)."""
    data = np.array(model.data, dtype=np.float32)
    data[(model.dq & DO_NOT_USE) != 0] = np.nan
    region = lyot_region(model, data.shape)  # None for anything but the MIRI imager
    if region is not None:
        data[region] = np.nan
    return data


def _sky_plane(spec: dict) -> bool:
    """The layout's exposures have background planes: errors are measured modulo a sky plane."""
    return bool(spec.get("gradient_sigma") or spec.get("exposure_gradient_sigma"))


def _centre_world(model) -> tuple[float, float]:
    ny, nx = model.data.shape
    ra, dec = model.meta.wcs((nx - 1) / 2.0, (ny - 1) / 2.0)
    return float(ra), float(dec)


# --------------------------------------------------------------------------
# Montage
# --------------------------------------------------------------------------
def _montage_runner(level_only: bool):
    def run(sim, workdir: Path) -> tuple[np.ndarray, float]:
        from astropy.io import fits
        from astropy.io.ascii import read as read_table
        from astropy.wcs import WCS
        from MontagePy.main import (
            mBgModel,
            mDiffExec,
            mFitExec,
            mImgtbl,
            mMakeHdr,
            mOverlaps,
            mProjExec,
        )

        raw, proj, diff = (workdir / d for d in ("raw", "proj", "diff"))
        for d in (raw, proj, diff):
            d.mkdir()
        names = []
        for k, m in enumerate(sim.models):
            name = f"exp{k:03d}.fits"
            fits.PrimaryHDU(_nan_masked(m), header=_fits_wcs_header(m).to_header()).writeto(raw / name)
            names.append(name)

        def check(result, what):
            if str(result.get("status", 1)) != "0":
                raise RuntimeError(f"Montage {what} failed: {result}")
            return result

        w = str(workdir)
        t0 = time.perf_counter()
        check(mImgtbl(str(raw), f"{w}/raw.tbl"), "mImgtbl")
        check(mMakeHdr(f"{w}/raw.tbl", f"{w}/template.hdr"), "mMakeHdr")
        check(mProjExec(str(raw), f"{w}/raw.tbl", f"{w}/template.hdr", projdir=str(proj)), "mProjExec")
        check(mImgtbl(str(proj), f"{w}/proj.tbl"), "mImgtbl")
        check(mOverlaps(f"{w}/proj.tbl", f"{w}/diffs.tbl"), "mOverlaps")
        check(mDiffExec(str(proj), f"{w}/diffs.tbl", f"{w}/template.hdr", str(diff)), "mDiffExec")
        check(mFitExec(f"{w}/diffs.tbl", f"{w}/fits.tbl", str(diff), levelOnly=level_only), "mFitExec")
        check(mBgModel(f"{w}/proj.tbl", f"{w}/fits.tbl", f"{w}/corr.tbl", noslope=level_only), "mBgModel")
        wall = time.perf_counter() - t0

        projected = read_table(f"{w}/proj.tbl", format="ipac")
        corrections = read_table(f"{w}/corr.tbl", format="ipac")
        plane = {int(r["id"]): (float(r["a"]), float(r["b"]), float(r["c"])) for r in corrections}
        levels = np.full(len(names), np.nan)
        for row in projected:
            fname = Path(str(row["fname"])).name
            k = names.index(fname.removeprefix("hdu0_"))  # mProjExec names its outputs hdu<N>_<input>
            if int(row["cntr"]) not in plane:
                continue  # no correction: left NaN (counted as missing)
            a, b, c = plane[int(row["cntr"])]
            header = fits.getheader(proj / fname)
            px, py = WCS(header).all_world2pix(*_centre_world(sim.models[k]), 0)
            levels[k] = a * (px - header["CRPIX1"]) + b * (py - header["CRPIX2"]) + c
        return levels, wall

    return run


# --------------------------------------------------------------------------
# reproject
# --------------------------------------------------------------------------
def _reproject_runner(sim, workdir: Path) -> tuple[np.ndarray, float]:
    import reproject.mosaicking._coadd as coadd
    from reproject import reproject_interp
    from reproject.mosaicking import find_optimal_celestial_wcs, reproject_and_coadd

    inputs = [(_nan_masked(m), _fits_wcs_header(m)) for m in sim.models]
    captured = []
    solve = coadd.solve_corrections_sgd

    def capture(offset_matrix, *args, **kwargs):
        out = solve(offset_matrix, *args, **kwargs)
        captured.append(np.array(out))
        return out

    np.random.seed(0)  # noqa: NPY002 (its solver shuffles with the legacy global generator)
    coadd.solve_corrections_sgd = capture
    try:
        t0 = time.perf_counter()
        wcs_out, shape_out = find_optimal_celestial_wcs(inputs)
        reproject_and_coadd(
            inputs, wcs_out, shape_out=shape_out, reproject_function=reproject_interp, match_background=True
        )
        wall = time.perf_counter() - t0
    finally:
        coadd.solve_corrections_sgd = solve
    (levels,) = captured
    if levels.size != len(inputs):
        raise RuntimeError(f"reproject returned {levels.size} corrections for {len(inputs)} exposures")
    return levels, wall


# --------------------------------------------------------------------------
# PJPipe
# --------------------------------------------------------------------------
def _pjpipe_level_match_class():
    """PJPipe's LevelMatchStep, loaded without PJPipe's package ``__init__``."""
    if "pjpipe" not in sys.modules:
        spec = importlib.util.find_spec("pjpipe")
        if spec is None:
            raise ImportError("pjpipe is not installed (pip install --no-deps pjpipe threadpoolctl)")
        package = types.ModuleType("pjpipe")
        package.__path__ = list(spec.submodule_search_locations)
        package.__version__ = importlib.metadata.version("pjpipe")
        sys.modules["pjpipe"] = package
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pjpipe.level_match.level_match_step import LevelMatchStep

    # No diagnostic plots: without a plot name it draws none.  Set on the
    # class (not a subclass or the instance) so that its process pool can
    # still pickle the step.
    LevelMatchStep.get_plot_name = _no_plot_name
    return LevelMatchStep


def _no_plot_name(self, files1, files2):
    return None


def _pjpipe_runner(sim, workdir: Path) -> tuple[np.ndarray, float]:
    from stdatamodels.jwst import datamodels

    step_class = _pjpipe_level_match_class()
    in_dir, out_dir = workdir / "in", workdir / "out"
    in_dir.mkdir()
    names = []
    for m in sim.models:
        copy = m.copy()
        copy.data = _nan_masked(m)
        copy.save(in_dir / m.meta.filename)
        names.append(m.meta.filename)
    np.random.seed(0)  # noqa: NPY002 (its solver draws from the legacy global generator)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        step = step_class(
            in_dir=str(in_dir),
            out_dir=str(out_dir),
            step_ext="cal",
            procs=1,
            band=sim.models[0].meta.instrument.filter,
        )
        ok = step.do_step()
    wall = time.perf_counter() - t0
    if not ok:
        raise RuntimeError("PJPipe's level matching reported failure")
    levels = np.full(len(names), np.nan)
    for k, name in enumerate(names):
        with datamodels.open(in_dir / name) as before, datamodels.open(out_dir / name) as after:
            change = np.asarray(before.data, float) - np.asarray(after.data, float)
            usable = np.isfinite(change) & (before.data != 0)
            levels[k] = np.median(change[usable])
    return levels, wall


# --------------------------------------------------------------------------
METHODS = {
    "stock": _step_runner("jwst.skymatch.SkyMatchStep", {"skymethod": "match"}, recorded_levels),
    "pixel": _step_runner("jwst_skymatch_plus.PixelSkyMatchStep", {}, recorded_levels),
    "pixel exposure": _step_runner(
        "jwst_skymatch_plus.PixelSkyMatchStep", {"grouping": "exposure"}, recorded_levels
    ),
    "pixel plane": _step_runner(
        "jwst_skymatch_plus.PixelSkyMatchStep", {"fit_type": "level+slope"}, recorded_levels
    ),
    "level_match": _step_runner("jwst_skymatch_plus.LevelMatchStep", {}, level_match_totals),
    "montage level": _montage_runner(level_only=True),
    "montage plane": _montage_runner(level_only=False),
    "reproject": _reproject_runner,
    "pjpipe": _pjpipe_runner,
}

LABELS = {
    "stock": "SkyMatchStep (jwst, match)",
    "pixel": "PixelSkyMatchStep defaults",
    "pixel exposure": "PixelSkyMatchStep grouping='exposure'",
    "pixel plane": "PixelSkyMatchStep fit_type='level+slope'",
    "level_match": "LevelMatchStep defaults",
    "montage level": "Montage level-only",
    "montage plane": "Montage plane",
    "reproject": "reproject match_background",
    "pjpipe": "PJPipe LevelMatchStep",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed per layout, 3 x 2 thin strips")
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds for every layout (default: SEEDS per layout; quick 1)"
    )
    parser.add_argument("--only", nargs="*", help="layout names")
    parser.add_argument("--methods", nargs="*", help="method names", choices=list(METHODS))
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the steps' INFO/WARNING chatter would drown the tables
    warnings.simplefilter("ignore")
    specs = layouts(args.quick)
    names = args.only or list(specs)
    unknown = sorted(set(names) - set(specs))
    if unknown:
        parser.error(
            f"unknown layout(s) {', '.join(map(repr, unknown))}; choose from {', '.join(map(repr, specs))}"
        )
    seeds = {n: args.seeds or (1 if args.quick else SEEDS[n]) for n in names}
    methods = args.methods or list(METHODS)
    if "stock" not in methods:
        methods = ["stock", *methods]  # the ratios need it

    # results[layout][method][seed] -> (err/floor, err, wall)
    results: dict[str, dict[str, dict[int, tuple]]] = {name: {m: {} for m in methods} for name in names}
    missing = {m: 0 for m in methods}
    failures: dict[str, list[str]] = {m: [] for m in methods}
    t_start = time.perf_counter()
    counts = ", ".join(f"{n} {seeds[n]}" for n in names)
    print(f"# bench_peers ({'quick' if args.quick else 'full'}; seeds per layout: {counts}; 256x256 MIRI)")
    print("\nPer run: error / noise floor (wall time in s)", end="")
    planar = [n for n in names if _sky_plane(specs[n])]
    print(f"; {', '.join(planar)}: common sky plane removed from both\n" if planar else "\n")
    print("| layout | seed | n | floor | " + " | ".join(methods) + " |")
    print("|---" * (4 + len(methods)) + "|")
    for name in names:
        for seed in range(1, seeds[name] + 1):
            sim = simulate_mosaic("miri", seed=seed, **specs[name])
            sky_plane = _sky_plane(specs[name])
            floor = offset_noise_floor(sim, sky_plane=sky_plane)
            cells = []
            for method in methods:
                with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
                    try:
                        levels, wall = METHODS[method](sim, Path(tmp))
                    except Exception as exc:  # a method that fails is reported, not fatal
                        failures[method].append(f"{name} seed {seed}: {type(exc).__name__}: {exc}")
                        cells.append("failed")
                        continue
                missing[method] += int(np.sum(~np.isfinite(levels)))
                if sky_plane:
                    err = offset_plane_free_error(sim, levels)
                else:
                    err = offset_rms_error(levels, sim.truth.level)
                results[name][method][seed] = (err / floor, err, wall)
                cells.append(f"{err / floor:.2f} ({wall:.1f})")
            print(
                f"| {name} | {seed} | {len(sim.models)} | {floor:.5f} | " + " | ".join(cells) + " |",
                flush=True,
            )

    print(
        "\nSummary: mean error / noise floor per layout over its seeds (and their number); error and time"
        " relative to the stock"
    )
    print("step (geometric mean over all runs of the per-run ratios).\n")
    header = (
        f"| {'method':<41} | "
        + " | ".join(f"{f'{n} ({seeds[n]})':>16}" for n in names)
        + f" | {'err/stock':>9} | {'t [s]':>6} | {'t/stock':>7} |"
    )
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")

    def gmean(values):
        return float(np.exp(np.mean(np.log(values)))) if values else float("nan")

    for method in methods:
        per_layout, err_ratio, t_ratio, walls = [], [], [], []
        for name in names:
            runs = results[name][method]
            mean = f"{np.mean([r[0] for r in runs.values()]):.2f}" if runs else "failed"
            if runs and len(runs) < seeds[name]:
                mean += f" ({len(runs)}/{seeds[name]} ran)"
            per_layout.append(f"{mean:>16}")
            for seed, r in runs.items():
                walls.append(r[2])
                stock = results[name]["stock"].get(seed)
                if stock:
                    err_ratio.append(r[1] / stock[1])
                    t_ratio.append(r[2] / stock[2])
        print(
            f"| {LABELS[method]:<41} | "
            + " | ".join(per_layout)
            + f" | {gmean(err_ratio):>9.2g} | {np.mean(walls) if walls else float('nan'):>6.1f} |"
            f" {gmean(t_ratio):>7.2f} |"
        )
    for method, count in missing.items():
        if count:
            print(f"\n{LABELS[method]}: {count} exposure offset(s) not returned (left out of its error)")
    for method, why in failures.items():
        for line in why:
            print(f"\n{LABELS[method]} failed on {line}")
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
