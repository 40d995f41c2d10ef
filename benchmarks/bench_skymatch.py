"""Accuracy and speed of PixelSkyMatchStep against jwst's SkyMatchStep.

Both steps run on the same simulated mosaics, in this process, one after the
other.  For each scenario the table gives the RMS error of the recovered
per-exposure offsets against the simulator's truth (free constant removed),
the noise-limited floor (Cramer-Rao bound for an ideal estimator using every
overlapping pixel), and wall times.

Targets (issue 3/4): error within 3x of the floor (2x for planes) and at most
1/10 of the stock step's, in no more wall time than the stock step.

Usage::

    python benchmarks/bench_skymatch.py            # full-frame MIRI, ~15-30 min
    python benchmarks/bench_skymatch.py --quick    # 256 x 256 detectors, ~2 min
    python benchmarks/bench_skymatch.py --only emission masked
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "true")

import numpy as np

from jwst_skymatch_plus.inputs import each_model
from jwst_skymatch_plus.simulate import (
    background_noise_floor,
    background_rms_error,
    offset_noise_floor,
    offset_rms_error,
    simulate_mosaic,
)


def scenarios(quick: bool) -> dict[str, dict]:
    miri = None if not quick else (256, 256)
    nircam = (1024, 1024) if not quick else (256, 256)
    base = {"instrument": "miri", "shape": miri, "tiles": (3, 2), "dithers": 4, "seed": 1}
    return {
        "emission": {
            **base,
            "emission": 50.0,
            "exposure_offset_sigma": 0.0,
            "note": "extended emission 100x the offsets",
        },
        "masked": {
            **base,
            "masked_region_probability": 0.8,
            "masked_region_radius": 0.25,
            "seed": 2,
            "note": "large masked discs differing between exposures",
        },
        "small_overlap": {**base, "tile_overlap": 0.06, "seed": 3, "note": "6% overlap between tiles"},
        "drifts": {**base, "exposure_offset_sigma": 0.15, "seed": 4, "note": "offsets differ inside visits"},
        "sky_plane": {
            **base,
            "sky_gradient": 3.0,
            "seed": 5,
            "note": "a gradient in the sky itself (3 units per 100 arcsec), level fit",
        },
        "many": {**base, "tiles": (5, 4) if not quick else (4, 3), "seed": 6, "note": "many exposures"},
        "planes": {
            **base,
            "gradient_sigma": 1.0,
            "exposure_offset_sigma": 0.0,
            "seed": 7,
            "fit": {"fit_type": "level+slope"},
            "metric": "plane",
            "note": "sky gradients, level+slope fit (plane metric)",
        },
        "nircam_short": {
            "instrument": "nircam_short",
            "shape": nircam,
            "tiles": (2, 1),
            "dithers": 4,
            "detectors": ["NRCA1", "NRCA2", "NRCA3", "NRCA4"],
            "n_sources": 400,
            "seed": 8,
            "note": "NIRCam SW, 4 chips x 4 dithers x 2 tiles",
        },
        "miri_lyot": {**base, "lyot_offset_sigma": 1.0, "seed": 9, "note": "Lyot region with its own offset"},
    }


def levels_and_planes(library):
    levels, planes = [], []
    for _, m in each_model(library):
        level = m.meta.background.level
        rec = m.meta.instance.get("skymatch_plus", {}).get("pixel_skymatch")
        level = np.nan if level is None else float(level)
        levels.append(level)
        if rec:
            planes.append((rec["plane_level"], rec["plane_slope_x"], rec["plane_slope_y"]))
        else:
            planes.append((level, 0.0, 0.0))
    return np.array(levels), planes


def run(name: str, spec: dict) -> dict:
    from jwst.skymatch import SkyMatchStep

    from jwst_skymatch_plus import PixelSkyMatchStep

    spec = dict(spec)
    fit = spec.pop("fit", {})
    metric = spec.pop("metric", "level")
    spec.pop("note")
    instrument = spec.pop("instrument")
    t0 = time.perf_counter()
    sim = simulate_mosaic(instrument, **spec)
    t_sim = time.perf_counter() - t0
    if metric == "plane":
        floor = background_noise_floor(sim, "level+slope")
    else:
        floor = offset_noise_floor(sim)
    out = {"n": len(sim.models), "floor": floor, "t_sim": t_sim}
    for label, cls, kwargs in (
        ("stock", SkyMatchStep, {"skymethod": "match"}),
        ("ours", PixelSkyMatchStep, fit),
    ):
        models = [m.copy() for m in sim.models]
        t0 = time.perf_counter()
        library = cls.call(models, **kwargs)
        out[f"t_{label}"] = time.perf_counter() - t0
        levels, planes = levels_and_planes(library)
        if metric == "plane":
            out[f"err_{label}"] = background_rms_error(sim, planes, "level+slope")
        else:
            out[f"err_{label}"] = offset_rms_error(levels, sim.truth.level)
        del library, models
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small detectors")
    parser.add_argument("--only", nargs="*", help="scenario names")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the steps' INFO/WARNING chatter would drown the table
    specs = scenarios(args.quick)
    names = args.only or list(specs)
    print(
        f"# bench_skymatch ({'quick: 256x256 detectors' if args.quick else 'full-frame MIRI, NIRCam SW at 1024^2'})"
    )
    header = (
        f"| {'scenario':<14} | {'n':>3} | {'stock rms':>9} | {'ours rms':>9} | {'floor':>8} | "
        f"{'ours/floor':>10} | {'ours/stock':>10} | {'t stock [s]':>11} | {'t ours [s]':>10} | {'t ratio':>7} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    worst = {"floor": 0.0, "stock": 0.0, "time": 0.0}
    for name in names:
        r = run(name, specs[name])
        floor_ratio = r["err_ours"] / r["floor"]
        stock_ratio = r["err_ours"] / r["err_stock"]
        t_ratio = r["t_ours"] / r["t_stock"]
        worst["floor"] = max(worst["floor"], floor_ratio)
        worst["stock"] = max(worst["stock"], stock_ratio)
        worst["time"] = max(worst["time"], t_ratio)
        print(
            f"| {name:<14} | {r['n']:>3} | {r['err_stock']:>9.4f} | {r['err_ours']:>9.5f} | {r['floor']:>8.5f} | "
            f"{floor_ratio:>10.2f} | {stock_ratio:>10.4f} | {r['t_stock']:>11.1f} | {r['t_ours']:>10.1f} | "
            f"{t_ratio:>7.2f} |",
            flush=True,
        )
    print(
        f"\nworst: ours/floor {worst['floor']:.2f}, ours/stock {worst['stock']:.4f}, time ratio {worst['time']:.2f}"
    )
    for name in names:
        print(f"  {name}: {specs[name]['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
