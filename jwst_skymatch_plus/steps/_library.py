"""What every step shares between stpipe and the core.

Opening the input as a ModelLibrary with each member's metadata read once;
checks of exposures, WCS and step parameters that name what is wrong;
good-pixel masks and excluded regions; lazy exposure sources for the core;
logging and atomic saving of products.  No algorithm lives here.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.nddata.bitmask import bitfield_to_boolean_mask, interpret_bit_flags
from stdatamodels.jwst.datamodels.dqflags import pixel

from .._atomic import place, staging_folder
from .._signals import sigterm_raises
from ..background import Exposure, background_times, format_times
from ..core.execution import ExecutionSettings, auto_workers, memory_budget_bytes
from ..core.keys import lyot_region
from ..core.matching import ExposureSource
from ..core.regions import describe_region, region_misses
from ..inputs import borrowed, each_model, file_problem, member_path, open_exposures, unvalidated_reads

__all__ = [
    "PACKAGE_LOGGERS",
    "AtomicSaveMixin",
    "MaskSettings",
    "package_logging",
    "check_exposure_types",
    "check_image",
    "check_parameters",
    "check_single_configuration",
    "check_wcs",
    "execution_settings",
    "exposure_sources",
    "good_pixel_mask",
    "open_library",
    "open_library_with_metadata",
    "parse_regions",
    "pass_background_times",
    "parse_times",
    "regions_text",
    "report_base",
    "sources_from_metadata",
]

log = logging.getLogger(__name__)

#: Loggers our steps and pipelines ask stpipe to configure (ours plus jwst's).
PACKAGE_LOGGERS = (
    "jwst_skymatch_plus",
    "jwst",
    "stcal",
    "stdatamodels",
    "stpipe",
    "tweakwcs",
    "CRDS",
    "py.warnings",
)


class AtomicSaveMixin:
    """Save a step's outputs safely, write its reports last, clean up on SIGTERM.

    * Each output model is written under its final file name (so
      ``meta.filename`` in the file is right) into a staging folder next to
      the destination and renamed into place (:mod:`jwst_skymatch_plus._atomic`):
      an interrupted run leaves the previous product or the new one, never a
      truncated file, and no temporary file.
    * Reports handed to :meth:`after_save` (offsets tables, figures) are
      written once the outputs are saved, by the outermost step or pipeline
      of the run: a table never lists exposures whose products are missing.
    * While the run lasts, SIGTERM raises an exception so that temporary
      files, stores and worker processes are cleaned up before the process
      ends (:mod:`jwst_skymatch_plus._signals`).
    """

    _reports_after_save: list | None = None

    def run(self, *args):
        """Run the step (stpipe's ``run``), then write the reports it deferred."""
        if _report_owner(getattr(self, "parent", None)) is not None:
            return super().run(*args)
        self._reports_after_save = []
        try:
            with sigterm_raises():
                result = super().run(*args)
                for write in self._reports_after_save:
                    write()
        finally:
            self._reports_after_save = None
        return result

    def after_save(self, write: Callable[[], object]) -> None:
        """Call ``write()`` once the run's outputs are saved (now, outside a run)."""
        owner = _report_owner(self)
        if owner is None:
            write()
        else:
            owner._reports_after_save.append(write)

    def save_model(self, model, *args, **kwargs):
        from stdatamodels import DataModel

        if not isinstance(model, DataModel):
            return super().save_model(model, *args, **kwargs)
        plain_save = model.save

        def atomic_save(path, dir_path=None, *save_args, **save_kwargs):
            target = path(model.meta.filename) if callable(path) else path
            head, tail = os.path.split(os.fspath(target))
            head = dir_path or head or "."
            with staging_folder(head) as stage:
                written = plain_save(os.path.join(stage, tail), None, *save_args, **save_kwargs)
                final = os.path.join(head, os.path.basename(written))
                place(written, final)
            return final

        # A plain instance attribute (DataModel's own __setattr__ would put a
        # function into the model's metadata tree).
        object.__setattr__(model, "save", atomic_save)
        try:
            return super().save_model(model, *args, **kwargs)
        finally:
            object.__delattr__(model, "save")


def _report_owner(step):
    """The outermost step of ``step``'s run collecting deferred reports (or None)."""
    owner = None
    while step is not None:
        if getattr(step, "_reports_after_save", None) is not None:
            owner = step
        step = getattr(step, "parent", None)
    return owner


@contextmanager
def package_logging() -> Iterator[None]:
    """Route this package's log records to jwst's handlers when nothing else does.

    When one of our steps runs inside a pipeline that only configures jwst's
    loggers (``Image3Pipeline`` with our step assigned from Python), our
    records would otherwise reach no handler.
    """
    ours = logging.getLogger("jwst_skymatch_plus")
    jwst_log = logging.getLogger("jwst")
    if ours.handlers or logging.getLogger().handlers or not jwst_log.handlers:
        yield
        return
    borrowed = list(jwst_log.handlers)
    level = ours.level
    for handler in borrowed:
        ours.addHandler(handler)
    ours.setLevel(jwst_log.getEffectiveLevel())
    try:
        yield
    finally:
        for handler in borrowed:
            ours.removeHandler(handler)
        ours.setLevel(level)


def open_library(step, input_models):
    """A step's input as a ModelLibrary (see :func:`open_library_with_metadata`)."""
    return open_library_with_metadata(step, input_models)[0]


def open_library_with_metadata(step, input_models) -> tuple:
    """A ModelLibrary of a step's input, the flat metadata of its members, and the bytes it holds.

    The input is opened by :func:`jwst_skymatch_plus.inputs.open_exposures`,
    as ``calwebb_image3_plus`` opens its own: background observations of an
    association or a list are left out, and their times become the step's
    ``background_times`` when it has none.  Files that would take more
    memory than the step's ``memory_budget`` stay on disk.  The third value
    is what the exposures held in memory take of that budget.
    """
    budget = memory_budget_bytes(step.memory_budget) if hasattr(step, "memory_budget") else None
    opened = open_exposures(
        step.prepare_output(input_models, open_models=False), on_disk=not step.in_memory, memory_budget=budget
    )
    pass_background_times(opened.exposures, [step])
    return opened.library, opened.metas, opened.held_bytes


def pass_background_times(exposures: Sequence[Exposure] | None, steps: Sequence) -> None:
    """Give the steps whose ``background_times`` is empty the times of the background observations.

    They are the time reference of ``reference='closest_to_background'``.
    """
    times = background_times(exposures or ())
    if not times:
        return
    taken = [s for s in steps if s is not None and hasattr(s, "background_times") and not s.background_times]
    for step in taken:
        step.background_times = format_times(times)
    if taken:
        log.info(
            "Times of %d background observation(s) taken as the sky time reference by %s",
            len(times),
            ", ".join(step.name for step in taken),
        )


def execution_settings(step, sources: Sequence[ExposureSource], held_bytes: float = 0.0) -> ExecutionSettings:
    """A step's ``n_workers``, ``scheduler``, ``in_memory`` and ``memory_budget`` as core settings.

    ``n_workers=0`` (or less) is decided here from the exposures' pixels
    (:func:`~jwst_skymatch_plus.core.execution.auto_workers`), and the log
    says what was chosen and why.
    """
    n_workers = step.n_workers
    if n_workers <= 0 and not step.scheduler:
        n_workers, reason = auto_workers(float(sum(s.shape[0] * s.shape[1] for s in sources)))
        log.info(
            "n_workers=%d: %s (%s).",
            step.n_workers,
            f"{n_workers} worker processes" if n_workers > 1 else "serial",
            reason,
        )
    return ExecutionSettings(
        n_workers=n_workers,
        scheduler=step.scheduler or None,
        store="memory" if step.in_memory else "disk",
        memory_budget=step.memory_budget,
        held_bytes=held_bytes,
    )


def report_base(step, library, default: str = "output") -> tuple[Path, str]:
    """Directory and file stem for a step's tables, as stpipe names its outputs."""
    parent = getattr(step, "parent", None)
    directory = step.output_dir or (parent.output_dir if parent is not None else None) or "."
    stem = step.output_file or (parent.output_file if parent is not None else None)
    if not stem:
        try:
            stem = library.asn["products"][0].get("name")
        except (KeyError, IndexError, TypeError, AttributeError):
            stem = None
    stem = Path(stem).stem if stem else default
    return Path(directory), stem


@dataclass(frozen=True)
class MaskSettings:
    """Which pixels take part in matching.

    Parameters
    ----------
    dqbits : str or None
        DQ flags to *ignore* (pixels with only these flags are good), in the
        syntax of ``SkyMatchStep``'s ``dqbits``; ``None`` uses every finite
        pixel.
    lower, upper : float or None
        Pixels outside ``[lower, upper]`` are not used.
    exclude_lyot : bool
        Leave the MIRI imager's Lyot coronagraph out.
    regions : tuple of (slice, slice)
        Further detector regions (array slices) to leave out, e.g. from
        :func:`parse_regions`.
    """

    dqbits: str | None = "~DO_NOT_USE+NON_SCIENCE"
    lower: float | None = None
    upper: float | None = None
    exclude_lyot: bool = True
    regions: tuple = ()

    @property
    def bit_flags(self):
        """The interpreted ``dqbits`` (an int, or None).

        Raises
        ------
        ValueError
            Naming ``dqbits`` when it holds an unknown flag name.
        """
        try:
            return interpret_bit_flags(self.dqbits, flag_name_map=pixel)
        except (KeyError, ValueError, TypeError) as exc:
            reason = f"unknown DQ flag {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(
                f"dqbits={self.dqbits!r}: {reason}; write DQ flag names (e.g. DO_NOT_USE, NON_SCIENCE, "
                "SATURATED) or integers joined by '+', with a leading '~' to invert, or '' to use every "
                "finite pixel"
            ) from None


def good_pixel_mask(model, settings: MaskSettings, bit_flags=None) -> np.ndarray:
    """Boolean mask of the pixels of ``model`` usable for matching."""
    data = model.data
    bit_flags = settings.bit_flags if bit_flags is None else bit_flags
    good = np.isfinite(data)
    if bit_flags is not None and model.dq is not None and model.dq.shape == data.shape:
        good &= bitfield_to_boolean_mask(model.dq, bit_flags, good_mask_value=True, dtype=bool)
    if settings.lower is not None:
        good &= data >= settings.lower
    if settings.upper is not None:
        good &= data <= settings.upper
    if settings.exclude_lyot:
        region = lyot_region(model, data.shape)
        if region is not None:
            good[region] = False
    for region in settings.regions:
        if region_misses(region, data.shape):
            raise ValueError(
                f"excluded_regions: region {describe_region(region)!r} lies outside "
                f"{model.meta.filename or 'an exposure'} (image of {data.shape[0]} rows x "
                f"{data.shape[1]} columns); regions are zero-based rows,cols of each exposure's array"
            )
        good[region] = False
    return good


def parse_regions(text: str | Sequence[str] | None) -> tuple[tuple[slice, slice], ...]:
    """Parse detector regions written as ``"rows,cols;rows,cols"`` with numpy slices.

    Example: ``"735:,:290"`` is rows 735 and up, columns below 290 (zero-based,
    end excluded), i.e. the MIRI Lyot coronagraph in a full frame.  A list is
    accepted too (see :func:`regions_text`).

    Raises
    ------
    ValueError
        Naming ``excluded_regions``, for anything that is not two slices per
        region, or a slice whose end is not after its start.
    """
    regions = []
    for part in regions_text(text).split(";"):
        part = part.strip()
        if not part:
            continue
        axes = [a.strip() for a in part.split(",")]
        if len(axes) != 2:
            raise ValueError(f"excluded_regions: region {part!r} must be 'rows,cols' (e.g. '735:,:290')")
        regions.append(tuple(_parse_slice(a, part) for a in axes))
    return tuple(regions)


def regions_text(value: str | Sequence[str] | None) -> str:
    """``excluded_regions`` as one string, whatever form it arrived in.

    The command line (configobj) splits ``'735:,:290'`` at its comma into
    ``['735:', ':290']``: a list is joined again with commas.  A list whose
    every item is a whole region (holds a comma), e.g. ``['735:,:290',
    '0:10,0:10']``, is a list of regions, joined with ``';'``.
    """
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        pieces = [str(v).strip() for v in value]
        whole = bool(pieces) and all("," in p for p in pieces)
        return (";" if whole else ",").join(pieces)
    return str(value)


def _parse_slice(text: str, region: str) -> slice:
    bits = text.split(":")
    if len(bits) != 2:
        raise ValueError(f"excluded_regions: region {region!r}: {text!r} is not a start:stop slice")
    try:
        start, stop = (int(b) if b.strip() else None for b in bits)
    except ValueError:
        raise ValueError(
            f"excluded_regions: region {region!r}: {text!r} is not a start:stop slice of integers"
        ) from None
    if start is not None and stop is not None and (start < 0) == (stop < 0) and stop <= start:
        raise ValueError(
            f"excluded_regions: region {region!r}: {text!r} is reversed or empty (the end must be "
            "after the start)"
        )
    return slice(start, stop)


def parse_times(value, what: str = "background_times") -> list[float]:
    """MJDs from a comma- or space-separated string, a list of them, or a number.

    The command line hands ``'60000.1,60000.2'`` over as a list of strings;
    every form gives the same times.

    Raises
    ------
    ValueError
        Naming the parameter, for a value that is not a finite number.
    """
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    tokens = [t for item in items for t in str(item).replace(",", " ").split()]
    times = []
    for token in tokens:
        try:
            t = float(token)
        except ValueError:
            t = math.nan
        if not math.isfinite(t):
            raise ValueError(
                f"{what}: {token!r} is not a time; give MJDs separated by commas, e.g. '60123.52,60124.01'"
            )
        times.append(t)
    return times


def check_parameters(step) -> None:
    """Refuse bad step parameters before any data is read, naming the parameter.

    Works on any of our matching steps (checks the parameters it has).
    ``excluded_regions`` and ``background_times``, which the command line
    may hand over as lists (split at their commas), are set back to strings.

    Raises
    ------
    ValueError
        For an unknown DQ flag in ``dqbits``, a time in ``background_times``
        that is not a number, a malformed or reversed region in
        ``excluded_regions``, or a ``pixfrac`` or ``grid_scale`` that is not
        positive.
    """
    if hasattr(step, "excluded_regions"):
        step.excluded_regions = regions_text(step.excluded_regions)
        for region in parse_regions(step.excluded_regions):
            log.info("Detector region %r (rows,cols) left out of matching.", describe_region(region))
    if hasattr(step, "background_times"):
        times = parse_times(step.background_times, "background_times")
        if isinstance(step.background_times, (list, tuple, float, int)):
            step.background_times = ",".join(repr(t) for t in times)
    if hasattr(step, "dqbits"):
        MaskSettings(dqbits=step.dqbits).bit_flags  # noqa: B018 - raises for a bad value
    for name in ("pixfrac", "grid_scale"):
        value = getattr(step, name, None)
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")


def exposure_sources(
    library,
    mask: Callable[[object], np.ndarray],
    names: Sequence[str] | None = None,
) -> list[ExposureSource]:
    """One :class:`ExposureSource` per member; data are read only when loaded.

    The library must be open.  Each exposure's WCS is checked here so that a
    missing or unusable WCS is reported with the exposure's name.

    Parameters
    ----------
    library : ModelLibrary
        The open library.
    mask : callable
        ``mask(model) -> bool array`` of pixels to use.
    names : sequence of str, optional
        Names for exposures without ``meta.filename``.

    Returns
    -------
    list of ExposureSource
    """
    sources = []
    for index, model in each_model(library, names=names):
        name = model.meta.filename or (names[index] if names else f"exposure {index}")
        wcs = check_image(model, name)
        loader = _loader(library, index, mask, name=name)
        sources.append(ExposureSource(name, wcs, tuple(model.data.shape), loader))
    return sources


#: Model types whose data are not a single 2-D image, and their dimensions.
NOT_IMAGE_MODELS = {"CubeModel": 3, "IFUCubeModel": 3, "QuadModel": 4, "RampModel": 4, "Level1bModel": 4}


def check_image(model, name: str):
    """Check that a model is a 2-D image with a usable WCS; return the WCS.

    Raises
    ------
    ValueError
        Naming the exposure: data that are not 2-D, no WCS, or a WCS that
        gives no sky position (NaN) on the detector.
    """
    ndim = np.ndim(model.data)
    if ndim != 2:
        raise ValueError(
            f"{name}: its data are {ndim}-D ({type(model).__name__}, shape {tuple(np.shape(model.data))}); "
            "sky matching takes 2-D calibrated images (ImageModel, *_cal.fits or *_crf.fits)."
        )
    wcs = model.meta.wcs
    if wcs is None:
        raise ValueError(f"{name}: no WCS (meta.wcs is empty); run assign_wcs first.")
    check_wcs(wcs, model.data.shape, name)
    return wcs


def check_wcs(wcs, shape: tuple[int, int], name: str) -> None:
    """Refuse a WCS that gives no finite sky position at the detector's centre and corners.

    Raises
    ------
    ValueError
        Naming the exposure.
    """
    ny, nx = shape
    x = np.array([(nx - 1) / 2.0, 0.0, nx - 1.0, 0.0, nx - 1.0])
    y = np.array([(ny - 1) / 2.0, 0.0, 0.0, ny - 1.0, ny - 1.0])
    # Without the bounding box (as footprints are computed): the transform itself.
    transform = getattr(wcs, "forward_transform", None)
    try:
        out = transform(x, y) if transform is not None else wcs.pixel_to_world_values(x, y)
        ra, dec = np.asarray(out[0], dtype=float), np.asarray(out[1], dtype=float)
    except Exception as exc:
        raise ValueError(f"{name}: its WCS cannot be evaluated ({type(exc).__name__}: {exc}).") from exc
    bad = ~(np.isfinite(ra) & np.isfinite(dec))
    if bad.any():
        where = [
            "centre",
            "corner (0, 0)",
            f"corner ({nx - 1}, 0)",
            f"corner (0, {ny - 1})",
            f"corner ({nx - 1}, {ny - 1})",
        ]
        points = (
            "centre and corners" if bad.all() else ", ".join(w for w, b in zip(where, bad, strict=True) if b)
        )
        raise ValueError(
            f"{name}: its WCS gives no sky position (NaN) at the detector {points}; "
            "the WCS is unusable (re-run assign_wcs / the WCS adjustment that wrote it)."
        )


def _cd_matrix(meta: Mapping) -> np.ndarray:
    """The FITS WCS linear transform from header keywords: CD, or PC with CDELT.

    Real cal files written with a SIP approximation (``assign_wcs``'s
    default) carry CD; others PC and CDELT.
    """
    keys = ("1_1", "1_2", "2_1", "2_2")
    if all(meta.get(f"meta.wcsinfo.cd{k}") is not None for k in keys):
        return np.array(
            [
                [float(meta[f"meta.wcsinfo.cd{k}"]) for k in keys[:2]],
                [float(meta[f"meta.wcsinfo.cd{k}"]) for k in keys[2:]],
            ]
        )
    cdelt = np.diag([float(meta["meta.wcsinfo.cdelt1"]), float(meta["meta.wcsinfo.cdelt2"])])
    pc = np.array(
        [
            [float(meta["meta.wcsinfo.pc1_1"]), float(meta["meta.wcsinfo.pc1_2"])],
            [float(meta["meta.wcsinfo.pc2_1"]), float(meta["meta.wcsinfo.pc2_2"])],
        ]
    )
    return cdelt @ pc


def sources_from_metadata(
    library, metas: Sequence[dict], mask: Callable[[object], np.ndarray], names: Sequence[str]
) -> list[ExposureSource] | None:
    """Exposure sources built from header metadata alone, or None if it is incomplete.

    ``S_REGION`` gives the footprint, the FITS WCS keywords the pixel scale
    and orientation, the subarray keywords the shape; the gwcs is read with
    the data, once.  This saves a full pass over on-disk libraries.
    """
    from stcal.alignment.util import sregion_to_footprint

    sources = []
    for index, meta in enumerate(metas):
        try:
            footprint = np.asarray(sregion_to_footprint(meta["meta.wcsinfo.s_region"]), dtype=float)
            shape = (int(meta["meta.subarray.ysize"]), int(meta["meta.subarray.xsize"]))
            cd = _cd_matrix(meta)
        except (KeyError, TypeError, ValueError):
            return None
        if footprint.ndim != 2 or footprint.shape[0] < 3 or not np.all(np.isfinite(footprint)):
            return None
        scale = float(np.sqrt(abs(np.linalg.det(cd))))
        angle = float(np.degrees(np.arctan2(cd[0, 1], cd[1, 1])))
        source = ExposureSource(
            names[index], None, shape, None, footprint=footprint, pixel_scale=scale, position_angle=angle
        )
        source.load = _loader(library, index, mask, source, name=names[index])
        sources.append(source)
    return sources


def _exposure_arrays(model, name: str, mask: Callable) -> tuple:
    """``(data, good, wcs)`` of an open model: what matching reads of an exposure."""
    wcs = check_image(model, name)
    return np.array(model.data, dtype=np.float32, copy=True), mask(model), wcs


def _loader(library, index: int, mask, source: ExposureSource | None = None, name: str | None = None):
    def load():
        with borrowed(library, index, name=name, validate=False) as model:
            data, good, wcs = _exposure_arrays(
                model, model.meta.filename or name or f"exposure {index}", mask
            )
        if source is not None:
            source.wcs = wcs  # kept for later use (planes on detectors)
        return data, good, wcs

    return load


@dataclass(frozen=True)
class FileLoad:
    """Read an exposure from its file as the library's loader does: ``(data, good, wcs)``.

    It can be sent to worker processes and Dask workers (it holds a path, not
    arrays), which then read the file themselves.
    """

    path: str
    mask: Callable
    name: str

    def __call__(self) -> tuple:
        from stdatamodels.jwst import datamodels

        with unvalidated_reads():
            try:
                model = datamodels.open(self.path)
            except Exception as exc:
                raise OSError(f"{self.name}: cannot be opened: {file_problem(self.path, exc)}") from exc
        with model:
            return _exposure_arrays(model, self.name, self.mask)


def file_loads(library, input_models, mask: Callable, names: Sequence[str]) -> list[FileLoad | None]:
    """A :class:`FileLoad` per member when the input was files, else None per member.

    Only files the library has not yet changed qualify: this is called
    before anything is written, and only for an association or a list of
    file names (models in memory may differ from any file).  A member an
    in-memory library has loaded already gets None: its arrays are at hand.
    """
    from_files = isinstance(input_models, (str, os.PathLike)) or (
        isinstance(input_models, (list, tuple))
        and all(isinstance(m, (str, os.PathLike)) for m in input_models)
    )
    asn_dir = getattr(library, "_asn_dir", None)
    if not from_files or asn_dir is None:
        return [None] * len(names)
    loaded = () if getattr(library, "_on_disk", False) else getattr(library, "_loaded_models", {})
    out = []
    for index, name in enumerate(names):
        path = member_path(library, index)
        usable = path is not None and index not in loaded
        out.append(FileLoad(os.path.join(asn_dir, path), mask, name) if usable else None)
    return out


def check_exposure_types(metas: Sequence[dict], names: Sequence[str]) -> None:
    """Refuse exposures whose model type holds more than one 2-D image (from metadata alone).

    Raises
    ------
    ValueError
        Naming the exposures and their model type.
    """
    bad = [(name, meta.get("meta.model_type")) for meta, name in zip(metas, names, strict=True)]
    bad = [(name, kind) for name, kind in bad if kind in NOT_IMAGE_MODELS]
    if bad:
        listed = "; ".join(f"{name} is a {kind} ({NOT_IMAGE_MODELS[kind]}-D data)" for name, kind in bad[:10])
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        raise ValueError(
            f"Not 2-D images: {listed}{more}; sky matching and level-3 imaging take 2-D calibrated "
            "images (ImageModel: *_cal.fits, not per-integration *_calints.fits)."
        )


def _is_surface_brightness(unit: str) -> bool:
    from astropy import units as u

    return u.Unit(unit, parse_strict="silent").is_equivalent(u.MJy / u.sr)


def _listed(files: Sequence[str], most: int = 10) -> str:
    more = f" and {len(files) - most} more" if len(files) > most else ""
    return ", ".join(files[:most]) + more


def check_single_configuration(metas: Sequence[dict], names: Sequence[str]) -> None:
    """Refuse to match exposures of different instruments, filters, pupils or units.

    Backgrounds of different bands (or in different units) are not
    comparable pixel by pixel; offsets in units other than surface
    brightness (``DN/s`` of uncalibrated exposures) are refused, as are
    exposures that are not 2-D images.
    """
    check_exposure_types(metas, names)
    keys = ("meta.instrument.name", "meta.instrument.filter", "meta.instrument.pupil")
    configs: dict[tuple, list[str]] = {}
    for meta, name in zip(metas, names, strict=True):
        configs.setdefault(tuple(meta.get(k) for k in keys), []).append(name)
    units: dict[str, list[str]] = {}
    for meta, name in zip(metas, names, strict=True):
        units.setdefault(str(meta.get("meta.bunit_data") or None), []).append(name)
    not_brightness = {u: files for u, files in units.items() if u != "None" and not _is_surface_brightness(u)}
    if not_brightness:
        found = "; ".join(f"{u}: {_listed(files)}" for u, files in not_brightness.items())
        raise ValueError(
            "Sky matching needs exposures in surface brightness units (e.g. MJy/sr, as calibrated "
            f"by the photom step); these are not: {found}"
        )
    if len(units) > 1:
        found = "; ".join(f"{u}: {len(files)} exposure(s), e.g. {files[0]}" for u, files in units.items())
        raise ValueError(f"Exposures have different data units and cannot be sky-matched together: {found}")
    if "None" in units:
        log.warning(
            "No data unit (meta.bunit_data) recorded in %d exposure(s), e.g. %s; matched as if in "
            "surface brightness.",
            len(units["None"]),
            units["None"][0],
        )
    if len(configs) > 1:
        lines = [
            f"  {'/'.join(str(v) for v in cfg if v)}: {len(files)} exposure(s), e.g. {files[0]}"
            for cfg, files in configs.items()
        ]
        raise ValueError(
            "Exposures of different instrument/filter/pupil cannot be sky-matched together; "
            "split the association by band:\n" + "\n".join(lines)
        )
