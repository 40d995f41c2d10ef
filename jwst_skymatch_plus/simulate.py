"""Synthetic calibrated JWST imaging mosaics with known sky offsets.

One simulator serves the tests, the benchmarks, the documentation examples and
the demo.  It builds level-2 ``ImageModel`` exposures (``*_cal.fits``) laid out
as tiles x visits x dithers, each with a JWST-like gwcs (detector -> v2v3 ->
world), the metadata ``calwebb_image3`` needs offline, and an additive sky
background whose true value is returned next to the models.

The sky seen by exposure ``k`` at detector pixel ``(x, y)`` is::

    scene(ra, dec) + level[k] + gradient[k, 0] * (x - xc) + gradient[k, 1] * (y - yc)

where ``(xc, yc)`` is the detector centre, ``scene`` is an analytic field of
extended emission and point sources rendered once for the whole mosaic, and
``level[k]`` combines a common sky, a per-visit offset and a per-exposure
drift.  MIRI exposures may carry an extra offset in the Lyot coronagraph
region.  The scene is rendered with each exposure's *true* pointing, which may
differ from the WCS recorded in the model (``misalign_arcsec``), so that
alignment tools have something to find.

Examples
--------
>>> from jwst_skymatch_plus.simulate import simulate_mosaic
>>> mosaic = simulate_mosaic("miri", shape=(128, 128), tiles=(2, 1), dithers=2, seed=1)
>>> len(mosaic.models), mosaic.truth.level.shape
(4, (4,))

"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .core.keys import lyot_region as lyot_region_of
from .core.regions import MIRI_FULL_SHAPE, miri_lyot_region

__all__ = [
    "INSTRUMENTS",
    "alignment_errors",
    "InstrumentLayout",
    "MosaicTruth",
    "SimulatedMosaic",
    "lyot_region",
    "background_noise_floor",
    "background_rms_error",
    "isolated_dither_pattern",
    "offset_noise_floor",
    "offset_plane_free_error",
    "offset_rms_error",
    "recorded_levels",
    "level_match_totals",
    "simulate_mosaic",
]


DO_NOT_USE = 1
NON_SCIENCE = 1 << 9
JUMP_DET = 1 << 2


@dataclass(frozen=True)
class Detector:
    """One detector of an instrument layout.

    ``v2_ref``/``v3_ref`` locate the detector centre in the telescope frame
    (arcsec).
    """

    name: str
    v2_ref: float
    v3_ref: float
    module: str | None = None


@dataclass(frozen=True)
class InstrumentLayout:
    """Static description of an imaging configuration."""

    instrument: str
    exp_type: str
    shape: tuple[int, int]
    pixel_scale: float  # arcsec / pixel
    filter: str
    detectors: tuple[Detector, ...]
    channel: str | None = None
    pupil: str | None = None
    v3yangle: float = 0.0
    vparity: int = -1
    readpatt: str = "FASTR1"

    @property
    def aperture_v2v3(self) -> tuple[float, float]:
        """Telescope-frame reference of the whole aperture (mean of detectors)."""
        v2 = float(np.mean([d.v2_ref for d in self.detectors]))
        v3 = float(np.mean([d.v3_ref for d in self.detectors]))
        return v2, v3


def _nircam_short_detectors() -> tuple[Detector, ...]:
    # Four 2048^2 chips of 0.031"/px (63.5") per module, with ~5" gaps between
    # chips and ~44" between the A and B modules.
    step = 63.5 + 5.0
    dets = []
    for module, v2c in (("A", 86.0), ("B", -86.0)):
        for k, (dx, dy) in enumerate(((-0.5, 0.5), (0.5, 0.5), (-0.5, -0.5), (0.5, -0.5)), start=1):
            dets.append(Detector(f"NRC{module}{k}", v2c + dx * step, -493.0 + dy * step, module))
    return tuple(dets)


def _nircam_layout(
    channel: str, pixel_scale: float, filter: str, detectors: tuple[Detector, ...]
) -> InstrumentLayout:
    """A NIRCam imaging channel: 2048 x 2048 detectors, CLEAR pupil, BRIGHT1 readout."""
    return InstrumentLayout(
        instrument="NIRCAM",
        exp_type="NRC_IMAGE",
        shape=(2048, 2048),
        pixel_scale=pixel_scale,
        filter=filter,
        channel=channel,
        pupil="CLEAR",
        detectors=detectors,
        readpatt="BRIGHT1",
    )


INSTRUMENTS: dict[str, InstrumentLayout] = {
    "miri": InstrumentLayout(
        instrument="MIRI",
        exp_type="MIR_IMAGE",
        shape=MIRI_FULL_SHAPE,
        pixel_scale=0.11,
        filter="F770W",
        detectors=(Detector("MIRIMAGE", -453.559, -373.814),),
        v3yangle=0.0,
        readpatt="FASTR1",
    ),
    "nircam_long": _nircam_layout(
        "LONG",
        0.063,
        "F444W",
        (Detector("NRCALONG", 86.0, -493.0, "A"), Detector("NRCBLONG", -86.0, -493.0, "B")),
    ),
    "nircam_short": _nircam_layout("SHORT", 0.031, "F200W", _nircam_short_detectors()),
}


@dataclass
class MosaicTruth:
    """Ground truth of a simulated mosaic, one row per exposure."""

    level: np.ndarray  # additive sky at the detector centre (data units)
    gradient: np.ndarray  # (n, 2): d(sky)/dx, d(sky)/dy per detector pixel
    visit_offset: np.ndarray  # per-visit part of ``level`` (per exposure)
    exposure_drift: np.ndarray  # per-exposure part of ``level``
    lyot_offset: np.ndarray  # extra offset inside the MIRI Lyot region
    noise: np.ndarray  # per-pixel Gaussian noise sigma
    visit: np.ndarray  # visit number (1-based)
    tile: np.ndarray  # tile index
    dither: np.ndarray  # dither index inside the visit
    detector: np.ndarray  # detector name
    misalignment: dict[int, tuple[float, float, float]]  # visit -> (dx", dy", droll deg)
    sky_level: float  # common sky level included in ``level``

    @classmethod
    def from_columns(cls, cols: dict[str, list], misalignment: dict, sky_level: float) -> MosaicTruth:
        """Truth from per-exposure lists keyed as the simulators collect them."""
        return cls(
            level=np.array(cols["level"]),
            gradient=np.array(cols["grad"]).reshape(-1, 2),
            visit_offset=np.array(cols["voff"]),
            exposure_drift=np.array(cols["drift"]),
            lyot_offset=np.array(cols["lyot"]),
            noise=np.array(cols["noise"]),
            visit=np.array(cols["visit"]),
            tile=np.array(cols["tile"]),
            dither=np.array(cols["dither"]),
            detector=np.array(cols["det"]),
            misalignment=misalignment,
            sky_level=sky_level,
        )

    def plane_at(self, k: int, x: np.ndarray, y: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Evaluate exposure ``k``'s true additive background at detector pixels."""
        yc, xc = (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0
        return self.level[k] + self.gradient[k, 0] * (x - xc) + self.gradient[k, 1] * (y - yc)


@dataclass
class SimulatedMosaic:
    """Simulated exposures plus what produced them."""

    models: list  # list of ImageModel
    truth: MosaicTruth
    layout: InstrumentLayout
    true_wcs: list  # gwcs actually used to render each exposure
    config: dict[str, Any] = field(default_factory=dict)
    scene: Any = None  # the rendered sky (see :meth:`true_sky`)

    def true_sky(self, wcs, shape: tuple[int, int]) -> np.ndarray:
        """The noise-free scene (without any background) on any image grid.

        Parameters
        ----------
        wcs : gwcs.WCS or astropy.wcs.WCS
            Pixel-to-sky transform of the image (e.g. an i2d mosaic's).
        shape : tuple of int
            Image shape.

        """
        return self.scene.sample(wcs, shape)

    def write_reference_image(
        self,
        path,
        margin: float = 0.25,
        noise: float = 0.05,
        gain: float = 1.0,
        level: float = 0.0,
        seed: int = 1,
    ) -> Path:
        """Write the true sky around the mosaic as a FITS image with a TAN WCS (an earlier, aligned mosaic).

        Parameters
        ----------
        path : str or Path
            Output FITS file (``SCI`` extension).
        margin : float
            Extra extent on each side, as a fraction of the mosaic's.
        noise : float
            Gaussian noise added (after ``gain`` and ``level``).
        gain, level : float
            Units and zero point of the image: ``gain * sky + level``.
        seed : int
            Noise seed.
        """
        from astropy.io import fits
        from astropy.wcs import WCS

        from .core.grid import footprint_of

        corners = []
        for m in self.models:
            model = m if not isinstance(m, (str, Path)) else None
            if model is None:
                raise ValueError("write_reference_image needs the models in memory")
            corners.append(footprint_of(model.meta.wcs, model.data.shape, n_edge=2))
        sky = np.concatenate(corners)
        dec0 = float(np.mean(sky[:, 1]))
        ra0 = float(np.degrees(np.angle(np.mean(np.exp(1j * np.radians(sky[:, 0]))))) % 360.0)
        scale = self.layout.pixel_scale / 3600.0
        dx = (sky[:, 0] - ra0 + 180.0) % 360.0 - 180.0
        half_x = np.max(np.abs(dx)) * math.cos(math.radians(dec0)) / scale
        half_y = np.max(np.abs(sky[:, 1] - dec0)) / scale
        nx, ny = (int(2 * h * (1 + margin)) + 1 for h in (half_x, half_y))
        wcs = WCS(naxis=2)
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.crval = [ra0, dec0]
        wcs.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
        wcs.wcs.cd = [[-scale, 0.0], [0.0, scale]]
        data = self.true_sky(wcs, (ny, nx)) * gain + level
        data = data + np.random.default_rng(seed).normal(0.0, noise, data.shape)
        path = Path(path)
        hdus = [fits.PrimaryHDU(), fits.ImageHDU(data.astype(np.float32), wcs.to_header(), name="SCI")]
        fits.HDUList(hdus).writeto(path, overwrite=True)
        return path

    def source_catalog(self):
        """True sky positions of the point sources: an astropy Table with ``RA``, ``DEC`` (deg) and ``peak``.

        The absolute astrometric truth, e.g. for ``alignment_catalog``.
        """
        from astropy.table import Table

        x, y = self.scene.sources_pixel.T
        ra, dec = self.scene.wcs.wcs_pix2world(x, y, 0)
        return Table({"RA": ra, "DEC": dec, "peak": self.scene.sources_peak})

    @property
    def filenames(self) -> list[str]:
        """File name of each exposure."""
        return [Path(m).name if isinstance(m, (str, Path)) else m.meta.filename for m in self.models]

    def write(self, directory: str | Path, product_name: str = "sim_mosaic") -> Path:
        """Write the cal files and a level-3 image association into ``directory``.

        Returns the path of the association file.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for model in self.models:
            if isinstance(model, (str, Path)):
                if Path(model).parent.resolve() != directory.resolve():
                    raise ValueError(f"{model} was written to another directory than {directory}")
                continue
            model.save(directory / model.meta.filename)
        return write_association(self.filenames, directory, product_name)


def write_association(
    filenames: list[str],
    directory: str | Path,
    product_name: str = "sim_mosaic",
    exptypes: list[str] | None = None,
) -> Path:
    """Write a minimal level-3 imaging association (``*_asn.json``).

    Parameters
    ----------
    filenames : list of str
        Member file names, relative to ``directory``.
    directory : str or Path
        Where the association is written.
    product_name : str
        The association's product name (used for output names).
    exptypes : list of str, optional
        Member exposure types (default ``"science"`` for all).

    """
    exptypes = exptypes or ["science"] * len(filenames)
    asn = {
        "asn_type": "image3",
        "asn_rule": "DMS_Level3_Base",
        "version_id": None,
        "code_version": "jwst_skymatch_plus.simulate",
        "degraded_status": "No known degraded exposures in association.",
        "program": "01234",
        "constraints": "simulated",
        "asn_id": "a3001",
        "target": "1",
        "asn_pool": "simulated_pool",
        "products": [
            {
                "name": product_name,
                "members": [
                    {"expname": Path(f).name, "exptype": t} for f, t in zip(filenames, exptypes, strict=True)
                ],
            }
        ],
    }
    path = Path(directory) / f"{product_name}_asn.json"
    path.write_text(json.dumps(asn, indent=2))
    return path


# --------------------------------------------------------------------------
# WCS construction
# --------------------------------------------------------------------------
def _ideal_matrix(layout: InstrumentLayout) -> np.ndarray:
    # SIAF convention: V2 = V2ref + parity * x_idl cos(a) + y_idl sin(a),
    #                  V3 = V3ref - parity * x_idl sin(a) + y_idl cos(a).
    a = math.radians(layout.v3yangle)
    p = layout.vparity
    return np.array([[p * math.cos(a), math.sin(a)], [-p * math.sin(a), math.cos(a)]])


def _nircam_distortion_shape():
    """Non-linear part of the NRCB1 distortion shipped with the jwst test data.

    Returns a callable ``(dx, dy) -> (dv2, dv3)`` in arcsec, relative to the
    detector centre and without the linear part, or ``None`` if unavailable.
    """
    import asdf

    path = resources.files("jwst") / "tweakreg/tests/data/nrcb1-wcs.asdf"
    with asdf.open(str(path), lazy_load=False, memmap=False) as af:
        det2v23 = af.tree["wcs"].pipeline[0].transform
    return det2v23


def _det2v23_model(layout: InstrumentLayout, det: Detector, shape: tuple[int, int], distortion: bool):
    from astropy.modeling import models as am

    ny, nx = shape
    xc, yc = (nx - 1) / 2.0, (ny - 1) / 2.0
    lin = _ideal_matrix(layout) * layout.pixel_scale
    if not distortion:
        model = (am.Shift(-xc) & am.Shift(-yc)) | am.AffineTransformation2D(
            matrix=lin, translation=[det.v2_ref, det.v3_ref]
        )
        return model
    # Real NIRCam distortion: NRCB1's polynomial, re-centred on this detector
    # and rescaled to this pixel scale.  Sampled at the same relative position
    # (full-frame centre) regardless of the simulated detector size.
    base = _nircam_distortion_shape()
    c_full = 1023.5
    v2c, v3c = base(c_full, c_full)
    ratio = layout.pixel_scale / 0.0307
    model = (
        (am.Shift(c_full - xc) & am.Shift(c_full - yc))
        | base
        | (am.Shift(-v2c) & am.Shift(-v3c))
        | (am.Scale(ratio) & am.Scale(ratio))
        | (am.Shift(det.v2_ref) & am.Shift(det.v3_ref))
    )
    return model


def _make_gwcs(det2v23, pointing: tuple[float, float, float], ap_v2v3: tuple[float, float], shape):
    """Gwcs detector -> v2v3 -> world for a telescope pointing.

    ``pointing`` is ``(ra, dec, roll)`` of the aperture reference ``ap_v2v3``.
    """
    from astropy import coordinates as coord
    from astropy import units as u
    from gwcs import coordinate_frames as cf
    from gwcs import wcs as gwcs_wcs
    from jwst.assign_wcs.pointing import _v23tosky

    ra, dec, roll = pointing
    tel2sky = _v23tosky(ap_v2v3[0] / 3600.0, ap_v2v3[1] / 3600.0, roll, ra, dec)
    detector = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    v2v3 = cf.Frame2D(name="v2v3", axes_order=(0, 1), axes_names=("v2", "v3"), unit=(u.arcsec, u.arcsec))
    world = cf.CelestialFrame(reference_frame=coord.ICRS(), name="world")
    w = gwcs_wcs.WCS([(detector, det2v23), (v2v3, tel2sky), (world, None)])
    ny, nx = shape
    w.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    w.array_shape = shape
    return w


def _offset_pointing(layout, base_pointing, dx_pix: float, dy_pix: float) -> tuple[float, float, float]:
    """Pointing that moves the aperture by ``(dx, dy)`` detector pixels on the sky."""
    from jwst.assign_wcs.pointing import _v23tosky

    ra0, dec0, roll = base_pointing
    v2a, v3a = layout.aperture_v2v3
    tel2sky = _v23tosky(v2a / 3600.0, v3a / 3600.0, roll, ra0, dec0)
    dv2, dv3 = _ideal_matrix(layout) @ np.array([dx_pix, dy_pix]) * layout.pixel_scale
    ra, dec = tel2sky(v2a + dv2, v3a + dv3)
    return float(ra), float(dec), roll


def _misaligned(pointing, layout, shift_arcsec: tuple[float, float], droll: float):
    dx = shift_arcsec[0] / layout.pixel_scale
    dy = shift_arcsec[1] / layout.pixel_scale
    ra, dec, roll = _offset_pointing(layout, pointing, dx, dy)
    return ra, dec, roll + droll


# --------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------
def _add_gaussian(img, coords, cx, cy, s_major, s_minor, theta, amp, nsig=4.5):
    """Add an elliptical Gaussian to ``img`` inside a cut-out of +-nsig sigma."""
    r = nsig * s_major
    ix = np.nonzero(np.abs(coords - cx) < r)[0]
    iy = np.nonzero(np.abs(coords - cy) < r)[0]
    if ix.size == 0 or iy.size == 0:
        return
    xx = coords[ix][None, :] - cx
    yy = coords[iy][:, None] - cy
    c, s = math.cos(theta), math.sin(theta)
    u_ = (c * xx + s * yy) / s_major
    v_ = (-s * xx + c * yy) / s_minor
    img[iy[0] : iy[-1] + 1, ix[0] : ix[-1] + 1] += (amp * np.exp(-0.5 * (u_**2 + v_**2))).astype(np.float32)


class _Scene:
    """An analytic sky rendered once on a tangent-plane grid and interpolated."""

    def __init__(
        self,
        center,
        extent_arcsec,
        scale_arcsec,
        rng,
        emission,
        n_sources,
        psf_fwhm,
        n_blobs,
        sky_gradient=0.0,
    ):
        from astropy.wcs import WCS
        from scipy import ndimage

        # A sky plane common to every exposure (data units per 100 arcsec):
        # it cancels in per-pixel differences but not in per-image statistics.
        theta = rng.uniform(0, 2 * np.pi) if sky_gradient else 0.0
        self.ramp = (
            sky_gradient * math.cos(theta) * scale_arcsec / 100.0,
            sky_gradient * math.sin(theta) * scale_arcsec / 100.0,
        )

        half = extent_arcsec / 2.0
        n = math.ceil(2 * half / scale_arcsec) + 8
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = list(center)
        w.wcs.crpix = [(n + 1) / 2.0, (n + 1) / 2.0]
        w.wcs.cdelt = [-scale_arcsec / 3600.0, scale_arcsec / 3600.0]
        self.wcs = w
        img = np.zeros((n, n), dtype=np.float32)
        coords = (np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * scale_arcsec
        # Broad components go on a grid ``coarse`` times coarser, interpolated
        # up once at the end: rendering them at full resolution would dominate
        # the simulation time.
        coarse = 8
        nc = n // coarse + 4
        coarse_img = np.zeros((nc, nc), dtype=np.float32)
        ccoords = (np.arange(nc, dtype=np.float32) - (nc - 1) / 2.0) * scale_arcsec * coarse
        # Extended emission: anisotropic Gaussian clouds and filaments with
        # sizes from a couple of arcsec to a large fraction of the field.
        for _ in range(n_blobs):
            cx, cy = rng.uniform(-half, half, 2)
            s_major = math.exp(rng.uniform(math.log(2.0), math.log(max(3.0, 0.35 * half))))
            s_minor = max(s_major * rng.uniform(0.15, 1.0), 3 * scale_arcsec)
            theta = rng.uniform(0, np.pi)
            amp = emission * rng.uniform(0.1, 1.0)
            broad = s_minor > 3 * coarse * scale_arcsec
            target, grid = (coarse_img, ccoords) if broad else (img, coords)
            _add_gaussian(target, grid, cx, cy, s_major, s_minor, theta, amp)
        if n_blobs:
            fine = ndimage.zoom(coarse_img, coarse, order=3, grid_mode=True, mode="grid-constant")
            off = (fine.shape[0] - n) // 2
            img += fine[off : off + n, off : off + n]
        # Point sources with a power-law flux distribution.
        sig = psf_fwhm / 2.3548
        sources = []
        for _ in range(n_sources):
            cx, cy = rng.uniform(-half, half, 2)
            peak = emission * 5.0 * rng.pareto(1.5) + emission * 0.5
            _add_gaussian(img, coords, cx, cy, sig, sig, 0.0, peak)
            sources.append((cx, cy, peak))
        # Pixel (0-based) positions of the point sources on the scene grid.
        src = np.array(sources, float).reshape(-1, 3)
        self.sources_pixel = src[:, :2] / scale_arcsec + (n - 1) / 2.0
        self.sources_peak = src[:, 2]
        self.image = img
        # Pre-filtered spline coefficients: cubic interpolation per exposure.
        self._coeffs = ndimage.spline_filter(img.astype(np.float64), order=3).astype(np.float32)

    def sample(self, wcs, shape) -> np.ndarray:
        """Scene values at the centres of the pixels of a detector with ``wcs``."""
        from scipy import ndimage
        from stcal.resample.utils import calc_pixmap

        pixmap = calc_pixmap(wcs, self.wcs, shape=shape, stepsize=16, order=3)
        out = ndimage.map_coordinates(
            self._coeffs,
            [pixmap[..., 1].ravel(), pixmap[..., 0].ravel()],
            order=3,
            prefilter=False,
            mode="constant",
            cval=0.0,
        ).reshape(shape)
        if self.ramp != (0.0, 0.0):
            c = (self.image.shape[0] - 1) / 2.0
            out = out + self.ramp[0] * (pixmap[..., 0] - c) + self.ramp[1] * (pixmap[..., 1] - c)
        return out.astype(np.float32)


# --------------------------------------------------------------------------
# Regions
# --------------------------------------------------------------------------
def lyot_region(shape: tuple[int, int]) -> tuple[slice, slice]:
    """Array slices of the MIRI Lyot coronagraph for a simulated detector of ``shape``.

    The full-frame outline scaled to ``shape``, so that small simulated
    detectors keep the same layout (see
    :func:`jwst_skymatch_plus.core.regions.miri_lyot_region`).
    """
    return miri_lyot_region(shape, full_frame=True)


def _coronagraph_strip(shape: tuple[int, int]) -> tuple[slice, slice]:
    """The 4QPM coronagraph strip below the Lyot (flagged NON_SCIENCE)."""
    rows, cols = lyot_region(shape)
    return slice(0, rows.start), cols


# --------------------------------------------------------------------------
# Main entry
# --------------------------------------------------------------------------
def isolated_dither_pattern(
    tiles: tuple[int, int] = (2, 2), dithers: int = 4, size: float = 0.03, jump: float = 0.8
) -> np.ndarray:
    """Dither offsets (for ``simulate_mosaic(dither_pattern=...)``) with one dither apart.

    In every tile the first ``dithers - 1`` exposures follow a small box
    pattern (``size`` of the detector) and the last one jumps ``jump``
    detector widths along x toward the middle of the mosaic (tiles in the
    left half jump right, the others left).  With the default 0.8 the jumped
    exposure shares no pixel with its tile-mates on the MIRI imager field
    (0.72 of the detector width) but lands on the neighbouring tile: a
    sparse dither layout in which each tile has one exposure that only
    other tiles' exposures overlap.

    Parameters
    ----------
    tiles : (int, int)
        Mosaic tiles along x and y, as given to :func:`simulate_mosaic`.
    dithers : int
        Exposures per tile (at least 2).
    size : float
        Step of the small box pattern, as a fraction of the detector size.
    jump : float
        Jump of the last dither, as a fraction of the detector width.

    Returns
    -------
    numpy.ndarray, shape (n_tiles, dithers, 2)
        Offsets as fractions of the detector size.
    """
    if dithers < 2:
        raise ValueError(f"isolated_dither_pattern needs at least 2 dithers, got {dithers}")
    box = [(0, 0), (1, 1), (1, 0), (0, 1), (0.5, 0.5), (1.5, 0.5), (0.5, 1.5), (1.5, 1.5)]
    small = np.array([box[i % len(box)] for i in range(dithers - 1)], dtype=float)
    small = (small - small.mean(axis=0)) * size
    ntx, nty = tiles
    out = np.zeros((ntx * nty, dithers, 2))
    for t in range(ntx * nty):
        out[t, :-1] = small
        out[t, -1] = (jump if t % ntx < ntx / 2 else -jump, 0.0)
    return out


# --------------------------------------------------------------------------
# Parameter bundles and the pieces both geometries share
# --------------------------------------------------------------------------
_T0 = 60310.0  # MJD of the first exposure, 2024-01-01
_TEXP = 300.0  # exposure time (s)


@dataclass(frozen=True)
class _Survey:
    """What is observed and how: tiles, visits, dithers, orientation."""

    instrument: str
    tiles: tuple[int, int]
    tile_overlap: float | tuple[float, float]
    visits_per_tile: int
    dithers: int
    dither_pattern: Any
    detectors: Sequence[str] | None
    roll: float | Sequence[float]
    center: tuple[float, float]
    filter: str | None
    seed: int

    @property
    def n_visits(self) -> int:
        """Every tile/repeat pair is a visit."""
        return self.tiles[0] * self.tiles[1] * self.visits_per_tile


@dataclass(frozen=True)
class _Offsets:
    """The additive background of the exposures and their noise (see :class:`MosaicTruth`)."""

    sky_level: float
    visit_offset_sigma: float
    exposure_offset_sigma: float
    gradient_sigma: float
    exposure_gradient_sigma: float
    lyot_offset_sigma: float
    detector_offset_sigma: float
    module_offset_sigma: float
    noise: float


@dataclass(frozen=True)
class _PointingErrors:
    """Per-visit pointing errors (drawn, or given as ``misalignment``) and a per-module extra."""

    misalign_arcsec: float
    misalign_roll: float
    misalignment: dict[int, tuple[float, float, float]] | None
    module_misalignment: dict[str, tuple[float, float]] | None


@dataclass(frozen=True)
class _SceneSpec:
    """The sky: extended emission, point sources, a common sky plane."""

    emission: float
    n_blobs: int | None
    n_sources: int
    psf_fwhm: float | None  # arcsec; default two pixels
    sky_gradient: float
    scene_seed: int | None  # default: the simulation's random stream


@dataclass(frozen=True)
class _Defects:
    """Fractions of bad, NaN and cosmic-ray pixels, and the chance and size of a masked disc."""

    bad_pixel_fraction: float
    nan_fraction: float
    cosmic_ray_fraction: float
    masked_region_probability: float
    masked_region_radius: float


@dataclass(frozen=True)
class _Output:
    """Where the exposures go (``out_dir``: saved there, paths kept) and whether they carry error arrays."""

    out_dir: str | Path | None
    minimal_arrays: bool


@dataclass(frozen=True)
class _SiafOptions:
    """What only the SIAF geometry takes: readouts, binning, MIRI pattern size, background model."""

    subarray: str | Sequence[str]
    binning: int
    pattern_size: str
    background: Any  # 'simple', 'jwst' or a simulate_siaf.JwstBackground


def _bundle(cls, params: dict[str, Any]):
    """The dataclass ``cls`` made of the ``simulate_mosaic`` arguments of the same names."""
    return cls(**{f.name: params[f.name] for f in fields(cls)})


@dataclass
class _VisitDraws:
    """Random quantities of the visits (visit ``v`` is row ``v - 1`` of the arrays)."""

    offsets: np.ndarray  # per-visit sky offset
    gradients: np.ndarray  # (n_visits, 2): plane change across a detector, data units
    detector_offsets: dict[str, float]
    module_offsets: dict[tuple[int, str], float]
    shifts: dict[int, tuple[float, float, float]]  # visit -> (dx", dy", droll deg)


def _draw_visits(
    rng: np.random.Generator,
    n_visits: int,
    detectors: Sequence[str],
    offsets: _Offsets,
    errors: _PointingErrors,
) -> _VisitDraws:
    """Per-visit offsets and gradients, then per-detector and per-module offsets and pointing errors.

    The last three are drawn only when asked for, so that other simulations
    keep their random stream; both geometries draw them in this order.
    """
    visit_offsets = rng.normal(0.0, offsets.visit_offset_sigma, n_visits)
    gradients = rng.normal(0.0, offsets.gradient_sigma, (n_visits, 2))
    detector_offsets = (
        {d: float(rng.normal(0.0, offsets.detector_offset_sigma)) for d in detectors}
        if offsets.detector_offset_sigma
        else {}
    )
    module_offsets = (
        {
            (v + 1, m): float(rng.normal(0.0, offsets.module_offset_sigma))
            for v in range(n_visits)
            for m in "AB"
        }
        if offsets.module_offset_sigma
        else {}
    )
    arcsec, roll = errors.misalign_arcsec, errors.misalign_roll
    shifts = {
        v + 1: (
            float(rng.normal(0.0, arcsec)) if arcsec else 0.0,
            float(rng.normal(0.0, arcsec)) if arcsec else 0.0,
            float(rng.normal(0.0, roll)) if roll else 0.0,
        )
        for v in range(n_visits)
    }
    if errors.misalignment is not None:
        shifts = {
            v + 1: tuple(float(x) for x in errors.misalignment.get(v + 1, (0.0, 0.0, 0.0)))
            for v in range(n_visits)
        }
    return _VisitDraws(visit_offsets, gradients, detector_offsets, module_offsets, shifts)


def _make_scene(
    rng: np.random.Generator, center: tuple[float, float], extent: float, pixel_scale: float, spec: _SceneSpec
) -> _Scene:
    """The sky over ``extent`` arcsec, on a grid of half a pixel unless that grid would be huge."""
    scale = pixel_scale / 2.0 if extent / pixel_scale < 6000 else pixel_scale
    psf_fwhm = 2.0 * pixel_scale if spec.psf_fwhm is None else spec.psf_fwhm
    n_blobs = spec.n_blobs if spec.n_blobs is not None else 40
    scene_rng = rng if spec.scene_seed is None else np.random.default_rng(spec.scene_seed)
    return _Scene(
        center, extent, scale, scene_rng, spec.emission, spec.n_sources, psf_fwhm, n_blobs, spec.sky_gradient
    )


@dataclass
class _Chip:
    """One detector (or subarray) readout as every exposure reads it out."""

    layout: InstrumentLayout  # shape, pixel scale, filter and ideal-frame angles of this readout
    det: Detector
    regions: tuple | None = None  # MIRI: where the Lyot is, where no sky falls (or None), what is flagged
    fits_wcs: bool = True  # write FITS WCS keywords fitted to the gwcs
    aperture: str | None = None  # SIAF aperture name


@dataclass
class _Readout:
    """One chip in one exposure: where it points and when."""

    chip: _Chip
    wcs: Any  # recorded in the model
    true_wcs: Any  # the data are rendered with it
    pointing: tuple[float, float, float]  # (ra, dec, roll) at ``ap_v2v3``
    ap_v2v3: tuple[float, float]
    visit: int
    tile: int
    dither: int
    start: float  # MJD

    @property
    def layout(self) -> InstrumentLayout:
        """The chip's layout."""
        return self.chip.layout

    @property
    def det(self) -> Detector:
        """The chip's detector."""
        return self.chip.det


def _stored(model, out_dir: str | Path | None):
    """The model itself, or (with ``out_dir``) the path it was saved to and closed."""
    if out_dir is None:
        return model
    path = Path(out_dir) / model.meta.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    model.close()
    return str(path)


class _Exposures:
    """Renders readouts into models, in order, and keeps them with their truth."""

    _COLUMNS = ("level", "grad", "voff", "drift", "lyot", "noise", "visit", "tile", "dither", "det")

    def __init__(
        self,
        rng: np.random.Generator,
        scene: _Scene,
        draws: _VisitDraws,
        common: float,
        offsets: _Offsets,
        defects: _Defects,
        emission: float,
        output: _Output,
    ):
        self.rng, self.scene, self.draws, self.common = rng, scene, draws, common
        self.offsets, self.defects, self.emission, self.output = offsets, defects, emission, output
        self.models: list = []
        self.true_wcs: list = []
        self.apertures: list[str | None] = []
        self.cols: dict[str, list] = {k: [] for k in self._COLUMNS}

    def add(self, r: _Readout, voff: float, drift: float, grad: np.ndarray, finish=None) -> None:
        """Render one readout and keep its model (``finish(model)`` first adds to its metadata).

        The sky level is the common one plus the visit's ``voff``, the
        exposure's ``drift`` and the detector's and module's offsets; ``grad``
        is the plane per detector pixel.  Random draws, in order: noise
        sigma, Lyot offset, pixel noise, defects.
        """
        rng, off = self.rng, self.offsets
        ny, nx = r.layout.shape
        level = (
            self.common
            + voff
            + drift
            + self.draws.detector_offsets.get(r.det.name, 0.0)
            + self.draws.module_offsets.get((r.visit, r.det.module), 0.0)
        )
        sigma = off.noise * rng.uniform(0.8, 1.2)
        miri = r.layout.instrument == "MIRI"
        lyot_off = rng.normal(0.0, off.lyot_offset_sigma) if (off.lyot_offset_sigma and miri) else 0.0

        data = self.scene.sample(r.true_wcs, (ny, nx))
        yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
        data += (level + grad[0] * (xx - (nx - 1) / 2.0) + grad[1] * (yy - (ny - 1) / 2.0)).astype(np.float32)
        dq = np.zeros((ny, nx), dtype=np.uint32)
        if r.chip.regions is not None:
            lyot, dark, flagged = r.chip.regions
            data[lyot] += np.float32(lyot_off)
            if dark is not None:
                data[dark] = 0.0  # not illuminated: no sky
            dq[flagged] |= NON_SCIENCE | DO_NOT_USE
        data += rng.normal(0.0, sigma, (ny, nx)).astype(np.float32)
        _add_defects(data, dq, rng, sigma, self.emission, xx, yy, self.defects)

        model = _make_model(r, data, dq, None if self.output.minimal_arrays else sigma)
        if finish is not None:
            finish(model)
        self.models.append(_stored(model, self.output.out_dir))
        self.true_wcs.append(r.true_wcs)
        self.apertures.append(r.chip.aperture)
        row = (level, grad, voff, drift, lyot_off, sigma, r.visit, r.tile, r.dither, r.det.name)
        for key, value in zip(self._COLUMNS, row, strict=True):
            self.cols[key].append(value)

    def mosaic(self, layout: InstrumentLayout, config: dict[str, Any]) -> SimulatedMosaic:
        """The simulated mosaic of every readout added."""
        truth = MosaicTruth.from_columns(self.cols, self.draws.shifts, self.common)
        return SimulatedMosaic(
            models=self.models,
            truth=truth,
            layout=layout,
            true_wcs=self.true_wcs,
            config=config,
            scene=self.scene,
        )


def simulate_mosaic(
    instrument: str = "miri",
    *,
    shape: tuple[int, int] | None = None,
    tiles: tuple[int, int] = (2, 2),
    tile_overlap: float = 0.2,
    visits_per_tile: int = 1,
    dithers: int = 4,
    dither_size: float = 0.03,
    dither_pattern: str | Sequence | np.ndarray | None = None,
    detectors: list[str] | None = None,
    roll: float | list[float] = 20.0,
    center: tuple[float, float] = (80.0, -69.5),
    sky_level: float = 15.0,
    visit_offset_sigma: float = 0.5,
    exposure_offset_sigma: float = 0.05,
    gradient_sigma: float = 0.0,
    sky_gradient: float = 0.0,
    lyot_offset_sigma: float = 0.0,
    detector_offset_sigma: float = 0.0,
    noise: float = 0.1,
    emission: float = 10.0,
    n_blobs: int = 40,
    n_sources: int = 60,
    psf_fwhm: float | None = None,
    bad_pixel_fraction: float = 0.002,
    nan_fraction: float = 0.001,
    cosmic_ray_fraction: float = 0.0005,
    masked_region_probability: float = 0.0,
    masked_region_radius: float = 0.2,
    misalign_arcsec: float = 0.0,
    misalign_roll: float = 0.0,
    distortion: bool = False,
    misalignment: dict[int, tuple[float, float, float]] | None = None,
    module_misalignment: dict[str, tuple[float, float]] | None = None,
    filter: str | None = None,
    scene_seed: int | None = None,
    out_dir: str | Path | None = None,
    minimal_arrays: bool = False,
    seed: int = 0,
    geometry: str = "simple",
    subarray: str | list[str] = "FULL",
    binning: int = 1,
    pattern_size: str = "MEDIUM",
    background: Any = "simple",
    exposure_gradient_sigma: float = 0.0,
    module_offset_sigma: float = 0.0,
) -> SimulatedMosaic:
    """Simulate a calibrated imaging mosaic with known additive sky offsets.

    Parameters
    ----------
    instrument : {'miri', 'nircam_long', 'nircam_short'}
        Imaging configuration (detector size, pixel scale, detector layout).
    shape : tuple of int, optional
        Detector shape ``(ny, nx)``; default is the instrument's full frame.
        Smaller shapes keep the pixel scale and give faster tests.
    tiles : (int, int)
        Mosaic tiles along detector x and y.
    tile_overlap : float
        Fraction of the aperture shared by neighbouring tiles (0.1 = 10 %).
        Negative values leave gaps.
    visits_per_tile : int
        Independent visits (epochs) of each tile; every tile/repeat pair is
        its own visit.
    dithers : int
        Exposures per visit, offset by a box/line dither pattern.
    dither_size : float
        Dither step as a fraction of the detector size.
    dither_pattern : array-like, optional
        Explicit dither offsets instead of the box pattern and
        ``dither_size``: fractions of the detector size along x and y, shape
        ``(dithers, 2)`` (the same in every tile) or ``(n_tiles, dithers, 2)``
        (one pattern per tile, tiles numbered along x first).  Offsets larger
        than the imaged field leave dithers that do not overlap their
        tile-mates.  With ``geometry='siaf'``: a JWST pattern name
        (``'CYCLING'``/``'REULEAUX'`` for MIRI, ``'INTRAMODULEBOX'``/
        ``'FULLBOX'``/``'INTRAMODULE'``/``'FULL'`` for NIRCam, ``'NONE'``) or
        explicit offsets in arcsec in the ideal frame of the pointing
        aperture.
    detectors : list of str, optional
        Subset of the layout's detectors (e.g. ``["NRCA1", "NRCA2"]``).
    roll : float
        Telescope roll (V3 position angle at the reference), degrees.  With
        ``geometry='siaf'``: APT's V3PA, at the pointing aperture's reference
        point; one value, or a list with one per visit.
    center : (float, float)
        Mosaic centre (RA, Dec), degrees.
    sky_level : float
        Common sky added to every exposure.
    visit_offset_sigma, exposure_offset_sigma : float
        Standard deviations of the per-visit offsets and of the per-exposure
        drift inside a visit.
    gradient_sigma : float
        Standard deviation of per-visit background gradients, in data units
        across the detector (the change from one edge to the opposite one):
        planes that differ between exposures, which matching must remove.
    sky_gradient : float
        A plane in the sky itself, common to all exposures, in data units per
        100 arcsec (random direction): part of the scene, not of the offsets.
    lyot_offset_sigma : float
        MIRI only: standard deviation of an extra offset in the Lyot region.
    detector_offset_sigma : float
        Standard deviation of a fixed offset per detector (the same in every
        exposure), as between the NIRCam short-wavelength chips.
    noise : float
        Per-pixel Gaussian noise sigma; exposure ``k`` gets ``noise`` times a
        factor in [0.8, 1.2].
    emission : float
        Typical peak brightness of the extended emission (point sources are
        brighter).
    n_blobs, n_sources : int
        Numbers of extended components and point sources in the scene.
    psf_fwhm : float, optional
        Point-source FWHM in arcsec (default two pixels).
    bad_pixel_fraction, nan_fraction, cosmic_ray_fraction : float
        Fractions of pixels flagged DO_NOT_USE (with junk values), set to NaN
        (and flagged), and hit by unflagged cosmic-ray-like outliers.
    masked_region_probability : float
        Chance that an exposure carries a large DO_NOT_USE disc (e.g. a
        saturated star's wings or a persistence region) at a random place.
    masked_region_radius : float
        Radius of that disc as a fraction of the detector width.
    misalign_arcsec, misalign_roll : float
        Standard deviations of per-visit pointing errors: the data are rendered
        with the shifted pointing while the model keeps the nominal WCS.
    distortion : bool
        NIRCam only: use the real NRCB1 distortion polynomial (from the jwst
        test data) instead of a linear detector-to-v2v3 transform.
    misalignment : dict, optional
        Explicit per-visit pointing errors ``{visit: (dx, dy, droll)}``
        (arcsec along the detector x and y axes, degrees), overriding
        ``misalign_arcsec``/``misalign_roll``: two bands observed in the same
        visits share them.
    module_misalignment : dict, optional
        Extra pointing error of the detectors of one module ``{'B': (dx,
        dy)}`` (arcsec along detector x and y), on top of the visit's: the
        inconsistency between the NIRCam modules' WCSs.
    filter : str, optional
        Filter name recorded in the models (default: the layout's).
    scene_seed : int, optional
        Seed of the scene alone (default: drawn from ``seed``), so that two
        simulations can share a sky while differing in everything else, or
        vice versa.
    out_dir : str or Path, optional
        Write each exposure's cal file here as soon as it is made and keep
        only its path (``models`` then holds paths): large mosaics need not
        fit in memory.  Use :func:`write_association` for the association.
    minimal_arrays : bool
        Leave out the error and variance arrays (sky matching reads only
        data, DQ and WCS); a third of the disk space.
    seed : int
        Random seed; everything is reproducible.
    geometry : {'simple', 'siaf'}
        ``'simple'``: hand-written detector layouts (v2/v3 references, linear
        detector-to-v2v3 transforms unless ``distortion``), pointings moved
        in detector pixels.  ``'siaf'``: the real apertures, subarrays,
        distortion, module gap and coronagraph regions from the SIAF
        (``pysiaf``), pointings as attitude matrices, JWST dither patterns
        and APT-style mosaic tiles (see :mod:`jwst_skymatch_plus.simulate_siaf`);
        ``shape``, ``dither_size`` and ``distortion`` do not apply there.
    subarray : str or list of str
        ``'siaf'`` only: readout of each visit (a list is used visit by
        visit in turn), e.g. ``['FULL', 'BRIGHTSKY']``.
    binning : int
        ``'siaf'`` only: each simulated pixel stands for ``binning x
        binning`` detector pixels (real geometry, fewer pixels).
    pattern_size : {'SMALL', 'MEDIUM', 'LARGE', 'DEFAULT'}
        ``'siaf'`` only: size of the MIRI dither patterns (``'DEFAULT'``:
        APT's own REULEAUX offsets; the other sizes are assumed).
    background : {'simple', 'jwst'} or JwstBackground
        ``'siaf'`` only for anything but ``'simple'``: ``'jwst'`` gives each
        exposure the filter's zodiacal plus thermal background, changing
        between visits and drifting with time inside them
        (:class:`jwst_skymatch_plus.simulate_siaf.JwstBackground`).
    exposure_gradient_sigma : float
        A plane per exposure (RMS change across the detector, data units),
        on top of the per-visit ``gradient_sigma``.
    module_offset_sigma : float
        NIRCam: an extra offset per module (A, B) and visit.

    Returns
    -------
    SimulatedMosaic
        Models (in memory, with ``meta.filename`` set), truth and layout.

    """
    params = dict(locals())  # the arguments, by name
    survey, offsets, errors, scene, defects, output = (
        _bundle(cls, params) for cls in (_Survey, _Offsets, _PointingErrors, _SceneSpec, _Defects, _Output)
    )
    if geometry == "siaf":
        if shape is not None:
            raise ValueError(
                "shape does not apply to geometry='siaf' (real apertures); use binning or subarray"
            )
        from .simulate_siaf import _simulate_siaf_mosaic

        options = _bundle(_SiafOptions, params)
        return _simulate_siaf_mosaic(survey, offsets, errors, scene, defects, output, options)
    if geometry != "simple":
        raise ValueError(f"geometry must be 'simple' or 'siaf', not {geometry!r}")
    unused = {
        "subarray": subarray != "FULL",
        "binning": binning != 1,
        "background": not (isinstance(background, str) and background == "simple"),
    }
    if any(unused.values()):
        names = ", ".join(k for k, v in unused.items() if v)
        raise ValueError(f"{names}: only with geometry='siaf'")
    layout = _simple_layout(instrument, shape, filter, detectors)
    return _simulate_simple(layout, survey, offsets, errors, scene, defects, output, dither_size, distortion)


# --------------------------------------------------------------------------
# The simple geometry
# --------------------------------------------------------------------------
def _simple_layout(
    instrument: str, shape: tuple[int, int] | None, filter: str | None, detectors: Sequence[str] | None
) -> InstrumentLayout:
    """The instrument's layout with another detector shape, filter or subset of detectors."""
    if instrument not in INSTRUMENTS:
        raise ValueError(f"Unknown instrument {instrument!r}; choose from {sorted(INSTRUMENTS)}")
    layout = INSTRUMENTS[instrument]
    if shape is not None:
        layout = replace(layout, shape=tuple(int(s) for s in shape))
    if filter is not None:
        layout = replace(layout, filter=filter)
    if detectors is not None:
        chosen = tuple(d for d in layout.detectors if d.name in detectors)
        if not chosen:
            raise ValueError(f"None of {detectors} is a detector of {instrument}")
        layout = replace(layout, detectors=chosen)
    if layout.instrument == "NIRCAM" and len(layout.detectors) > 1 and shape is not None:
        # Keep the chip gaps in proportion when the detectors are shrunk.
        shrink = layout.shape[1] / INSTRUMENTS[instrument].shape[1]
        v2a, v3a = INSTRUMENTS[instrument].aperture_v2v3
        layout = replace(
            layout,
            detectors=tuple(
                replace(d, v2_ref=v2a + (d.v2_ref - v2a) * shrink, v3_ref=v3a + (d.v3_ref - v3a) * shrink)
                for d in layout.detectors
            ),
        )
    return layout


def _tiled_span(layout: InstrumentLayout) -> tuple[float, float]:
    """Extent (detector pixels) of what one tile covers: every detector, or the MIRI imager field."""
    ny, nx = layout.shape
    ap_v2, ap_v3 = layout.aperture_v2v3
    inv = np.linalg.inv(_ideal_matrix(layout))
    det_off = np.array(
        [inv @ np.array([d.v2_ref - ap_v2, d.v3_ref - ap_v3]) / layout.pixel_scale for d in layout.detectors]
    )
    span_x = nx + np.ptp(det_off[:, 0])
    span_y = ny + np.ptp(det_off[:, 1])
    if layout.instrument == "MIRI":
        # Only the imager field right of the coronagraphs is tiled.
        span_x = nx - lyot_region(layout.shape)[1].stop
    return span_x, span_y


def _dither_patterns(
    layout: InstrumentLayout, tiles: tuple[int, int], dithers: int, dither_size: float, dither_pattern
) -> np.ndarray:
    """Dither offsets of every tile, ``(n_tiles, dithers, 2)`` detector pixels."""
    ny, nx = layout.shape
    base_pattern = [(0, 0), (1, 1), (1, 0), (0, 1), (0.5, 0.5), (1.5, 0.5), (0.5, 1.5), (1.5, 1.5)]
    if dithers > len(base_pattern):
        base_pattern = [(i % 4 * 0.5, i // 4 * 0.5) for i in range(dithers)]
    pattern = np.array(base_pattern[:dithers], dtype=float)
    pattern -= pattern.mean(axis=0)
    pattern *= dither_size * np.array([nx, ny])
    ntx, nty = tiles
    if dither_pattern is None:
        return np.broadcast_to(pattern, (ntx * nty, dithers, 2))
    if isinstance(dither_pattern, str):
        raise ValueError(
            f"dither_pattern={dither_pattern!r}: named JWST patterns need geometry='siaf'; "
            "the simple geometry takes explicit offsets (fractions of the detector)"
        )
    patterns = np.asarray(dither_pattern, dtype=float)
    if patterns.ndim == 2:
        patterns = np.broadcast_to(patterns, (ntx * nty, *patterns.shape))
    if patterns.shape != (ntx * nty, dithers, 2):
        raise ValueError(
            f"dither_pattern must have shape ({dithers}, 2) or ({ntx * nty}, {dithers}, 2) "
            f"for {dithers} dithers in {ntx * nty} tiles; got {np.shape(dither_pattern)}"
        )
    return patterns * np.array([nx, ny])


def _exposure_records(
    tiles: tuple[int, int], visits_per_tile: int, patterns: np.ndarray, step: tuple[float, float]
) -> list[tuple[int, int, int, float, float]]:
    """``(visit, tile, dither, dx, dy)`` of every exposure, tile by tile, repeat by repeat, dither by dither.

    ``dx, dy``: offset of the pointing from the mosaic centre (detector pixels).
    """
    ntx, nty = tiles
    records = []
    visit = 0
    for ty in range(nty):
        for tx in range(ntx):
            tile_index = ty * ntx + tx
            tile_dx = (tx - (ntx - 1) / 2.0) * step[0]
            tile_dy = (ty - (nty - 1) / 2.0) * step[1]
            for _rep in range(visits_per_tile):
                visit += 1
                for d in range(patterns.shape[1]):
                    ox, oy = patterns[tile_index, d]
                    records.append((visit, tile_index, d, tile_dx + ox, tile_dy + oy))
    return records


def _simple_readouts(
    layout: InstrumentLayout,
    base_pointing: tuple[float, float, float],
    record: tuple[int, int, int, float, float],
    start: float,
    shift: tuple[float, float, float],
    errors: _PointingErrors,
    distortion: bool,
    chips: Sequence[_Chip],
) -> list[_Readout]:
    """Every chip of one exposure, with its nominal WCS and the true one (``shift`` and module errors)."""
    v, tile_index, d, dx, dy = record
    ap_v2v3 = layout.aperture_v2v3
    pointing = _offset_pointing(layout, base_pointing, dx, dy)
    true_pointing = _misaligned(pointing, layout, shift[:2], shift[2])
    readouts = []
    for chip in chips:
        det = chip.det
        det2v23 = _det2v23_model(layout, det, layout.shape, distortion and layout.instrument == "NIRCAM")
        extra = (errors.module_misalignment or {}).get(det.module)
        det_pointing = (
            true_pointing
            if extra is None
            else _misaligned(pointing, layout, (shift[0] + extra[0], shift[1] + extra[1]), shift[2])
        )
        wcs = _make_gwcs(det2v23, pointing, ap_v2v3, layout.shape)
        twcs = _make_gwcs(det2v23, det_pointing, ap_v2v3, layout.shape)
        readouts.append(_Readout(chip, wcs, twcs, pointing, ap_v2v3, v, tile_index, d, start))
    return readouts


def _simulate_simple(
    layout: InstrumentLayout,
    survey: _Survey,
    offsets: _Offsets,
    errors: _PointingErrors,
    scene_spec: _SceneSpec,
    defects: _Defects,
    output: _Output,
    dither_size: float,
    distortion: bool,
) -> SimulatedMosaic:
    """``simulate_mosaic`` on hand-written layouts, pointings moved in detector pixels."""
    rng = np.random.default_rng(survey.seed)
    ny, nx = layout.shape
    span = _tiled_span(layout)
    patterns = _dither_patterns(layout, survey.tiles, survey.dithers, dither_size, survey.dither_pattern)
    step = ((1.0 - survey.tile_overlap) * span[0], (1.0 - survey.tile_overlap) * span[1])
    records = _exposure_records(survey.tiles, survey.visits_per_tile, patterns, step)
    draws = _draw_visits(rng, survey.n_visits, [det.name for det in layout.detectors], offsets, errors)
    visit_gradients = draws.gradients / np.array([nx, ny])

    # Scene big enough for every pointing.
    ntx, nty = survey.tiles
    half_extent = 0.5 * math.hypot(
        ntx * step[0] + span[0] + 2 * np.abs(patterns[..., 0]).max(),
        nty * step[1] + span[1] + 2 * np.abs(patterns[..., 1]).max(),
    )
    max_shift = max([errors.misalign_arcsec * 4.0] + [math.hypot(*v[:2]) for v in draws.shifts.values()])
    extent = 2.0 * half_extent * layout.pixel_scale + 2.0 * max_shift + 10.0
    scene = _make_scene(rng, survey.center, extent, layout.pixel_scale, scene_spec)

    exposures = _Exposures(
        rng, scene, draws, offsets.sky_level, offsets, defects, scene_spec.emission, output
    )
    miri = layout.instrument == "MIRI"
    regions = (lyot_region(layout.shape), None, _coronagraph_strip(layout.shape)) if miri else None
    chips = [_Chip(layout, det, regions) for det in layout.detectors]
    base_pointing = (survey.center[0], survey.center[1], survey.roll)
    drift_state: dict[int, float] = {}
    for n_exp, record in enumerate(records):
        v, _, d = record[:3]
        start = _T0 + n_exp * _TEXP / 86400.0
        readouts = _simple_readouts(
            layout, base_pointing, record, start, draws.shifts[v], errors, distortion, chips
        )
        # Per-exposure drift: a random walk inside each visit (thermal drifts).
        drift = drift_state.get(v, 0.0) + (rng.normal(0.0, offsets.exposure_offset_sigma) if d else 0.0)
        drift_state[v] = drift
        exposure_grad = (
            rng.normal(0.0, offsets.exposure_gradient_sigma, 2) / np.array([nx, ny])
            if offsets.exposure_gradient_sigma
            else 0.0
        )
        for r in readouts:
            exposures.add(r, draws.offsets[v - 1], drift, visit_gradients[v - 1] + exposure_grad)

    config = {
        "instrument": survey.instrument,
        "shape": layout.shape,
        "tiles": survey.tiles,
        "dithers": survey.dithers,
        "visits_per_tile": survey.visits_per_tile,
        "seed": survey.seed,
        "noise": offsets.noise,
    }
    return exposures.mosaic(layout, config)


def _add_defects(
    data: np.ndarray,
    dq: np.ndarray,
    rng: np.random.Generator,
    sigma: float,
    emission: float,
    xx: np.ndarray,
    yy: np.ndarray,
    defects: _Defects,
) -> None:
    """Bad pixels, NaNs, unflagged cosmic rays and masked discs, in place (in this order)."""
    ny, nx = data.shape
    npx = data.size
    if defects.bad_pixel_fraction:
        idx = rng.choice(npx, int(defects.bad_pixel_fraction * npx), replace=False)
        data.flat[idx] = rng.uniform(-1e3, 1e4, idx.size)
        dq.flat[idx] |= DO_NOT_USE
    if defects.nan_fraction:
        idx = rng.choice(npx, int(defects.nan_fraction * npx), replace=False)
        data.flat[idx] = np.nan
        dq.flat[idx] |= DO_NOT_USE
    if defects.cosmic_ray_fraction:
        idx = rng.choice(npx, int(defects.cosmic_ray_fraction * npx), replace=False)
        data.flat[idx] += rng.uniform(20, 200, idx.size) * sigma
    if defects.masked_region_probability and rng.uniform() < defects.masked_region_probability:
        rad = defects.masked_region_radius * nx
        cx, cy = rng.uniform(0.2 * nx, 0.8 * nx), rng.uniform(0.2 * ny, 0.8 * ny)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < rad**2
        # Masked areas hold bright junk: what a saturated source leaves.
        data[disc] += np.float32(50.0 * emission)
        dq[disc] |= DO_NOT_USE


def _make_model(r: _Readout, data: np.ndarray, dq: np.ndarray, sigma: float | None):
    """An ImageModel of one readout, with the metadata ``calwebb_image3`` needs offline."""
    from jwst.assign_wcs.pointing import compute_roll_ref
    from jwst.assign_wcs.util import update_s_region_imaging
    from stdatamodels.jwst.datamodels import ImageModel

    layout, det, wcs, pointing, visit, start = r.layout, r.det, r.wcs, r.pointing, r.visit, r.start
    exp_number, texp = r.dither + 1, _TEXP
    ap_v2v3, fits_wcs = r.ap_v2v3, r.chip.fits_wcs
    ny, nx = layout.shape
    model = ImageModel(data=data, dq=dq, validate_on_assignment=False)
    if sigma is not None:
        model.err = np.full(layout.shape, sigma, dtype=np.float32)
        model.var_rnoise = np.full(layout.shape, 0.5 * sigma**2, dtype=np.float32)
        model.var_poisson = np.full(layout.shape, 0.5 * sigma**2, dtype=np.float32)
        model.var_flat = np.zeros(layout.shape, dtype=np.float32)
    model.meta.telescope = "JWST"
    model.meta.bunit_data = "MJy/sr"
    model.meta.bunit_err = "MJy/sr"
    model.meta.instrument.name = layout.instrument
    model.meta.instrument.detector = det.name
    model.meta.instrument.filter = layout.filter
    if layout.channel:
        model.meta.instrument.channel = layout.channel
    if det.module:
        model.meta.instrument.module = det.module
    if layout.pupil:
        model.meta.instrument.pupil = layout.pupil
    program, observation = "01234", "001"
    model.meta.observation.program_number = program
    model.meta.observation.observation_number = observation
    model.meta.observation.visit_number = f"{visit:03d}"
    model.meta.observation.visit_group = "01"
    model.meta.observation.sequence_id = "1"
    model.meta.observation.activity_id = "01"
    model.meta.observation.exposure_number = f"{exp_number:05d}"
    model.meta.observation.visit_id = f"{program}{observation}{visit:03d}"
    model.meta.observation.obs_id = f"V{program}{observation}{visit:03d}P0000000001101"
    from astropy.time import Time

    t = Time(start, format="mjd")
    model.meta.observation.date = t.strftime("%Y-%m-%d")
    model.meta.observation.time = t.strftime("%H:%M:%S.%f")[:12]
    model.meta.exposure.type = layout.exp_type
    model.meta.exposure.start_time = start
    model.meta.exposure.mid_time = start + 0.5 * texp / 86400.0
    model.meta.exposure.end_time = start + texp / 86400.0
    model.meta.exposure.exposure_time = texp
    model.meta.exposure.effective_exposure_time = texp
    model.meta.exposure.measurement_time = texp
    model.meta.exposure.duration = texp
    model.meta.exposure.integration_time = texp
    model.meta.exposure.nints = 1
    model.meta.exposure.ngroups = 10
    model.meta.exposure.nframes = 1
    model.meta.exposure.groupgap = 0
    model.meta.exposure.frame_time = texp / 10
    model.meta.exposure.group_time = texp / 10
    model.meta.exposure.readpatt = layout.readpatt
    model.meta.subarray.name = "FULL"
    model.meta.subarray.xstart = 1
    model.meta.subarray.ystart = 1
    model.meta.subarray.xsize = nx
    model.meta.subarray.ysize = ny
    model.meta.subarray.fastaxis = 1
    model.meta.subarray.slowaxis = 2

    ra, dec, roll = pointing
    v2a, v3a = ap_v2v3
    ra_ref, dec_ref = wcs.get_transform("v2v3", "world")(det.v2_ref, det.v3_ref)
    roll_ref = compute_roll_ref(
        v2a / 3600.0, v3a / 3600.0, roll, ra, dec, det.v2_ref / 3600.0, det.v3_ref / 3600.0
    )
    model.meta.wcsinfo.v2_ref = det.v2_ref
    model.meta.wcsinfo.v3_ref = det.v3_ref
    model.meta.wcsinfo.v3yangle = layout.v3yangle
    model.meta.wcsinfo.vparity = layout.vparity
    model.meta.wcsinfo.ra_ref = float(ra_ref)
    model.meta.wcsinfo.dec_ref = float(dec_ref)
    model.meta.wcsinfo.roll_ref = float(roll_ref)
    model.meta.wcsinfo.wcsaxes = 2
    model.meta.wcsinfo.ctype1 = "RA---TAN"
    model.meta.wcsinfo.ctype2 = "DEC--TAN"
    model.meta.wcs = wcs
    model.meta.cal_step.assign_wcs = "COMPLETE"
    model.meta.cal_step.flat_field = "COMPLETE"
    model.meta.cal_step.photom = "COMPLETE"
    area_sr = (layout.pixel_scale / 206264.806247) ** 2
    model.meta.photometry.pixelarea_steradians = area_sr
    model.meta.photometry.pixelarea_arcsecsq = layout.pixel_scale**2
    stcal_log = logging.getLogger("stcal.alignment.util")
    level = stcal_log.level
    stcal_log.setLevel(logging.WARNING)  # it reports every S_REGION update at INFO
    try:
        update_s_region_imaging(model)
    finally:
        stcal_log.setLevel(level)
    if fits_wcs:
        _update_fits_wcs(model)
    model.meta.filename = (
        f"jw{program}{observation}{visit:03d}_01101_{exp_number:05d}_{det.name.lower()}_cal.fits"
    )
    return model


def _update_fits_wcs(model) -> None:
    """Write the FITS WCS keywords (CRPIX/CRVAL/CD) that approximate the gwcs."""
    from astropy.coordinates import SkyCoord
    from astropy.wcs.utils import fit_wcs_from_points

    ny, nx = model.data.shape
    yy, xx = np.mgrid[0 : ny : max(ny // 8, 1), 0 : nx : max(nx // 8, 1)]
    xx = xx.ravel().astype(float)
    yy = yy.ravel().astype(float)
    ra, dec = model.meta.wcs(xx, yy)
    fits_wcs = fit_wcs_from_points((xx, yy), SkyCoord(ra, dec, unit="deg"), projection="TAN")
    wi = model.meta.wcsinfo
    wi.crpix1, wi.crpix2 = (float(v) for v in fits_wcs.wcs.crpix)
    wi.crval1, wi.crval2 = (float(v) for v in fits_wcs.wcs.crval)
    cd = fits_wcs.wcs.cd if fits_wcs.wcs.has_cd() else fits_wcs.wcs.pc * fits_wcs.wcs.cdelt[:, None]
    scale = math.sqrt(abs(np.linalg.det(cd)))
    wi.cdelt1 = scale
    wi.cdelt2 = scale
    pc = cd / scale
    wi.pc1_1, wi.pc1_2, wi.pc2_1, wi.pc2_2 = (float(v) for v in pc.ravel())
    wi.cunit1 = "deg"
    wi.cunit2 = "deg"


# --------------------------------------------------------------------------
# Truth comparisons
# --------------------------------------------------------------------------
def alignment_errors(
    models, true_wcs, pixel_scale: float, relative: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """How far each exposure's WCS is from the one its data were rendered with, in pixels.

    Compared on a 5 x 5 grid over each detector.  A relative alignment
    (exposures aligned to each other, no absolute catalog) is defined only
    up to one shift and rotation of the whole mosaic, e.g. those of the
    visit chosen as reference: with ``relative`` the best such common
    transform is removed first.

    Parameters
    ----------
    models : sequence of ImageModel
        Exposures with the WCS to check.
    true_wcs : sequence
        Their true gwcs (``SimulatedMosaic.true_wcs``).
    pixel_scale : float
        Arcsec per pixel (``SimulatedMosaic.layout.pixel_scale``).
    relative : bool
        Remove the common rigid transform.

    Returns
    -------
    mean, worst : numpy.ndarray
        Per exposure: length of the mean offset vector, and the largest
        offset of any grid point.
    """
    from .core.alignment import fit_sky_affine

    got, true = [], []
    for m, tw in zip(models, true_wcs, strict=True):
        ny, nx = m.data.shape
        x, y = (a.ravel() for a in np.meshgrid(np.linspace(0, nx - 1, 5), np.linspace(0, ny - 1, 5)))
        got.append(np.asarray(m.meta.wcs(x, y)))
        true.append(np.asarray(tw(x, y)))
    ra, dec = np.concatenate(got, axis=1)
    ra_t, dec_t = np.concatenate(true, axis=1)
    if relative:
        common, _ = fit_sky_affine(ra, dec, ra_t, dec_t, float(ra.mean()), float(dec.mean()), "rshift")
        ra, dec = common.apply(ra, dec)
    dx = (ra - ra_t + 180.0) % 360.0 - 180.0
    err = np.stack([dx * np.cos(np.radians(dec_t)), dec - dec_t]) * 3600.0 / pixel_scale
    err = err.reshape(2, len(got), -1)
    return np.hypot(*err.mean(axis=2)), np.hypot(*err).max(axis=1)


def recorded_levels(library) -> np.ndarray:
    """``meta.background.level`` of every exposure of a ModelLibrary (NaN where unset).

    What a sky-matching step recorded, to compare with the truth.
    """
    from .inputs import each_model

    levels = [model.meta.background.level for _, model in each_model(library)]
    return np.array([np.nan if level is None else float(level) for level in levels])


def level_match_totals(library) -> np.ndarray:
    """Total level LevelMatchStep removed from each exposure's main field (all stages but Lyot)."""
    from .inputs import each_model

    out = []
    for _, model in each_model(library):
        stages = model.meta.instance["skymatch_plus"]["level_match"]["corrections"]
        out.append(sum(c["level"] for stage, c in stages.items() if stage != "lyot"))
    return np.array(out)


def offset_rms_error(recovered: np.ndarray, truth: np.ndarray, labels: np.ndarray | None = None) -> float:
    """RMS error of recovered offsets after removing the free constant.

    Sky matching determines offsets only up to one constant per connected set
    of exposures (``labels``); that constant is removed before comparing.
    """
    recovered = np.asarray(recovered, dtype=float)
    truth = np.asarray(truth, dtype=float)
    labels = np.zeros(len(truth), dtype=int) if labels is None else np.asarray(labels)
    resid = recovered - truth
    ok = np.isfinite(resid)
    out = np.full_like(resid, np.nan)
    for lab in np.unique(labels[ok]):
        sel = ok & (labels == lab)
        out[sel] = resid[sel] - resid[sel].mean()
    return float(np.sqrt(np.nanmean(out**2)))


def _sample_points(shape: tuple[int, int], fit_type: str) -> tuple[np.ndarray, np.ndarray]:
    ny, nx = shape
    if fit_type == "level":
        return np.array([(nx - 1) / 2.0]), np.array([(ny - 1) / 2.0])
    xs, ys = np.meshgrid(np.linspace(0, nx - 1, 3), np.linspace(0, ny - 1, 3))
    return xs.ravel(), ys.ravel()


def _gauge_basis(
    mosaic: SimulatedMosaic, fit_type: str, sky_plane: bool = False
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sky-plane basis at every exposure's sample points (what matching cannot fix).

    ``sky_plane`` makes it a plane for levels too (see :func:`offset_plane_free_error`).
    """
    rows, pts = [], []
    ra0 = mosaic.models[0].meta.wcsinfo.ra_ref
    dec0 = mosaic.models[0].meta.wcsinfo.dec_ref
    cosd = math.cos(math.radians(dec0))
    for m in mosaic.models:
        x, y = _sample_points(m.data.shape, fit_type)
        pts.append((x, y))
        if fit_type == "level" and not sky_plane:
            rows.append(np.ones((x.size, 1)))
        else:
            ra, dec = m.meta.wcs(x, y)
            # Tangent-plane offsets in arcsec: a common sky plane is linear in them.
            u = (np.asarray(ra) - ra0) * cosd * 3600.0
            v = (np.asarray(dec) - dec0) * 3600.0
            rows.append(np.column_stack([np.ones(x.size), u / 100.0, v / 100.0]))
    return np.vstack(rows), pts


def background_rms_error(mosaic: SimulatedMosaic, planes, fit_type: str = "level+slope") -> float:
    """RMS error of recovered per-exposure backgrounds, free sky plane removed.

    Parameters
    ----------
    mosaic : SimulatedMosaic
        The simulation (truth).
    planes : sequence of (level, slope_x, slope_y)
        Recovered background of each exposure in its detector frame, around
        the detector centre (slopes per pixel); NaN rows are skipped.
    fit_type : {'level', 'level+slope'}
        'level' compares at detector centres with one free constant;
        'level+slope' compares at a 3 x 3 grid of detector points with one
        free sky plane (what plane matching cannot determine) removed.
    """
    basis, pts = _gauge_basis(mosaic, fit_type)
    diffs, keep = [], []
    for k, (m, (x, y)) in enumerate(zip(mosaic.models, pts, strict=True)):
        level, sx, sy = (float(v) for v in planes[k])
        ny, nx = m.data.shape
        rec = level + sx * (x - (nx - 1) / 2.0) + sy * (y - (ny - 1) / 2.0)
        diffs.append(rec - mosaic.truth.plane_at(k, x, y, m.data.shape))
        keep.append(np.full(x.size, np.isfinite(level)))
    d, ok = np.concatenate(diffs), np.concatenate(keep)
    coeffs, *_ = np.linalg.lstsq(basis[ok], d[ok], rcond=None)
    resid = d[ok] - basis[ok] @ coeffs
    return float(np.sqrt(np.mean(resid**2)))


def offset_plane_free_error(mosaic: SimulatedMosaic, recovered: np.ndarray) -> float:
    """RMS error of recovered offsets after removing a common sky plane.

    When the exposures' backgrounds are planes (``gradient_sigma``,
    ``exposure_gradient_sigma``), their mean slope cannot be told from a
    slope of the sky itself: any method, level or plane, finds the offsets
    at the detector centres only up to a constant *and* that plane across
    the mosaic, and :func:`offset_rms_error` would count the mean slope the
    simulation happened to draw as everyone's error.  This removes the
    best-fitting sky plane (constant and two slopes, in tangent-plane
    coordinates of the detector centres) from the errors instead of the
    constant alone; compare it with
    ``offset_noise_floor(mosaic, sky_plane=True)``.  Exposures with a NaN
    offset are left out.
    """
    basis, _ = _gauge_basis(mosaic, "level", sky_plane=True)
    resid = np.asarray(recovered, dtype=float) - mosaic.truth.level
    ok = np.isfinite(resid)
    coeffs, *_ = np.linalg.lstsq(basis[ok], resid[ok], rcond=None)
    return float(np.sqrt(np.mean((resid[ok] - basis[ok] @ coeffs) ** 2)))


def offset_noise_floor(
    mosaic: SimulatedMosaic, bin_size: int = 4, exclude_lyot: bool = True, sky_plane: bool = False
) -> float:
    """Noise-limited RMS error of per-exposure offsets (Cramer-Rao bound).

    See :func:`background_noise_floor`; this is its ``fit_type='level'`` case.
    """
    return background_noise_floor(
        mosaic, "level", bin_size=bin_size, exclude_lyot=exclude_lyot, sky_plane=sky_plane
    )


def background_noise_floor(
    mosaic: SimulatedMosaic,
    fit_type: str = "level",
    bin_size: int = 4,
    exclude_lyot: bool = True,
    sky_plane: bool = False,
) -> float:
    """Noise-limited RMS error of per-exposure backgrounds (Cramer-Rao bound).

    Treats every sky position as an unknown and every exposure's background
    (a constant, or a plane in detector coordinates) as parameters, with each
    exposure's known Gaussian noise and valid-pixel mask, and returns the
    RMS of the standard error of the best unbiased estimate, measured as
    :func:`background_rms_error` / :func:`offset_rms_error` measure errors
    (free constant or sky plane removed): what an ideal estimator using every
    overlapping pixel could reach.  Pixels are binned ``bin_size`` x
    ``bin_size`` to keep this cheap; the bound is exact for the mean when the
    coverage is constant inside a bin.  With ``sky_plane`` the levels'
    errors are measured as :func:`offset_plane_free_error` measures them
    (a common sky plane removed, not only a constant).
    """
    import scipy.sparse as sp
    from astropy.wcs import WCS

    models = mosaic.models
    layout = mosaic.layout
    n = len(models)
    npar = 1 if fit_type == "level" else 3
    scale = layout.pixel_scale * bin_size / 3600.0
    ra0, dec0 = models[0].meta.wcsinfo.ra_ref, models[0].meta.wcsinfo.dec_ref
    grid = WCS(naxis=2)
    grid.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    grid.wcs.crval = [ra0, dec0]
    grid.wcs.crpix = [0.0, 0.0]
    grid.wcs.cdelt = [-scale, scale]
    keys, cols, vals, basis_vals = [], [], [], []
    for k, m in enumerate(models):
        ny, nx = m.data.shape
        good = np.isfinite(m.data) & ((m.dq & DO_NOT_USE) == 0)
        region = lyot_region_of(m, m.data.shape) if exclude_lyot else None
        if region is not None:
            good[region] = False
        by, bx = ny // bin_size, nx // bin_size
        counts = good[: by * bin_size, : bx * bin_size].reshape(by, bin_size, bx, bin_size).sum(axis=(1, 3))
        yy, xx = np.mgrid[0:by, 0:bx]
        xc = (xx * bin_size + (bin_size - 1) / 2.0).ravel()
        yc = (yy * bin_size + (bin_size - 1) / 2.0).ravel()
        ra, dec = m.meta.wcs(xc, yc)
        gx, gy = grid.world_to_pixel_values(ra, dec)
        keep = counts.ravel() > 0
        keys.append(np.round(gx[keep]).astype(np.int64) * 1_000_003 + np.round(gy[keep]).astype(np.int64))
        cols.append(np.full(keep.sum(), k))
        # Information per binned pixel: valid native pixels / sigma^2.
        vals.append(counts.ravel()[keep] / mosaic.truth.noise[k] ** 2)
        basis_vals.append(
            np.column_stack(
                [np.ones(keep.sum()), (xc[keep] - (nx - 1) / 2.0) / nx, (yc[keep] - (ny - 1) / 2.0) / ny]
            )[:, :npar]
        )
    _, rows = np.unique(np.concatenate(keys), return_inverse=True)
    exp = np.concatenate(cols)
    w = np.concatenate(vals)
    g = np.vstack(basis_vals)
    npix = rows.max() + 1
    # Fisher information with the sky at each position eliminated:
    # sum_p [ sum_k w g g^T (block-diagonal) - (sum_k w g)(sum_k w g)^T / W_p ].
    vw = sp.csr_matrix(
        ((w[:, None] * g).ravel(), (np.repeat(rows, npar), (exp[:, None] * npar + np.arange(npar)).ravel())),
        shape=(npix, n * npar),
    )
    wsum = np.bincount(rows, weights=w, minlength=npix)
    block = np.zeros((n * npar, n * npar))
    for k in range(n):
        sel = exp == k
        gk = g[sel]
        block[k * npar : (k + 1) * npar, k * npar : (k + 1) * npar] = (gk * w[sel, None]).T @ gk
    fisher = block - (vw.T @ sp.diags(1.0 / wsum) @ vw).toarray()
    cov = np.linalg.pinv(fisher, rcond=1e-10, hermitian=True)
    # Propagate to background values at the comparison points, then remove
    # what matching cannot determine (the gauge), as the error metric does.
    basis, pts = _gauge_basis(mosaic, fit_type, sky_plane)
    rows_g = []
    for k, (m, (x, y)) in enumerate(zip(models, pts, strict=True)):
        ny, nx = m.data.shape
        gk = np.column_stack([np.ones(x.size), (x - (nx - 1) / 2.0) / nx, (y - (ny - 1) / 2.0) / ny])[
            :, :npar
        ]
        row = np.zeros((x.size, n * npar))
        row[:, k * npar : (k + 1) * npar] = gk
        rows_g.append(row)
    jac = np.vstack(rows_g)
    cov_v = jac @ cov @ jac.T
    proj = np.eye(basis.shape[0]) - basis @ np.linalg.pinv(basis)
    cov_v = proj @ cov_v @ proj
    return float(np.sqrt(np.trace(cov_v) / basis.shape[0]))
