"""What a matching run leaves behind: offsets tables and a diagnostic figure."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._atomic import atomic_path
from ..core.grid import BBox
from ..core.matching import MatchResult, evaluate_plane
from ..core.planes import DetectorPlane
from ..core.resample import Resampled, weighted_coadd

__all__ = ["plot_diagnostics", "write_offsets_tables"]

log = logging.getLogger(__name__)


def write_offsets_tables(
    path: str | Path,
    names: Sequence[str],
    result: MatchResult,
    levels: np.ndarray,
    planes: Sequence[DetectorPlane | None],
    meta: dict | None = None,
) -> tuple[Path, Path]:
    """Write the per-exposure offsets table and the per-pair table (ECSV).

    Parameters
    ----------
    path : str or Path
        The exposures table (``*.ecsv``); the pairs table goes next to it with
        ``_pairs`` appended to the stem.
    names : sequence of str
        Exposure names.
    result : MatchResult
        The matching outcome.
    levels : numpy.ndarray
        Final per-exposure levels (after the gauge and any global sky).
    planes : sequence of DetectorPlane or None
        Final detector-frame backgrounds.
    meta : dict, optional
        Run settings recorded in the table header.

    Returns
    -------
    (Path, Path)
        The two files written.
    """
    from astropy.table import Table

    path = Path(path)
    n = len(names)
    sol = result.group_solution
    used_count = np.zeros(len(result.groups), int)
    rejected_count = np.zeros(len(result.groups), int)
    for g in range(len(result.groups)):
        used_count[g], rejected_count[g] = result.pairs_of_group(g)
    z = _normalised_residuals(result)
    resid_rms = np.full(len(result.groups), np.nan)
    for g in range(len(result.groups)):
        sel = [k for k, p in enumerate(result.group_pairs) if sol.used[k] and g in (p.i, p.j)]
        if sel:
            resid_rms[g] = float(np.sqrt(np.mean(z[sel] ** 2)))
    g = result.group_index
    exposures = Table(
        {
            "exposure": list(names),
            "group": g + 1,
            "component": result.component,
            "level": levels,
            "level_uncertainty": result.sigma[:, 0],
            "plane_level": [p.level if p else np.nan for p in planes],
            "slope_x": [p.slope_x if p else np.nan for p in planes],
            "slope_y": [p.slope_y if p else np.nan for p in planes],
            "level_source": [str(v) for v in result.status],
            "note": list(result.reasons),
            "pairs_used": used_count[g],
            "pairs_rejected": rejected_count[g],
            "pair_residual_rms": resid_rms[g],
        }
    )
    exposures["level"].description = "background removed or recorded (data units), after the gauge"
    exposures["slope_x"].description = "plane slope per detector pixel along x"
    exposures["level_source"].description = (
        "measured: from the exposure's own overlaps; group: from its group, not measured; "
        "excluded: left out of matching; unmatched: tied to no other exposure"
    )
    exposures["pair_residual_rms"].description = "RMS of normalised residuals of the group's used pairs"
    exposures.meta.update(meta or {})
    exposures.meta["n_exposures"] = n
    exposures.meta["n_groups"] = len(result.groups)
    exposures.meta["fit_type"] = result.fit_type

    shifts = {(c.i, c.j): c.shift for c in result.alignment}
    rows = []
    for k, p in enumerate(result.group_pairs):
        rows.append(
            (
                p,
                bool(sol.used[k]),
                float(sol.residual[k, 0]),
                float(z[k]),
                "rejected by robust fit" if not sol.used[k] else "",
            )
        )
    for p in result.rejected_pairs:
        rows.append((p, False, np.nan, np.nan, "; ".join(p.flags)))
    pairs = Table(
        names=(
            "group_a",
            "group_b",
            "delta",
            "delta_uncertainty",
            "npix",
            "overlap_pixels",
            "used",
            "residual",
            "normalised_residual",
            "shift_x",
            "shift_y",
            "shift_correlation",
            "note",
        ),
        dtype=(int, int, float, float, int, int, bool, float, float, float, float, float, str),
    )
    for p, used, resid, zz, note in rows:
        s = shifts.get((p.i, p.j))
        pairs.add_row(
            (
                p.i + 1,
                p.j + 1,
                p.coeffs[0],
                p.sigma[0],
                p.npix,
                p.noverlap,
                used,
                resid,
                zz,
                s.dx if s else np.nan,
                s.dy if s else np.nan,
                s.correlation if s else np.nan,
                note,
            )
        )
    pairs.meta.update(meta or {})
    pairs_path = path.with_name(path.stem + "_pairs" + path.suffix)
    for table, target in ((exposures, path), (pairs, pairs_path)):
        with atomic_path(target) as tmp:
            table.write(tmp, format="ascii.ecsv", overwrite=True)
    log.info("Offsets written to %s (pairs in %s).", path, pairs_path.name)
    return path, pairs_path


def _normalised_residuals(result: MatchResult) -> np.ndarray:
    sol = result.group_solution
    if not result.group_pairs:
        return np.zeros(0)
    sig = np.array([p.sigma[0] for p in result.group_pairs])
    return sol.residual[:, 0] / sig


def _mosaic_from_thumbnails(result: MatchResult, corrections: Sequence[np.ndarray] | None):
    thumbs = [t for t in result.thumbnails if t is not None]
    if not thumbs:
        return None
    f = thumbs[0].factor
    ny = max(t.y0 + t.image.shape[0] for t in thumbs)
    nx = max(t.x0 + t.image.shape[1] for t in thumbs)
    images = []
    for g, t in enumerate(result.thumbnails):
        if t is None:
            continue
        img = np.nan_to_num(t.image)
        if corrections is not None:
            coeffs = corrections[g]
            if not np.all(np.isfinite(coeffs)):
                continue
            gy, gx = np.mgrid[t.y0 : t.y0 + img.shape[0], t.x0 : t.x0 + img.shape[1]]
            img = img - evaluate_plane(
                coeffs, (gx + 0.5) * f - 0.5, (gy + 0.5) * f - 0.5, result.grid.center, result.plane_scale
            )
        box = BBox(t.x0, t.x0 + img.shape[1], t.y0, t.y0 + img.shape[0])
        images.append(Resampled(box, img, t.weight))
    return weighted_coadd(images, BBox(0, nx, 0, ny), fill=np.nan, dtype=np.float64).image


def plot_diagnostics(path: str | Path, result: MatchResult, title: str = "") -> Path | None:
    """Overlap graph coloured by pair residuals, and mosaic thumbnails before/after.

    Needs matplotlib (the ``plot`` extra); logs and returns ``None`` without it.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.collections import LineCollection
    except ImportError:
        log.warning(
            "matplotlib is not installed: no diagnostic figure (pip install 'jwst-skymatch-plus[plot]')."
        )
        return None
    path = Path(path)
    sol = result.group_solution
    z = _normalised_residuals(result)
    centres = np.array([((b.x0 + b.x1) / 2.0, (b.y0 + b.y1) / 2.0) for b in result.group_boxes])
    # Group-level corrections (group level only: within-group detail is
    # below what a thumbnail shows).
    group_coeffs = [sol.levels[g] for g in range(len(result.groups))]
    before = _mosaic_from_thumbnails(result, None)
    after = _mosaic_from_thumbnails(result, group_coeffs)
    ncols = 3 if before is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 5.5), constrained_layout=True, squeeze=False)
    ax = axes[0, 0]
    segments, colours, styles = [], [], []
    for k, p in enumerate(result.group_pairs):
        segments.append([centres[p.i], centres[p.j]])
        colours.append(abs(z[k]) if sol.used[k] else np.nan)
        styles.append("solid" if sol.used[k] else "dashed")
    for p in result.rejected_pairs:
        segments.append([centres[p.i], centres[p.j]])
        colours.append(np.nan)
        styles.append("dotted")
    if segments:
        lc = LineCollection(
            segments, array=np.ma.masked_invalid(colours), cmap="viridis", linestyles=styles, linewidths=2
        )
        lc.set_clim(0, max(3.0, np.nanmax(np.abs(z)) if z.size else 3.0))
        lc.cmap.set_bad("0.6")
        ax.add_collection(lc)
        fig.colorbar(lc, ax=ax, label="|normalised pair residual| (grey: not used)")
    ax.scatter(centres[:, 0], centres[:, 1], c="k", s=12, zorder=3)
    for g, (x, y) in enumerate(centres):
        ax.annotate(str(g + 1), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_aspect("equal")
    ax.set_xlabel("grid x")
    ax.set_ylabel("grid y")
    ax.set_title("Overlap graph of groups")
    ax.autoscale()
    if before is not None:
        ref = after if after is not None else before
        finite = ref[np.isfinite(ref)]
        lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0, 1)
        for axis, img, label in (
            (axes[0, 1], before, "before matching"),
            (axes[0, 2], after, "after matching"),
        ):
            axis.imshow(img, origin="lower", cmap="magma", vmin=lo, vmax=hi)
            axis.set_title(label)
            axis.set_xticks([])
            axis.set_yticks([])
    if title:
        fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    log.info("Diagnostic figure written to %s.", path)
    return path
