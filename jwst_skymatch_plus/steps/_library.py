"""Reading exposures out of a ModelLibrary for the core, and writing results back.

Shared by every step of the package; no algorithm lives here.
"""

from __future__ import annotations

import logging
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
from ..core.matching import ExposureSource
from ..core.regions import miri_lyot_region

__all__ = [
    "PACKAGE_LOGGERS",
    "AtomicSaveMixin",
    "MaskSettings",
    "package_logging",
    "check_single_configuration",
    "exposure_sources",
    "good_pixel_mask",
    "label_member",
    "open_library",
    "open_library_with_metadata",
    "parse_regions",
    "read_all_metadata",
    "report_base",
    "sources_from_metadata",
    "unvalidated_reads",
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
def unvalidated_reads() -> Iterator[None]:
    """Open models without ASDF schema validation (about twice as fast).

    The files were validated when they were written, and anything this
    package changes is validated again when it is saved.
    """
    import asdf

    # A config context starts from a copy of the global configuration; unless
    # the global one has already listed the installed extensions, every
    # context lists them again from the entry points (about 0.2 s a time).
    global_config = asdf.get_config()
    global_config.extensions  # noqa: B018 - loads and caches the list
    global_config.resource_manager  # noqa: B018
    with asdf.config_context() as cfg:
        cfg.validate_on_read = False
        yield


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
    """Turn any input SkyMatchStep accepts into a ModelLibrary (as it does)."""
    return open_library_with_metadata(step, input_models)[0]


def open_library_with_metadata(step, input_models) -> tuple:
    """A ModelLibrary of the input and the flat metadata of its members.

    For an association, each member's metadata is read once, here, and its
    ``group_id`` handed to the library in the association, which the
    library would otherwise read every file again to compute.
    """
    from jwst.datamodels import ModelLibrary

    output = step.prepare_output(input_models, open_models=False)
    if isinstance(output, ModelLibrary):
        return output, read_all_metadata(output)
    on_disk = not step.in_memory
    if isinstance(output, (str, Path)) and Path(output).suffix.lower() in (".json", ".yaml", ".yml"):
        asn, metas = _association_with_group_ids(Path(output))
        return ModelLibrary(asn, on_disk=on_disk), metas
    if on_disk and not isinstance(output, (str, Path, dict)):
        # Models already in memory cannot be moved to an on-disk library
        # (jwst's SkyMatchStep fails here); keep them where they are.
        log.info("in_memory=False: the input models are already in memory and stay there.")
        on_disk = False
    library = ModelLibrary(output, on_disk=on_disk)
    return library, read_all_metadata(library)


def label_member(member: dict, meta: dict, asn: Mapping) -> None:
    """Give an association member its ``group_id`` and its metadata what the association adds.

    A member that already carries its ``group_id`` spares ``ModelLibrary``
    a second read of the file; the metadata gets the association fields the
    library's own ``read_metadata`` would add.  Both are updated in place.
    """
    from jwst.datamodels.utils import attrs_to_group_id

    if "group_id" not in member:
        prefix = "meta.observation."
        observation = {k[len(prefix) :]: v for k, v in meta.items() if k.startswith(prefix)}
        member["group_id"] = meta.get("meta.group_id") or attrs_to_group_id(observation)
    meta["meta.asn.exptype"] = member.get("exptype", "science")
    if "table_name" in asn:
        meta["meta.asn.table_name"] = asn["table_name"]
    for attr in ("group_id", "tweakreg_catalog"):
        if attr in member:
            meta[f"meta.{attr}"] = member[attr]
    if "asn_pool" in asn:
        meta["meta.asn.pool_name"] = asn["asn_pool"]


def _association_with_group_ids(path: Path) -> tuple[dict, list[dict]]:
    """An association file as a dictionary with absolute member paths and group ids."""
    from jwst.associations import load_asn
    from stdatamodels.jwst.datamodels import read_metadata

    path = path.expanduser().resolve()
    with path.open() as handle:
        asn = dict(load_asn(handle))
    asn["table_name"] = path.name
    product = dict(asn["products"][0])
    members, metas = [], []
    with unvalidated_reads():
        for member in product["members"]:
            member = dict(member)
            expname = Path(member["expname"])
            member["expname"] = os.fspath(expname if expname.is_absolute() else path.parent / expname)
            meta = dict(read_metadata(member["expname"], flatten=True))
            label_member(member, meta, asn)
            members.append(member)
            metas.append(meta)
    product["members"] = members
    asn["products"] = [product, *asn["products"][1:]]
    return asn, metas


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


def read_all_metadata(library) -> list[dict]:
    """Flat metadata of every member, without loading data when on disk."""
    with library, unvalidated_reads():
        return [dict(library.read_metadata(i)) for i in range(len(library))]


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
        """The interpreted ``dqbits`` (an int, or None)."""
        return interpret_bit_flags(self.dqbits, flag_name_map=pixel)


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
    if settings.exclude_lyot and _is_miri_imager(model):
        sub = model.meta.subarray
        region = miri_lyot_region(
            data.shape,
            xstart=sub.xstart or 1,
            ystart=sub.ystart or 1,
            full_frame=(sub.name or "FULL").upper() == "FULL",
        )
        if region is not None:
            good[region] = False
    for region in settings.regions:
        good[region] = False
    return good


def parse_regions(text: str | None) -> tuple[tuple[slice, slice], ...]:
    """Parse detector regions written as ``"rows,cols;rows,cols"`` with numpy slices.

    Example: ``"735:,:290"`` is rows 735 and up, columns below 290 (zero-based,
    end excluded), i.e. the MIRI Lyot coronagraph in a full frame.

    Raises
    ------
    ValueError
        For anything that is not two slices per region.
    """
    regions = []
    for part in (text or "").split(";"):
        part = part.strip()
        if not part:
            continue
        axes = [a.strip() for a in part.split(",")]
        if len(axes) != 2:
            raise ValueError(f"region {part!r} must be 'rows,cols' (e.g. '735:,:290')")
        regions.append(tuple(_parse_slice(a, part) for a in axes))
    return tuple(regions)


def _parse_slice(text: str, region: str) -> slice:
    bits = text.split(":")
    if len(bits) != 2:
        raise ValueError(f"region {region!r}: {text!r} is not a start:stop slice")
    try:
        start, stop = (int(b) if b.strip() else None for b in bits)
    except ValueError:
        raise ValueError(f"region {region!r}: {text!r} is not a start:stop slice of integers") from None
    return slice(start, stop)


def _is_miri_imager(model) -> bool:
    inst = model.meta.instrument
    return (inst.name or "").upper() == "MIRI" and (inst.detector or "").upper() == "MIRIMAGE"


def exposure_sources(
    library,
    mask: Callable[[object], np.ndarray],
    names: Sequence[str] | None = None,
    inspect: Callable[[object], object] | None = None,
) -> tuple[list[ExposureSource], list]:
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
    inspect : callable, optional
        Called on every model during this pass (saves another pass over an
        on-disk library); its results are returned.

    Returns
    -------
    sources : list of ExposureSource
    inspected : list
        ``inspect(model)`` per exposure (``None`` without ``inspect``).
    """
    sources, inspected = [], []
    for index in range(len(library)):
        model = library.borrow(index)
        try:
            name = model.meta.filename or (names[index] if names else f"exposure {index}")
            wcs = model.meta.wcs
            if wcs is None:
                raise ValueError(f"{name}: no WCS (meta.wcs is empty); run assign_wcs first.")
            shape = tuple(model.data.shape)
            inspected.append(inspect(model) if inspect is not None else None)
        finally:
            library.shelve(model, index, modify=False)
        sources.append(ExposureSource(name, wcs, shape, _loader(library, index, mask)))
    return sources, inspected


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
            cdelt1, cdelt2 = float(meta["meta.wcsinfo.cdelt1"]), float(meta["meta.wcsinfo.cdelt2"])
            pc = np.array(
                [
                    [float(meta["meta.wcsinfo.pc1_1"]), float(meta["meta.wcsinfo.pc1_2"])],
                    [float(meta["meta.wcsinfo.pc2_1"]), float(meta["meta.wcsinfo.pc2_2"])],
                ]
            )
        except (KeyError, TypeError, ValueError):
            return None
        if footprint.ndim != 2 or footprint.shape[0] < 3 or not np.all(np.isfinite(footprint)):
            return None
        cd = np.diag([cdelt1, cdelt2]) @ pc
        scale = float(np.sqrt(abs(np.linalg.det(cd))))
        angle = float(np.degrees(np.arctan2(cd[0, 1], cd[1, 1])))
        source = ExposureSource(
            names[index], None, shape, None, footprint=footprint, pixel_scale=scale, position_angle=angle
        )
        source.load = _loader(library, index, mask, source)
        sources.append(source)
    return sources


def _loader(library, index: int, mask, source: ExposureSource | None = None):
    def load():
        with unvalidated_reads():
            model = library.borrow(index)
        try:
            wcs = model.meta.wcs
            if wcs is None:
                raise ValueError(f"{model.meta.filename}: no WCS (meta.wcs is empty); run assign_wcs first.")
            data = np.array(model.data, dtype=np.float32, copy=True)
            good = mask(model)
        finally:
            library.shelve(model, index, modify=False)
        if source is not None:
            source.wcs = wcs  # kept for later use (planes on detectors)
        return data, good, wcs

    return load


def check_single_configuration(metas: Sequence[dict], names: Sequence[str]) -> None:
    """Refuse to match exposures of different instruments, filters, pupils or units.

    Backgrounds of different bands (or in different units) are not
    comparable pixel by pixel.
    """
    keys = ("meta.instrument.name", "meta.instrument.filter", "meta.instrument.pupil")
    configs: dict[tuple, list[str]] = {}
    for meta, name in zip(metas, names, strict=True):
        configs.setdefault(tuple(meta.get(k) for k in keys), []).append(name)
    units: dict[str, list[str]] = {}
    for meta, name in zip(metas, names, strict=True):
        units.setdefault(str(meta.get("meta.bunit_data")), []).append(name)
    if len(units) > 1:
        found = "; ".join(f"{u}: {len(files)} exposure(s), e.g. {files[0]}" for u, files in units.items())
        raise ValueError(f"Exposures have different data units and cannot be sky-matched together: {found}")
    if len(configs) > 1:
        lines = [
            f"  {'/'.join(str(v) for v in cfg if v)}: {len(files)} exposure(s), e.g. {files[0]}"
            for cfg, files in configs.items()
        ]
        raise ValueError(
            "Exposures of different instrument/filter/pupil cannot be sky-matched together; "
            "split the association by band:\n" + "\n".join(lines)
        )
