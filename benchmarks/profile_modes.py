"""Where the wall time of PixelSkyMatchStep goes, in each execution mode.

Runs the step on one simulated association (48 MIRI exposures of 512 x 512
pixels by default, written once to ``--workdir``) in a fresh process per
mode, under cProfile, and splits the main process's wall time into stages:

``metadata``   opening the association and reading every member's header
``read``       loading pixels and WCS in the main process
``resample``   resampling in the main process (serial runs)
``pairs``      pair statistics in the main process (serial runs)
``waiting``    the main process waiting for worker results (parallel runs;
               the workers resample, measure and read files meanwhile)
``write``      writing levels into the models (and on-disk saves)
``finalize``   stpipe's closing pass over the library (on-disk saves)
``other``      everything else (grid, solve, reports, imports)

Usage::

    python benchmarks/profile_modes.py            # all modes
    python benchmarks/profile_modes.py --modes serial workers-2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "true")

MODES = {
    "serial": {"n_workers": 1},
    "workers-2": {"n_workers": 2},
    "disk": {"in_memory": False, "n_workers": 1},
    "disk+workers-2": {"in_memory": False, "n_workers": 2},
}

#: Stage -> functions whose cumulative time (main process) it is.
STAGES = {
    "metadata": ["open_library_with_metadata"],
    "read": ["load", "__call__"],
    "resample": ["build_unit"],
    "pairs": ["measure_pair"],
    "waiting": ["result"],
    "write": ["_write"],
    "finalize": ["finalize_result"],
}


def simulate(workdir: Path, n_tiles: tuple[int, int], shape: int) -> Path:
    from jwst_skymatch_plus.simulate import simulate_mosaic, write_association

    asn = workdir / "profile_asn.json"
    if not asn.exists():
        sim = simulate_mosaic(
            "miri",
            shape=(shape, shape),
            tiles=n_tiles,
            dithers=2,
            exposure_offset_sigma=0.05,
            n_blobs=400,
            n_sources=800,
            out_dir=workdir,
            minimal_arrays=True,
            seed=48,
        )
        write_association(sim.filenames, workdir, "profile")
    return asn


def profile_one(asn: str, mode: str) -> dict:
    """Run in a child process: stage times of the main process, in seconds."""
    import cProfile
    import logging
    import pstats
    import time
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    from jwst_skymatch_plus import PixelSkyMatchStep

    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    PixelSkyMatchStep.call(asn, **MODES[mode])
    profiler.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(profiler).stats
    out = {"wall": wall}
    for stage, names in STAGES.items():
        # Outermost call of each name only: cumulative times of nested calls overlap.
        total = 0.0
        for (path, _, func), (_, _, _, cumulative, callers) in stats.items():
            if func not in names:
                continue
            if stage == "waiting" and "concurrent" not in path and "distributed" not in path:
                continue
            if stage == "read" and not path.endswith("_library.py"):
                continue
            if any(c[2] in names for c in callers):
                continue
            total += cumulative
        out[stage] = total
    if MODES[mode]["n_workers"] == 1:
        out["waiting"] = 0.0
    else:
        out["resample"] = out["pairs"] = 0.0
    out["other"] = max(0.0, wall - sum(out[s] for s in STAGES))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="*", default=list(MODES))
    parser.add_argument("--workdir", default="/tmp/skymatch_plus_profile")
    parser.add_argument("--tiles", type=int, nargs=2, default=(6, 4))
    parser.add_argument("--shape", type=int, default=512)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(profile_one(*args.child)))
        return 0
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    asn = simulate(workdir, tuple(args.tiles), args.shape)
    columns = ["wall", *STAGES, "other"]
    print(f"# profile_modes: {2 * args.tiles[0] * args.tiles[1]} MIRI exposures of {args.shape}^2, seconds")
    print("| mode | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for mode in args.modes:
        run = subprocess.run(
            [sys.executable, __file__, "--child", str(asn), mode], capture_output=True, text=True, check=False
        )
        if run.returncode:
            print(f"| {mode} | failed: {run.stderr.strip().splitlines()[-1][:100]} |")
            continue
        r = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"| {mode} | " + " | ".join(f"{r[c]:.1f}" for c in columns) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
