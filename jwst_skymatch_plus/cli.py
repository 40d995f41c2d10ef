"""Command-line tools: the demo, parameter-file collection and simulation.

``jwst-skymatch-plus demo``
    Simulate a MIRI mosaic, run jwst's SkyMatchStep and PixelSkyMatchStep on
    it, print recovered offsets against the truth and write a before/after
    PNG.  Needs no network and no CRDS cache.
``jwst-skymatch-plus collect-cfgs DIR`` (also ``collect_skymatch_plus_cfgs DIR``)
    Write ``.asdf`` and ``.cfg`` parameter files for every step and pipeline
    of the package.
``jwst-skymatch-plus simulate DIR``
    Write a simulated mosaic (cal files and an image3 association).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

__all__ = ["collect_cfgs", "collect_main", "main", "run_demo"]


def _offline() -> None:
    # stpipe would otherwise ask CRDS for parameter reference files; it accepts
    # only true/True/t/yes/y here ("1" does not work).
    os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "true")


def _package_steps() -> list[tuple[str, str, bool]]:
    from .integration import get_steps

    return get_steps()


def collect_cfgs(dst: str | Path = ".") -> list[Path]:
    """Write parameter files for every step and pipeline of the package.

    For each class two files are written: ``<alias>.asdf`` with every
    parameter and its default (usable as ``strun <alias>.asdf input``), and
    ``<alias>.cfg`` naming the class, as jwst's own ``.cfg`` files do.

    Parameters
    ----------
    dst : str or Path
        Destination directory (created if needed).

    Returns
    -------
    list of Path
        Files written.

    """
    _offline()
    from stpipe.utilities import import_class

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    for class_path, alias, _is_pipeline in _package_steps():
        cls = import_class(class_path)
        step = cls()
        asdf_path = dst / f"{alias}.asdf"
        step.export_config(str(asdf_path))
        cfg_path = dst / f"{alias}.cfg"
        cfg_path.write_text(f'name = "{alias}"\nclass = "{class_path}"\n')
        written += [asdf_path, cfg_path]
    return written


def collect_main(argv: list[str] | None = None) -> int:
    """Entry point of ``collect_skymatch_plus_cfgs``."""
    parser = argparse.ArgumentParser(
        prog="collect_skymatch_plus_cfgs",
        description="Write .asdf and .cfg parameter files for every jwst-skymatch-plus step and pipeline.",
    )
    parser.add_argument("dst", nargs="?", default=".", help="destination directory (default: .)")
    args = parser.parse_args(argv)
    for path in collect_cfgs(args.dst):
        print(path)
    return 0


# --------------------------------------------------------------------------
# Demo
# --------------------------------------------------------------------------
def _mosaic(models, levels, grid):
    """Mean mosaic on ``grid`` of exposures with ``levels`` removed."""
    import numpy as np

    from .core.grid import BBox, footprint_of
    from .core.resample import resample_to_grid, weighted_coadd

    def resampled():
        for m, lev in zip(models, levels, strict=True):
            good = np.isfinite(m.data) & ((m.dq & 1) == 0) & ((m.dq & (1 << 9)) == 0)
            box = grid.bbox_of(footprint_of(m.meta.wcs, m.data.shape))
            yield resample_to_grid(m.data - np.float32(lev), good, m.meta.wcs, grid, box)

    full = BBox(0, grid.shape[1], 0, grid.shape[0])
    return weighted_coadd(resampled(), full, fill=np.nan, dtype=np.float64).image


def run_demo(outdir: str | Path = "skymatch_plus_demo", seed: int = 3, quick: bool = False) -> dict:
    """Simulate a mosaic, match it with both steps, report against the truth.

    Parameters
    ----------
    outdir : str or Path
        Where the PNG is written.
    seed : int
        Simulation seed.
    quick : bool
        Smaller detectors (for tests).

    Returns
    -------
    dict
        RMS errors, noise floor, timings and the PNG path.

    """
    _offline()
    import numpy as np
    from jwst.skymatch import SkyMatchStep

    from .simulate import offset_noise_floor, offset_rms_error, recorded_levels, simulate_mosaic
    from .steps.pixel_skymatch import PixelSkyMatchStep

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    shape = (256, 256) if quick else (512, 512)
    print(f"Simulating a MIRI F770W mosaic: 3 x 2 tiles x 4 dithers of {shape[1]} x {shape[0]} pixels ...")
    sim = simulate_mosaic(
        "miri",
        shape=shape,
        tiles=(3, 2),
        dithers=4,
        masked_region_probability=0.4,
        visit_offset_sigma=0.5,
        exposure_offset_sigma=0.05,
        seed=seed,
    )
    truth = sim.truth.level
    floor = offset_noise_floor(sim)

    results = {}
    for label, cls, kwargs in (
        ("stock SkyMatchStep", SkyMatchStep, {"skymethod": "match"}),
        ("PixelSkyMatchStep", PixelSkyMatchStep, {}),
    ):
        print(f"Running {label} ...")
        models = [m.copy() for m in sim.models]
        t0 = time.perf_counter()
        library = cls.call(models, **kwargs)
        elapsed = time.perf_counter() - t0
        levels = recorded_levels(library)
        results[label] = {"levels": levels, "time": elapsed, "rms": offset_rms_error(levels, truth)}

    stock = results["stock SkyMatchStep"]
    ours = results["PixelSkyMatchStep"]

    def centred(v):
        return v - np.nanmean(v)

    t_c, s_c, o_c = centred(truth), centred(stock["levels"]), centred(ours["levels"])
    print()
    print("Recovered sky offsets (mean removed; data units MJy/sr)")
    header = f"{'exposure':<44} {'truth':>9} {'stock':>9} {'pixel':>9} {'stock err':>10} {'pixel err':>10}"
    print(header)
    print("-" * len(header))
    for k, m in enumerate(sim.models):
        print(
            f"{m.meta.filename:<44} {t_c[k]:9.4f} {s_c[k]:9.4f} {o_c[k]:9.4f} "
            f"{s_c[k] - t_c[k]:10.4f} {o_c[k] - t_c[k]:10.4f}"
        )
    print()
    print(f"{'':<24} {'RMS error':>12} {'wall time [s]':>14}")
    print(f"{'stock SkyMatchStep':<24} {stock['rms']:12.5f} {stock['time']:14.2f}")
    print(f"{'PixelSkyMatchStep':<24} {ours['rms']:12.5f} {ours['time']:14.2f}")
    print(f"{'noise-limited floor':<24} {floor:12.5f}")
    print(
        f"PixelSkyMatchStep error is {stock['rms'] / ours['rms']:.0f}x smaller than the stock step's "
        f"({ours['rms'] / floor:.2f}x the noise floor), in {ours['time'] / stock['time']:.2f}x its time."
    )

    png = outdir / "demo_mosaic.png"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG written (pip install 'jwst-skymatch-plus[plot]').")
        png = None
    else:
        panels = [
            ("no sky matching", np.zeros(len(truth))),
            (f"stock SkyMatchStep (rms {stock['rms']:.3f})", stock["levels"]),
            (f"PixelSkyMatchStep (rms {ours['rms']:.4f})", ours["levels"]),
        ]
        from .core.grid import SkyGrid

        grid = SkyGrid.for_exposures(
            [m.meta.wcs for m in sim.models], [m.data.shape for m in sim.models], 2.0
        )
        images = [_mosaic(sim.models, lev, grid) for _, lev in panels]
        # The simulator knows the sky: what is left after removing it is the
        # background the mosaic still carries, seams and all.
        scene = sim.true_sky(grid.wcs, grid.shape)
        residuals = [img - scene for img in images]
        ref = images[2]
        lo, hi = np.nanpercentile(ref, [1, 99.5])
        span = 3 * np.nanstd(residuals[2] - np.nanmedian(residuals[2])) + 0.05
        fig, axes = plt.subplots(2, 3, figsize=(15, 9), constrained_layout=True)
        for col, ((title, _), img, res) in enumerate(zip(panels, images, residuals, strict=True)):
            ax = axes[0, col]
            ax.imshow(
                img - np.nanmedian(img) + np.nanmedian(ref),
                origin="lower",
                cmap="magma",
                norm=matplotlib.colors.AsinhNorm(vmin=lo, vmax=hi, linear_width=0.5),
            )
            ax.set_title(title)
            ax = axes[1, col]
            shown = ax.imshow(res - np.nanmedian(res), origin="lower", cmap="RdBu_r", vmin=-span, vmax=span)
            ax.set_title("mosaic minus true sky")
            for a in axes[:, col]:
                a.set_xticks([])
                a.set_yticks([])
        fig.colorbar(shown, ax=axes[1, :], shrink=0.8, label="background error (MJy/sr)")
        fig.suptitle("Simulated MIRI mosaic: background seams before and after sky matching")
        fig.savefig(png, dpi=90)
        plt.close(fig)
        print(f"Before/after mosaic written to {png}")
    return {
        "stock_rms": stock["rms"],
        "pixel_rms": ours["rms"],
        "floor": floor,
        "stock_time": stock["time"],
        "pixel_time": ours["time"],
        "png": png,
    }


def _simulate_cmd(args) -> int:
    _offline()
    from .simulate import simulate_mosaic

    sim = simulate_mosaic(
        args.instrument,
        shape=tuple(args.shape) if args.shape else None,
        tiles=tuple(args.tiles),
        dithers=args.dithers,
        seed=args.seed,
    )
    asn = sim.write(args.outdir, product_name=args.product)
    print(asn)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``jwst-skymatch-plus``."""
    parser = argparse.ArgumentParser(prog="jwst-skymatch-plus", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="simulate a mosaic and compare sky matching with jwst's step")
    p.add_argument("--outdir", default="skymatch_plus_demo", help="where the PNG goes")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smaller detectors, faster")
    p = sub.add_parser("collect-cfgs", help="write parameter files of every step and pipeline")
    p.add_argument("dst", nargs="?", default=".")
    p = sub.add_parser("simulate", help="write a simulated mosaic and its association")
    p.add_argument("outdir")
    p.add_argument("--instrument", default="miri", choices=["miri", "nircam_long", "nircam_short"])
    p.add_argument("--shape", type=int, nargs=2, metavar=("NY", "NX"))
    p.add_argument("--tiles", type=int, nargs=2, default=[2, 2], metavar=("NX", "NY"))
    p.add_argument("--dithers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--product", default="sim_mosaic")
    args = parser.parse_args(argv)
    if args.command == "demo":
        run_demo(args.outdir, seed=args.seed, quick=args.quick)
        return 0
    if args.command == "collect-cfgs":
        return collect_main([args.dst])
    return _simulate_cmd(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
