"""LevelMatchStep against PixelSkyMatchStep and jwst's SkyMatchStep on the same mosaics.

For each scenario the steps run on copies of the same simulated exposures,
in this process, one after the other: SkyMatchStep ('match'),
PixelSkyMatchStep with its defaults (visits as groups) and with every
exposure its own group (``pixel_exp``, the yardstick of the global
solution), and LevelMatchStep.  The error is the RMS of the total
per-exposure background removed (LevelMatchStep: the sum of its stages'
corrections, the Lyot stage excluded) against the simulator's truth, free
constant removed, in units of the noise floor.

Two scenarios have sparse dither overlaps: ``sparse_dithers`` (the last
dither of every tile jumps onto the neighbouring tile and shares no pixel
with its tile-mates) and ``wide_dithers`` (box dithers 0.9 detector apart:
each tile falls into two pairs tied by 10 % strips).

Usage::

    python benchmarks/bench_level_match.py            # full-frame MIRI
    python benchmarks/bench_level_match.py --quick    # 256 x 256 detectors
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "true")


from jwst_skymatch_plus.simulate import (
    isolated_dither_pattern,
    level_match_totals,
    offset_noise_floor,
    offset_rms_error,
    recorded_levels,
    simulate_mosaic,
)


def scenarios(quick: bool) -> dict[str, dict]:
    shape = (256, 256) if quick else None
    base = {"shape": shape, "tiles": (3, 2), "dithers": 4, "visit_offset_sigma": 0.5}
    return {
        "visit_offsets": {**base, "exposure_offset_sigma": 0.0, "seed": 1},
        "dither_drifts": {**base, "exposure_offset_sigma": 0.2, "seed": 2},
        "drifts+lyot": {**base, "exposure_offset_sigma": 0.2, "lyot_offset_sigma": 0.5, "seed": 3},
        "sparse_dithers": {
            **base,
            "exposure_offset_sigma": 0.2,
            "dither_pattern": isolated_dither_pattern(base["tiles"], base["dithers"]),
            "seed": 4,
        },
        "wide_dithers": {**base, "exposure_offset_sigma": 0.2, "dither_size": 0.9, "seed": 5},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 x 256 detectors")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)

    from jwst.skymatch import SkyMatchStep

    from jwst_skymatch_plus import LevelMatchStep, PixelSkyMatchStep

    methods = (
        ("stock", SkyMatchStep, {"skymethod": "match"}, recorded_levels),
        ("pixel", PixelSkyMatchStep, {}, recorded_levels),
        ("pixel_exp", PixelSkyMatchStep, {"grouping": "exposure"}, recorded_levels),
        ("level_match", LevelMatchStep, {}, level_match_totals),
    )
    print(f"# bench_level_match ({'256x256' if args.quick else 'full-frame'} MIRI)")
    print(
        "| scenario | n | floor | "
        + " | ".join(f"{m[0]}/floor | t {m[0]} [s]" for m in methods)
        + " | level_match/pixel_exp |"
    )
    print("|---" * (4 + 2 * len(methods)) + "|")
    for name, spec in scenarios(args.quick).items():
        sim = simulate_mosaic("miri", **spec)
        floor = offset_noise_floor(sim)
        cells, errors = [], {}
        for label, cls, kwargs, read in methods:
            models = [m.copy() for m in sim.models]
            t0 = time.perf_counter()
            library = cls.call(models, **kwargs)
            wall = time.perf_counter() - t0
            err = offset_rms_error(read(library), sim.truth.level)
            errors[label] = err
            cells.append(f"{err / floor:.2f} | {wall:.1f}")
            del library, models
        ratio = errors["level_match"] / errors["pixel_exp"]
        print(
            f"| {name} | {len(sim.models)} | {floor:.5f} | " + " | ".join(cells) + f" | {ratio:.2f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
