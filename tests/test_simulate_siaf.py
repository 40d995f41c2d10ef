"""The simulator's real (SIAF) geometry against pysiaf, and the steps on it end to end."""

import copy

import numpy as np
import pytest
from conftest import copy_models, levels_of, nircam_module_mosaic

from jwst_skymatch_plus import PixelSkyMatchStep
from jwst_skymatch_plus import simulate_siaf as ss
from jwst_skymatch_plus._offline import import_pysiaf
from jwst_skymatch_plus.pipeline import Image3PlusPipeline
from jwst_skymatch_plus.simulate import (
    DO_NOT_USE,
    NON_SCIENCE,
    level_match_totals,
    offset_noise_floor,
    offset_rms_error,
    simulate_mosaic,
)
from jwst_skymatch_plus.steps.level_match import LevelMatchStep

# pysiaf is imported with its online PRD check skipped (tests are offline).
pysiaf = import_pysiaf()
rotations = pysiaf.utils.rotations

OFFLINE = {"tweakreg": {"skip": True}, "source_catalog": {"skip": True}}


@pytest.fixture(scope="module")
def siafs():
    """Fresh pysiaf objects (never the simulator's cached ones)."""
    return {"MIRI": pysiaf.Siaf("MIRI"), "NIRCAM": pysiaf.Siaf("NIRCam")}


def _all_apertures(siafs) -> list[str]:
    names = list(ss.MIRI_SUBARRAYS.values())
    for det in ss.NIRCAM_SHORT + ss.NIRCAM_LONG:
        names += [f"{det}_{s}" for s in ss.NIRCAM_SUBARRAYS if f"{det}_{s}" in siafs["NIRCAM"].apertures]
    return names


def _pysiaf_sky(siafs, name, attitude, x_sci, y_sci):
    """pysiaf's science -> sky (what ``Aperture.sci_to_sky`` does once given the attitude)."""
    aperture = siafs["MIRI" if name.startswith("MIRIM") else "NIRCAM"][name]
    ra, dec = rotations.tel_to_sky(attitude, *aperture.sci_to_tel(x_sci, y_sci))
    return ra.to_value("deg"), dec.to_value("deg")


def _pixels(ra, dec, ra_ref, dec_ref, scale):
    """Angular distance between two sets of positions, in pixels of ``scale`` arcsec."""
    dra = ((np.asarray(ra) - ra_ref + 180.0) % 360.0 - 180.0) * np.cos(np.radians(dec_ref))
    return np.hypot(dra, np.asarray(dec) - dec_ref) * 3600.0 / scale


def _grid(shape, n=7):
    """Corners (pixel edges) plus an n x n grid over a detector (0-based pixels)."""
    ny, nx = shape
    x, y = np.meshgrid(np.linspace(0, nx - 1, n), np.linspace(0, ny - 1, n))
    cx = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    cy = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    return np.concatenate([cx, x.ravel()]), np.concatenate([cy, y.ravel()])


# --------------------------------------------------------------------------
# Geometry against pysiaf
# --------------------------------------------------------------------------
def _siaf_self_discrepancy(siafs, name) -> float:
    """How far (pixels) the SIAF's own subarray polynomial strays from its full frame's, pysiaf alone."""
    siaf = siafs["MIRI" if name.startswith("MIRIM") else "NIRCAM"]
    sub, full = siaf[name], siaf[name.split("_")[0] + "_FULL"]
    if sub is full or name.endswith("_FULL"):
        return 0.0
    x0, y0 = full.det_to_sci(*sub.sci_to_det(1.0, 1.0))
    x, y = (
        a.ravel()
        for a in np.meshgrid(np.linspace(0.5, sub.XSciSize + 0.5, 5), np.linspace(0.5, sub.YSciSize + 0.5, 5))
    )
    v2, v3 = sub.sci_to_tel(x, y)
    v2f, v3f = full.sci_to_tel(x + x0 - 1, y + y0 - 1)
    return float(np.hypot(v2 - v2f, v3 - v3f).max() / sub.XSciScale)


@pytest.mark.parametrize("binning", [1, 4])
def test_every_aperture_maps_to_the_sky_as_pysiaf_does(siafs, binning):
    attitude = ss.attitude_for("NRCALL_FULL", 150.1, 2.2, 71.0, 5.0, -3.0)
    names = _all_apertures(siafs)
    assert len(names) == 60
    if binning > 1:  # binned: the full frames and the MIRI subarrays
        names = [n for n in names if n.endswith("_FULL") or n.startswith("MIRIM")]
    for name in names:
        ap = ss.siaf_aperture(name, binning)
        wcs, _ = ss.exposure_wcs(ap, attitude)
        x, y = _grid(ap.shape)
        ra, dec = wcs(x, y, with_bounding_box=False)
        b = binning
        # Simulated pixel (x, y) is full-frame science pixel xstart + b x + (b - 1) / 2 (one-based) ...
        xf, yf = ap.xstart + b * x + (b - 1) / 2.0, ap.ystart + b * y + (b - 1) / 2.0
        ra_f, dec_f = _pysiaf_sky(siafs, ap.frame, attitude, xf, yf)
        err = _pixels(ra, dec, ra_f, dec_f, ap.pixel_scale * b)
        assert err.max() < 0.01, f"{name}: {err.max():.3g} pixel from pysiaf's {ap.frame}"
        # ... and the aperture's own science pixel b x + (b + 1) / 2: pysiaf's transform of the
        # aperture itself, up to the SIAF's own disagreement between subarray and full frame.
        ra_s, dec_s = _pysiaf_sky(siafs, name, attitude, b * x + (b + 1) / 2.0, b * y + (b + 1) / 2.0)
        err = _pixels(ra, dec, ra_s, dec_s, ap.pixel_scale * b)
        assert err.max() < 0.01 + _siaf_self_discrepancy(siafs, name) / b, name
        # The inverse (used by blot and outlier detection) returns to the pixel.
        xi, yi = wcs.invert(ra, dec, with_bounding_box=False)
        assert np.hypot(xi - x, yi - y).max() < 0.01, name


def test_the_siaf_itself_disagrees_on_some_subarrays(siafs):
    """Why subarrays use their detector's full-frame distortion (as assign_wcs does)."""
    worst = {name: _siaf_self_discrepancy(siafs, name) for name in _all_apertures(siafs)}
    assert 0.1 < worst["NRCA3_SUB160"] < 0.2 and 0.1 < worst["NRCA2_SUB640"] < 0.2
    assert max(v for k, v in worst.items() if k.startswith("MIRIM")) < 0.01


def test_simulated_exposures_match_pysiaf_from_their_own_metadata(siafs):
    """What a user of real data does: attitude from ra_ref/dec_ref/roll_ref, then pysiaf."""
    sim = simulate_mosaic(
        "nircam_long", geometry="siaf", binning=16, tiles=(2, 1), dithers=2, subarray=["FULL", "SUB400P"]
    )
    names = {m.meta.aperture.name for m in sim.models}
    assert names == {"NRCA5_FULL", "NRCB5_FULL", "NRCA5_SUB400P", "NRCB5_SUB400P"}
    for m in sim.models:
        wi = m.meta.wcsinfo
        att = rotations.attitude(wi.v2_ref, wi.v3_ref, wi.ra_ref, wi.dec_ref, wi.roll_ref)
        x, y = _grid(m.data.shape)
        ra, dec = m.meta.wcs(x, y, with_bounding_box=False)
        ra_s, dec_s = _pysiaf_sky(siafs, m.meta.aperture.name, att, 16 * x + 8.5, 16 * y + 8.5)
        assert _pixels(ra, dec, ra_s, dec_s, sim.layout.pixel_scale).max() < 0.01, m.meta.filename
        # A 3-frame gwcs, as tweakwcs' JWST corrector needs.
        assert m.meta.wcs.available_frames == ["detector", "v2v3", "world"]
        # The FITS (SIP) approximation and S_REGION follow from the gwcs.
        assert wi.instance["a_order"] >= 1 and "cd1_1" in wi.instance
        assert wi.s_region.startswith("POLYGON ICRS")


def test_subarrays_land_where_siaf_says_inside_the_full_frame(siafs):
    attitude = ss.attitude_for("MIRIM_FULL", 30.0, -10.0, 250.0)
    # SUBSTRT of the MIRI imager's most used subarrays, as in its documentation.
    bright, sub256 = ss.siaf_aperture("MIRIM_BRIGHTSKY"), ss.siaf_aperture("MIRIM_SUB256")
    assert (bright.xstart, bright.ystart, sub256.xstart, sub256.ystart) == (457, 51, 413, 51)
    for name in _all_apertures(siafs):
        ap = ss.siaf_aperture(name)
        raw = siafs["MIRI" if name.startswith("MIRIM") else "NIRCAM"][name]
        assert (ap.xsize, ap.ysize) == (raw.XSciSize, raw.YSciSize)
        # The SIAF's reference point of the subarray (its V2Ref, V3Ref) falls on its
        # reference pixel XSciRef, YSciRef (one-based) in the simulated readout, up to
        # how far the SIAF's full-frame polynomial itself puts it (NRCA2/NRCA3: 0.08 pixel,
        # their Sci->Idl and Idl->Sci polynomials disagree by that much; NRCA5 P: 0.04).
        wcs, _ = ss.exposure_wcs(ap, attitude)
        x, y = wcs.get_transform("v2v3", "detector")(raw.V2Ref, raw.V3Ref)
        full = siafs["MIRI" if name.startswith("MIRIM") else "NIRCAM"][ap.frame]
        v2, v3 = full.sci_to_tel(raw.XSciRef + ap.xstart - 1, raw.YSciRef + ap.ystart - 1)
        siaf_own = np.hypot(v2 - raw.V2Ref, v3 - raw.V3Ref) / raw.XSciScale
        assert np.hypot(x - (raw.XSciRef - 1), y - (raw.YSciRef - 1)) < 0.01 + siaf_own, name
        if not name.startswith(("NRCA2", "NRCA3", "NRCA5_SUB400P", "NRCA5_SUB160P", "NRCA5_SUB64P")):
            assert siaf_own < 0.01, name
    sim = simulate_mosaic("miri", geometry="siaf", subarray="SUB64", tiles=(1, 1), dithers=1, n_blobs=0)
    s = sim.models[0].meta.subarray
    assert (s.name, s.xstart, s.ystart, s.xsize, s.ysize) == ("SUB64", 1, 779, 72, 64)
    assert sim.models[0].meta.wcsinfo.v2_ref == pytest.approx(siafs["MIRI"]["MIRIM_SUB64"].V2Ref)


def test_dither_offsets_put_the_target_where_the_pattern_says(siafs):
    sim = simulate_mosaic(
        "nircam_short",
        geometry="siaf",
        binning=16,
        detectors=["NRCA1"],
        tiles=(1, 1),
        dithers=8,
        dither_pattern="INTRAMODULEBOX",
        n_blobs=0,
    )
    centre = np.array(sim.config["field_centre"])
    ra0, dec0 = 80.0, -69.5  # the default centre: the single tile's target
    for m in sim.models:
        wi = m.meta.wcsinfo
        att = rotations.attitude(wi.v2_ref, wi.v3_ref, wi.ra_ref, wi.dec_ref, wi.roll_ref)
        pointing = copy.deepcopy(siafs["NIRCAM"][m.meta.aperture.pps_name])
        pointing.set_attitude_matrix(att)
        x_idl, y_idl = pointing.sky_to_idl(ra0, dec0)
        expected = np.array([m.meta.dither.x_offset, m.meta.dither.y_offset])
        assert np.allclose([x_idl, y_idl], centre + expected, atol=1e-3)
    offsets = np.array([(m.meta.dither.x_offset, m.meta.dither.y_offset) for m in sim.models])
    assert np.allclose(offsets[:4], [(-2.9, -3.1), (-3.1, 2.9), (2.9, 3.1), (3.1, -2.9)])
    assert {m.meta.dither.primary_type for m in sim.models} == {"INTRAMODULEBOX"}


def _on_detectors(models, ra, dec) -> np.ndarray:
    """Whether each sky position falls on a pixel of any of ``models``."""
    hit = np.zeros(np.shape(ra), dtype=bool)
    for m in models:
        x, y = m.meta.wcs.invert(ra, dec, with_bounding_box=True)
        ny, nx = m.data.shape
        hit |= np.isfinite(x) & np.isfinite(y) & (x > -0.5) & (x < nx - 0.5) & (y > -0.5) & (y < ny - 0.5)
    return hit


def _ideal_grid_on_sky(siafs, model, aperture, half_x, half_y, step=1.0):
    """Sky positions of a grid (arcsec) in ``aperture``'s ideal frame at ``model``'s pointing."""
    wi = model.meta.wcsinfo
    ap = copy.deepcopy(siafs["NIRCAM"][aperture])
    ap.set_attitude_matrix(rotations.attitude(wi.v2_ref, wi.v3_ref, wi.ra_ref, wi.dec_ref, wi.roll_ref))
    x, y = np.meshgrid(
        np.arange(-half_x, half_x + step / 2, step), np.arange(-half_y, half_y + step / 2, step)
    )
    return ap.idl_to_sky(x.ravel(), y.ravel())


def _by_dither(sim):
    out: dict[int, list] = {}
    for m in sim.models:
        out.setdefault(m.meta.dither.position_number, []).append(m)
    return [out[k] for k in sorted(out)]


def test_intramodule_fills_the_gaps_between_the_short_chips(siafs):
    # JDox (NIRCam Primary Dithers): INTRAMODULE fills the 4-5 arcsec gaps
    # between the short-wavelength detectors of a module, without covering
    # the gap between the modules.
    table = ss.dither_offsets("INTRAMODULE", 16)
    assert np.allclose(ss.dither_offsets("INTRAMODULE", 3), table[:3])
    assert sorted(set(table[:, 0])) == sorted(set(table[:, 1])) == [-11.25, -3.75, 3.75, 11.25]
    assert len({tuple(p) for p in table}) == 16  # a 4 x 4 grid of 7.5-arcsec pitch
    assert np.ptp(table, axis=0).max() < 43.0  # never across the ~43-arcsec module gap
    sim = simulate_mosaic(
        "nircam_short",
        geometry="siaf",
        binning=16,
        detectors=["NRCA1", "NRCA2", "NRCA3", "NRCA4"],
        tiles=(1, 1),
        dithers=3,
        dither_pattern="INTRAMODULE",
        n_blobs=0,
        n_sources=0,
    )
    dithers = _by_dither(sim)
    assert [len(d) for d in dithers] == [4, 4, 4]
    ra, dec = _ideal_grid_on_sky(siafs, dithers[0][0], "NRCAS_FULL", 45.0, 45.0)
    first = _on_detectors(dithers[0], ra, dec)
    assert 0.05 < 1 - first.mean() < 0.3  # the cross of gaps between the four chips
    assert _on_detectors(sim.models, ra, dec).all()


def test_full_fills_the_gap_between_the_modules(siafs):
    # JDox: FULL covers both modules without gaps (the ~43-arcsec one between them included).
    sim = simulate_mosaic(
        "nircam_long",
        geometry="siaf",
        binning=16,
        tiles=(1, 1),
        dithers=3,
        dither_pattern="FULL",
        n_blobs=0,
        n_sources=0,
    )
    dithers = _by_dither(sim)
    ra, dec = _ideal_grid_on_sky(siafs, dithers[0][0], "NRCALL_FULL", 60.0, 40.0)
    first = _on_detectors(dithers[0], ra, dec)
    assert 0.2 < 1 - first.mean() < 0.6  # the module gap runs through the middle
    assert _on_detectors(sim.models, ra, dec).all()


def test_reuleaux_default_has_a_constant_width():
    # A Reuleaux triangle is a curve of constant width (the pattern MIRI took
    # over from Spitzer/IRAC): APT's 12 points are as wide in every direction.
    points = ss.dither_offsets("REULEAUX", 12, size="DEFAULT")
    angles = np.radians(np.arange(0.0, 180.0, 1.0))
    projected = points @ np.array([np.cos(angles), np.sin(angles)])
    width = projected.max(axis=0) - projected.min(axis=0)
    assert np.ptp(width) < 0.03 * width.mean()
    # An equilateral triangle's width varies by 15 %; the points are not on a circle either.
    radius = np.hypot(*(points - points.mean(axis=0)).T)
    assert np.ptp(radius) > 0.2 * radius.mean()
    assert 10.0 < width.mean() < 11.0
    with pytest.raises(ValueError, match="DEFAULT"):
        ss.dither_offsets("REULEAUX", 4, size="HUGE")
    with pytest.raises(ValueError, match="pattern_size"):
        ss.dither_offsets("CYCLING", 4, size="DEFAULT")


def test_mosaic_tiles_overlap_by_the_fraction_asked_for(siafs):
    sim = simulate_mosaic(
        "miri",
        geometry="siaf",
        binning=8,
        tiles=(2, 2),
        tile_overlap=0.15,
        dithers=2,
        dither_pattern="REULEAUX",
        roll=33.0,
        n_blobs=0,
    )
    ex, ey = sim.config["field_extent"]
    # The imager field (MIRIM_ILLUM), not the detector with its coronagraphs.
    assert 70 < ex < 78 and 110 < ey < 116
    ref = copy.deepcopy(siafs["MIRI"]["MIRIM_FULL"])
    atts = []
    for m in sim.models:
        wi = m.meta.wcsinfo
        atts.append(rotations.attitude(wi.v2_ref, wi.v3_ref, wi.ra_ref, wi.dec_ref, wi.roll_ref))
        # roll: APT's V3PA, the V3 position angle at the target (the field centre;
        # PA_V3 in the header is the one at V1).
        x_idl = sim.config["field_centre"][0] + m.meta.dither.x_offset
        y_idl = sim.config["field_centre"][1] + m.meta.dither.y_offset
        v2, v3 = ref.idl_to_tel(x_idl, y_idl)
        assert rotations.posangle(atts[-1], v2, v3) == pytest.approx(33.0, abs=1e-6)
        assert m.meta.pointing.pa_v3 == pytest.approx(rotations.posangle(atts[-1], 0.0, 0.0))
    # Tile 0's field centre seen from tiles 1 (next along x) and 2 (next along y),
    # first dithers of each (exposures 0, 2, 4).
    ref.set_attitude_matrix(atts[0])
    ra, dec = ref.idl_to_sky(*sim.config["field_centre"])
    steps = []
    for k in (2, 4):
        ref.set_attitude_matrix(atts[k])
        steps.append(np.array(ref.sky_to_idl(ra, dec)) - np.array(sim.config["field_centre"]))
    assert np.allclose(steps[0], [-0.85 * ex, 0.0], atol=0.1)
    assert np.allclose(steps[1], [0.0, -0.85 * ey], atol=0.1)


def test_miri_coronagraph_regions_at_their_siaf_places():
    sim = simulate_mosaic(
        "miri",
        geometry="siaf",
        binning=8,
        tiles=(1, 1),
        dithers=1,
        n_blobs=0,
        n_sources=0,
        lyot_offset_sigma=3.0,
        bad_pixel_fraction=0.0,
        nan_fraction=0.0,
        cosmic_ray_fraction=0.0,
        seed=4,
    )
    m = sim.models[0]
    regions = ss.miri_region_masks(ss.siaf_aperture("MIRIM_FULL", 8))
    imager = regions["illuminated"] & ~regions["lyot"]
    lyot_step = np.median(m.data[regions["lyot"]]) - np.median(m.data[imager])
    assert lyot_step == pytest.approx(sim.truth.lyot_offset[0], abs=0.05)
    assert abs(sim.truth.lyot_offset[0]) > 0.5
    flagged = (m.dq & (NON_SCIENCE | DO_NOT_USE)) != 0
    assert flagged[regions["coron4qpm"]].all() and not flagged[regions["illuminated"]].any()
    # Lyot field: MIRIM_CORONLYOT (full-frame columns 6-277, rows 749-1020), binned by 8.
    rows, cols = np.nonzero(regions["lyot"])
    # (binned pixel k covers full-frame pixels 8k+1 ... 8k+8: inside when its centre is)
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (1, 34, 94, 126)
    assert regions["coron4qpm"][:90, 1:28].any() and not regions["coron4qpm"][:, 40:].any()


# --------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------
def _background_sim(filter_name, background="jwst", **kw):
    return simulate_mosaic(
        "miri",
        geometry="siaf",
        subarray="SUB256",
        binning=4,
        tiles=(1, 1),
        visits_per_tile=2,
        dithers=6,
        background=background,
        filter=filter_name,
        n_blobs=0,
        n_sources=0,
        bad_pixel_fraction=0.0,
        nan_fraction=0.0,
        cosmic_ray_fraction=0.0,
        seed=5,
        **kw,
    )


def test_jwst_backgrounds_drift_with_time_and_far_more_at_long_wavelengths():
    short, long = _background_sim("F770W"), _background_sim("F2100W")
    z7, t7 = ss.BACKGROUND_MJY_SR["F770W"]
    z21, t21 = ss.BACKGROUND_MJY_SR["F2100W"]
    assert short.truth.sky_level == pytest.approx(z7 + t7)
    assert long.truth.sky_level == pytest.approx(z21 + t21)
    assert np.allclose(short.truth.level, z7 + t7, rtol=0.15)
    assert np.allclose(long.truth.level, z21 + t21, rtol=0.15)

    def spread_in_visits(sim):
        return max(np.ptp(sim.truth.level[sim.truth.visit == v]) for v in (1, 2))

    assert spread_in_visits(long) > 10 * spread_in_visits(short)
    # Without the exposure-to-exposure jitter the level inside a visit is the
    # thermal drift alone: linear in time.
    smooth = _background_sim("F2100W", background=ss.JwstBackground(jitter=0.0))
    for v in (1, 2):
        sel = smooth.truth.visit == v
        t = np.array([m.meta.exposure.mid_time for m, s in zip(smooth.models, sel, strict=True) if s])
        fit = np.polyfit(t - t[0], smooth.truth.level[sel], 1)
        assert np.abs(smooth.truth.level[sel] - np.polyval(fit, t - t[0])).max() < 1e-6
        assert np.ptp(smooth.truth.level[sel]) > 0.05
    # The data carry the level the truth reports.
    for m, level in zip(long.models, long.truth.level, strict=True):
        assert np.median(m.data) == pytest.approx(level, abs=0.02)


def test_per_exposure_planes_are_in_the_data_as_the_truth_says():
    sim = _background_sim("F1000W", exposure_gradient_sigma=2.0, noise=0.02)
    assert len({tuple(g) for g in sim.truth.gradient}) == len(sim.models)
    for k, m in enumerate(sim.models):
        ny, nx = m.data.shape
        y, x = np.mgrid[:ny, :nx]
        plane = sim.truth.plane_at(k, x, y, m.data.shape)
        assert np.abs(np.median(m.data - plane)) < 0.01
        a = np.column_stack([np.ones(x.size), x.ravel() - (nx - 1) / 2, y.ravel() - (ny - 1) / 2])
        coeffs = np.linalg.lstsq(a, m.data.ravel(), rcond=None)[0]
        assert coeffs[1:] == pytest.approx(sim.truth.gradient[k], abs=2e-4)


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="shape"):
        simulate_mosaic("miri", geometry="siaf", shape=(64, 64))
    with pytest.raises(ValueError, match="only with geometry='siaf'"):
        simulate_mosaic("miri", subarray="BRIGHTSKY")
    with pytest.raises(ValueError, match="geometry"):
        simulate_mosaic("miri", geometry="exact")
    with pytest.raises(ValueError, match="cannot be binned"):
        ss.siaf_aperture("MIRIM_FULL", 16)
    with pytest.raises(ValueError, match="INTRAMODULE"):
        ss.dither_offsets("INTRAMODULE", 4)
    with pytest.raises(ValueError, match="subarray"):
        ss.exposure_apertures("miri", "SUB400P")
    with pytest.raises(ValueError, match="background"):
        ss.JwstBackground().levels("F9999W")


# --------------------------------------------------------------------------
# End to end: mixed MIRI readouts, NIRCam modules with their own offsets
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def miri_mixed():
    """Two tiles, each with a FULL and a BRIGHTSKY visit (2 dithers each)."""
    return simulate_mosaic(
        "miri",
        geometry="siaf",
        binning=8,
        tiles=(2, 1),
        visits_per_tile=2,
        subarray=["FULL", "BRIGHTSKY"],
        dithers=2,
        visit_offset_sigma=1.0,
        seed=7,
    )


@pytest.fixture(scope="module")
def nircam_modules():
    """NIRCam LW, two visits of FULLBOX 4: modules A and B cross each other's fields."""
    return nircam_module_mosaic("FULLBOX", seed=8, n_sources=200)


def test_mixed_miri_readouts_in_pixel_skymatch(miri_mixed):
    sim = miri_mixed
    assert {m.meta.subarray.name for m in sim.models} == {"FULL", "BRIGHTSKY"}
    levels = levels_of(PixelSkyMatchStep.call(copy_models(sim)))
    assert offset_rms_error(levels, sim.truth.level) < 3 * offset_noise_floor(sim)


def test_mixed_miri_readouts_in_level_match(miri_mixed):
    sim = miri_mixed
    total = level_match_totals(LevelMatchStep.call(copy_models(sim)))
    assert offset_rms_error(total, sim.truth.level) < 3 * offset_noise_floor(sim)


def test_nircam_module_offsets_in_pixel_skymatch(nircam_modules):
    sim = nircam_modules
    a = sim.truth.level[sim.truth.detector == "NRCALONG"]
    b = sim.truth.level[sim.truth.detector == "NRCBLONG"]
    assert np.abs(a - b).max() > 0.2  # the modules really differ
    # Both modules of one exposure share a group_id, hence one sky, as in
    # SkyMatchStep; '+module' lets each module have its own level.
    levels = levels_of(PixelSkyMatchStep.call(copy_models(sim), grouping="visit+module"))
    assert offset_rms_error(levels, sim.truth.level) < 3 * offset_noise_floor(sim)


def test_nircam_module_offsets_in_level_match(nircam_modules):
    sim = nircam_modules
    # Defaults: the tile stage gives modules A and B of each visit their own level.
    total = level_match_totals(LevelMatchStep.call(copy_models(sim)))
    assert offset_rms_error(total, sim.truth.level) < 3 * offset_noise_floor(sim)


@pytest.mark.parametrize("case", ["miri_mixed", "nircam_modules"])
def test_calwebb_image3_plus_end_to_end(case, request, tmp_path):
    from stdatamodels.jwst import datamodels

    sim = request.getfixturevalue(case)
    asn = sim.write(tmp_path / "in")
    out = tmp_path / "out"
    steps = dict(OFFLINE)
    if case == "nircam_modules":  # per-module offsets: each module its own level
        steps["skymatch"] = {"grouping": "visit+module"}
    Image3PlusPipeline.call(str(asn), output_dir=str(out), save_results=True, steps=steps)
    crf = sorted(out.glob("*_crf.fits"))
    assert len(crf) == len(sim.models)
    levels = []
    for name in sim.filenames:
        (path,) = [p for p in crf if p.name.startswith(name.replace("_cal.fits", ""))]
        with datamodels.open(path) as m:
            levels.append(m.meta.background.level)
    assert offset_rms_error(np.array(levels), sim.truth.level) < 3 * offset_noise_floor(sim)
    (i2d,) = out.glob("*_i2d.fits")
    with datamodels.open(i2d) as mosaic:
        assert np.isfinite(mosaic.data).mean() > 0.3


def test_header_fast_path_reads_cd_matrices():
    # Real cal files (SIP approximation) carry CD keywords, not PC/CDELT: the
    # footprints and pixel scales must still come from the headers alone.
    from jwst.datamodels import ModelLibrary

    from jwst_skymatch_plus.inputs import read_all_metadata
    from jwst_skymatch_plus.steps._library import sources_from_metadata

    sim = simulate_mosaic("miri", geometry="siaf", binning=8, tiles=(1, 1), dithers=2, seed=4)
    library = ModelLibrary([m.copy() for m in sim.models])
    metas = read_all_metadata(library)
    assert metas[0].get("meta.wcsinfo.cd1_1") is not None
    with library:
        sources = sources_from_metadata(library, metas, lambda m: np.isfinite(m.data), ["a", "b"])
    assert sources is not None
    native = 0.11 * 8 / 3600.0  # MIRI pixels, binned 8x8
    assert sources[0].pixel_scale == pytest.approx(native, rel=0.02)
