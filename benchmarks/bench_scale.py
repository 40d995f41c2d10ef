"""Wall time and peak memory of sky matching against the number of exposures.

For each mosaic size (MIRI full frames, 2 dithers per visit) three methods run
in fresh processes, one at a time:

``stock``
    jwst's SkyMatchStep (skymethod='match'), as calwebb_image3 runs it.
``ours``
    PixelSkyMatchStep serially (``n_workers=1``), otherwise with its
    defaults: in memory, like the stock step, unless the exposures exceed
    the memory budget.
``ours-default``
    PixelSkyMatchStep with every default: ``n_workers=0`` starts a worker
    per usable core (at most 4) for runs of 8 Mpix or more.
``ours-Nw``
    ``ours`` with ``n_workers=N`` local processes (``--workers``).
``ours-disk``
    PixelSkyMatchStep with ``in_memory=False`` (on-disk library and group
    store): memory bounded by a few groups.
``ours-disk-Nw``
    ``ours-disk`` with ``n_workers=N``: each worker reads its exposures.
``ours-dask``
    ``ours`` on a local Dask cluster of N single-threaded worker processes,
    started before the clock (``scheduler=``), whose workers have imported
    the package, as on a cluster that has run the step before
    (``BENCH_DASK_COLD=1`` times fresh workers: about 1 s more at 48
    exposures of 512 x 512).
``naive``
    The algorithm of the earlier pixel-matching tool, with our lean
    resampler: every group resampled onto a full-mosaic array, all kept in
    memory, pairs differenced over whole arrays.
``naive-jwst``
    The same, resampling each group with jwst's own ``ResampleImage`` onto
    the mosaic grid calwebb_image3 would use, as the earlier tool did.

Peak memory is the peak resident set size of the process and its worker
processes together, sampled every 50 ms.  The scaling exponent is the slope of
log(time) against log(N).

Usage::

    python benchmarks/bench_scale.py                       # 10, 50, 100, 500 exposures
    python benchmarks/bench_scale.py --sizes 10 50 --quick  # smaller detectors
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "true")

HERE = Path(__file__).resolve().parent


def layout_for(n: int) -> tuple[int, int]:
    """Tiles (nx, ny) giving n exposures at 2 dithers per tile."""
    tiles = n // 2
    ny = max(1, int(math.sqrt(tiles / 2.5)))
    while tiles % ny:
        ny -= 1
    return tiles // ny, ny


def simulate(n: int, workdir: Path, shape: int | None) -> Path:
    """Write an n-exposure mosaic (once; reused by later runs)."""
    import numpy as np

    from jwst_skymatch_plus.simulate import simulate_mosaic, write_association

    target = workdir / (f"n{n}" if shape is None else f"n{n}_{shape}")
    asn = target / "bench_asn.json"
    if asn.exists() and (target / "truth.npz").exists():
        return asn
    nx, ny = layout_for(n)
    area = nx * ny
    t0 = time.perf_counter()
    sim = simulate_mosaic(
        "miri",
        shape=None if shape is None else (shape, shape),
        tiles=(nx, ny),
        dithers=2,
        exposure_offset_sigma=0.05,
        n_blobs=20 * area,
        n_sources=40 * area,
        out_dir=target,
        minimal_arrays=True,
        seed=n,
    )
    write_association(sim.filenames, target, "bench")
    np.savez(target / "truth.npz", level=sim.truth.level, files=np.array(sim.filenames))
    print(
        f"  simulated {len(sim.models)} exposures ({nx} x {ny} tiles) in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return asn


def run_method(method: str, asn: Path, workers: int) -> dict:
    """Run one method in a fresh interpreter; return its JSON report.

    Peak memory is sampled here, every 50 ms, as the summed resident set of
    the process and all its descendants (worker pools included).  (The
    kernel's ru_maxrss would not do: it survives exec and so reports the
    high-water mark of whatever forked the process.)
    """
    import tempfile

    import psutil

    run_dir = asn.parent / f"run_{method}"
    run_dir.mkdir(exist_ok=True)
    cmd = [sys.executable, str(HERE / "_scale_worker.py"), method, str(asn), str(workers)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = psutil.Popen(cmd, cwd=run_dir, stdout=out, stderr=err, text=True)
        peak = 0
        while proc.poll() is None:
            try:
                procs = [proc, *proc.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        return {"error": (stderr or stdout).strip().splitlines()[-1][:120]}
    report = json.loads(stdout.strip().splitlines()[-1])
    report["rss"] = peak
    return report


def slope(ns, ts):
    import numpy as np

    ok = [(n, t) for n, t in zip(ns, ts, strict=True) if t and t > 0]
    if len(ok) < 2:
        return float("nan")
    x, y = np.log([n for n, _ in ok]), np.log([t for _, t in ok])
    return float(np.polyfit(x, y, 1)[0])


#: Each row: (worker method, uses --workers, serial row it is compared with).
METHODS = {
    "stock": ("stock", False, None),
    "ours": ("ours", False, None),
    "ours-default": ("ours-default", False, "ours"),
    "ours-Nw": ("ours", True, "ours"),
    "ours-disk": ("ours-disk", False, "ours"),
    "ours-disk-Nw": ("ours-disk", True, "ours-disk"),
    "ours-dask": ("ours-dask", True, "ours"),
    "naive": ("naive", False, None),
    "naive-jwst": ("naive-jwst", False, None),
}


def main(argv=None) -> int:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10, 50, 100, 500])
    parser.add_argument("--workdir", default=os.environ.get("BENCH_WORKDIR", "/tmp/skymatch_plus_bench"))
    parser.add_argument("--quick", action="store_true", help="256 x 256 detectors (same as --shape 256)")
    parser.add_argument(
        "--shape", type=int, help="square detectors of this many pixels a side (default: full frame)"
    )
    parser.add_argument("--workers", type=int, default=2, help="workers of the parallel rows (1: skip them)")
    parser.add_argument("--naive-max", type=int, default=100, help="largest size run with the naive method")
    parser.add_argument("--stock-max", type=int, default=500, help="largest size run with the stock step")
    parser.add_argument(
        "--methods", nargs="*", default=list(METHODS), help="rows to run (names as in METHODS)"
    )
    args = parser.parse_args(argv)
    shape = 256 if args.quick else args.shape
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    methods = [m for m in args.methods if args.workers > 1 or not METHODS[m][1]]
    label = {m: m.replace("Nw", f"{args.workers}w") for m in methods}
    results: dict[str, dict[int, dict]] = {m: {} for m in methods}
    print(
        f"# bench_scale ({'full-frame' if shape is None else f'{shape}x{shape}'} MIRI, 2 dithers/visit, workdir {workdir})\n"
        "speed-up: serial time of the same mode / this row's time; efficiency: speed-up / workers; "
        "max |dlevel|: largest level difference from the serial row's"
    )
    print(
        f"| {'N':>4} | {'method':<13} | {'wall [s]':>9} | {'peak RSS [GiB]':>14} | {'rms error':>9} "
        f"| {'speed-up':>8} | {'efficiency':>10} | {'max |dlevel|':>12} |"
    )
    print(
        "|------|---------------|-----------|----------------|-----------|----------|------------|--------------|"
    )
    for n in args.sizes:
        asn = simulate(n, workdir, shape)
        for method in methods:
            worker_method, parallel, serial = METHODS[method]
            if method.startswith("naive") and n > args.naive_max:
                results[method][n] = {"skipped": f"> --naive-max {args.naive_max}"}
            elif method == "stock" and n > args.stock_max:
                results[method][n] = {"skipped": f"> --stock-max {args.stock_max}"}
            else:
                results[method][n] = run_method(worker_method, asn, args.workers if parallel else 1)
            r = results[method][n]
            if "wall" not in r:
                print(f"| {n:>4} | {label[method]:<13} | {r.get('skipped') or r.get('error')} |", flush=True)
                continue
            base = results.get(serial, {}).get(n, {}) if serial else {}
            speedup = efficiency = diff = ""
            if "wall" in base:
                speedup = f"{base['wall'] / r['wall']:.2f}"
                efficiency = f"{base['wall'] / r['wall'] / args.workers:.2f}" if parallel else ""
                diff = f"{np.nanmax(np.abs(np.subtract(r['levels'], base['levels']))):.1e}"
            print(
                f"| {n:>4} | {label[method]:<13} | {r['wall']:>9.1f} | {r['rss'] / 2**30:>14.2f} | {r['rms']:>9.4f} "
                f"| {speedup:>8} | {efficiency:>10} | {diff:>12} |",
                flush=True,
            )
    print()
    for method in methods:
        ns = [n for n in args.sizes if "wall" in results[method][n]]
        if len(ns) > 1:
            print(
                f"scaling exponent ({label[method]}): {slope(ns, [results[method][n]['wall'] for n in ns]):.2f}"
            )
    for n in args.sizes:
        s, o = results.get("stock", {}).get(n, {}), results.get("ours", {}).get(n, {})
        parts = []
        if "wall" in s and "wall" in o:
            parts.append(f"ours/stock time {o['wall'] / s['wall']:.2f}")
        for baseline in ("naive", "naive-jwst"):
            v = results.get(baseline, {}).get(n, {})
            if "wall" in v and "wall" in o:
                parts.append(f"{baseline}/ours time {v['wall'] / o['wall']:.1f}")
        if parts:
            print(f"N={n}: " + ", ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
