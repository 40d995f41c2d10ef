"""The one way in: the exposures a step or the pipeline is given, opened once.

:func:`open_exposures` takes anything our steps and ``calwebb_image3_plus``
accept (an association file or dictionary, a list of file names or models,
one file or model, a ``ModelLibrary``) and returns the ``ModelLibrary`` to
process, the flat metadata of its members (each file's read once) and which
exposures are background observations (the rules are in
:mod:`jwst_skymatch_plus.background`).  Steps and the pipeline keep the
same members:

* an association's ``science`` and ``background`` members (other member
  types are ignored, as calwebb_image3 does); a list's exposures, whose type
  is their ``meta.asn.exptype`` (``science`` when unset);
* background observations are left out unless asked for
  (``keep_background``; they are then processed like science);
* a ``ModelLibrary`` is taken as it is: whoever built it has chosen its
  members.

:func:`each_model` and :func:`borrowed` lend the models of a library
out one at a time and shelve them again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .background import BackgroundRule, Exposure, classify

__all__ = [
    "ASSOCIATION_SUFFIXES",
    "RUN_EXPTYPES",
    "Inputs",
    "borrowed",
    "each_model",
    "file_problem",
    "is_association",
    "label_member",
    "load_association",
    "member_path",
    "open_exposures",
    "read_all_metadata",
    "read_exposure_metadata",
    "read_exposures",
    "unvalidated_reads",
]

log = logging.getLogger(__name__)

#: File name endings of association files; any other file is an exposure.
ASSOCIATION_SUFFIXES = (".json", ".yaml", ".yml")

#: Association member types a level-3 imaging run reads; others (target
#: acquisitions, ...) are ignored, as calwebb_image3 does.
RUN_EXPTYPES = ("science", "background")


@dataclass
class Inputs:
    """The exposures of a run, as :func:`open_exposures` opened them.

    Attributes
    ----------
    library : ModelLibrary
        The exposures to process.
    metas : list of dict
        Flat metadata of each member of ``library``, in its order.
    exposures : list of Exposure or None
        Every exposure of the input (those left out too), classified; None
        for a ``ModelLibrary`` input, taken as it is.
    held_bytes : float
        Estimated memory the library's exposures take while they are held
        in memory (0 for an on-disk library; for a ``ModelLibrary`` input,
        the arrays of the models it has loaded).
    """

    library: Any
    metas: list[dict]
    exposures: list[Exposure] | None = None
    held_bytes: float = 0.0


def is_association(item: Any) -> bool:
    """True for a path to an association file (``.json``, ``.yaml``, ``.yml``)."""
    return isinstance(item, (str, os.PathLike)) and Path(item).suffix.lower() in ASSOCIATION_SUFFIXES


def load_association(path: str | os.PathLike) -> dict:
    """Read an association file (JSON or YAML) into a plain dictionary.

    Raises
    ------
    OSError
        If the file is not a valid association.
    """
    from jwst.associations import AssociationNotValidError, load_asn

    try:
        with Path(path).open() as handle:
            asn = load_asn(handle)
    except AssociationNotValidError as exc:
        raise OSError(f"Cannot read association {path}: {exc}") from exc
    return dict(asn)


def read_exposures(input_data: Any, rule: BackgroundRule | None = None) -> list[Exposure]:
    """Every exposure of an input, classified, without building a library.

    Parameters
    ----------
    input_data : str, Path, dict, list or DataModel
        An association file or dictionary (its science and background
        members), a list of models or file names, or one model or file.
    rule : BackgroundRule, optional
        How background observations are recognised (default: association
        exptype ``background``).

    Returns
    -------
    list of Exposure
        One entry per exposure, in input order.
    """
    return _classified(_entries(input_data)[1], rule or BackgroundRule())


def open_exposures(
    input_data: Any,
    *,
    rule: BackgroundRule | None = None,
    keep_background: bool = False,
    on_disk: bool = False,
    memory_budget: float | None = None,
) -> Inputs:
    """Open what a step or the pipeline was given: library, metadata and classification.

    Parameters
    ----------
    input_data : str, Path, dict, list, ModelLibrary or DataModel
        An association file or dictionary, a list of models or file names,
        one model or file, or a ``ModelLibrary`` (taken as it is).
    rule : BackgroundRule, optional
        How background observations are recognised (default: association
        exptype ``background``).
    keep_background : bool
        Process background observations like science instead of leaving
        them out.
    on_disk : bool
        Keep the models on disk between uses (``in_memory=False``); models
        already in memory stay there.
    memory_budget : float, optional
        Bytes the exposures may take in memory.  Files whose arrays would
        take more (estimated from their sizes) are kept on disk as with
        ``on_disk=True``, which is logged.  None: no limit.

    Returns
    -------
    Inputs

    Raises
    ------
    ValueError
        For an input without exposures, or one of background observations
        only that are left out.
    OSError
        Naming a file that cannot be read, and what is wrong with it.
    """
    from jwst.datamodels import ModelLibrary

    if isinstance(input_data, ModelLibrary):
        # Taken as it is; the models it holds in memory count against the budget.
        loaded = {} if getattr(input_data, "_on_disk", False) else getattr(input_data, "_loaded_models", {})
        held = float(sum(_model_bytes(m) for m in loaded.values()))
        return Inputs(input_data, read_all_metadata(input_data), held_bytes=held)
    rule = rule or BackgroundRule()
    asn, entries = _entries(input_data)
    exposures = _classified(entries, rule)
    if not exposures:
        what = f"the association {Path(input_data).name}" if is_association(input_data) else "the input"
        raise ValueError(f"No exposures to process: {what} is empty (no science or background members).")
    keep = [keep_background or not e.background for e in exposures]
    background = [e for e in exposures if e.background]
    action = "processed like science" if keep_background else "left out"
    for e in background:
        log.info("Background observation %s (%s): %s", e.filename, e.reason, action)
    if not background:
        log.info("No background observations found (rule: %s)", rule.describe())
    if not any(keep):
        raise ValueError(
            f"No science exposures to process: all {len(exposures)} are background observations "
            f"({rule.describe()}); set process_bgr_like_science=True (calwebb_image3_plus) to make a "
            "mosaic of them"
        )
    kept = [entry for entry, k in zip(entries, keep, strict=True) if k]
    if all(isinstance(item, Mapping) for item, _, _ in kept):
        # Files: an association whose members carry their group ids, which
        # the library would otherwise read every file again to compute.
        out = {k: v for k, v in asn.items() if k != "products"}
        members, metas = [], []
        for member, _, meta in kept:
            member, meta = {**member, "exptype": "science"}, dict(meta)
            label_member(member, meta, out, len(members))
            members.append(member)
            metas.append(meta)
        out["products"] = [{**asn["products"][0], "members": members}]
        held = 0.0 if on_disk else float(sum(_file_size(m["expname"]) for m in members))
        if held and memory_budget is not None and held > memory_budget:
            log.info(
                "The %d exposures take about %.2f GiB in memory, more than the memory budget of %.2f GiB: "
                "they are read from their files when needed, as with in_memory=False (memory_budget sets "
                "the budget).",
                len(members),
                held / 2**30,
                memory_budget / 2**30,
            )
            on_disk, held = True, 0.0
        return Inputs(ModelLibrary(out, on_disk=on_disk), metas, exposures, held)
    if on_disk:
        # Models already in memory cannot be moved to an on-disk library
        # (jwst's SkyMatchStep fails here); keep them where they are.
        log.info("in_memory=False: the input models are already in memory and stay there.")
    models = [item["expname"] if isinstance(item, Mapping) else item for item, _, _ in kept]
    held = float(sum(_model_bytes(m) for m in models))
    library = ModelLibrary(models)
    return Inputs(library, read_all_metadata(library), exposures, held)


def _file_size(path: str) -> int:
    """Bytes of a member file (its arrays take about as much in memory)."""
    try:
        return os.path.getsize(path)
    except OSError:  # a URL, or gone since its metadata was read: the library will say
        return 0


def _model_bytes(model: Any) -> int:
    """Bytes of the arrays an open model holds (0 for a file name)."""
    tree = getattr(model, "instance", None)
    if not isinstance(tree, Mapping):
        return 0
    return sum(value.nbytes for value in tree.values() if isinstance(value, np.ndarray))


def _entries(input_data: Any) -> tuple[dict, list[tuple[Any, str, dict]]]:
    """The input as an association, and per exposure: its member (a file) or model, type and metadata.

    Every file's metadata is read here, once: a file that cannot be read is
    named with its problem, not left to fail deep in the library.
    """
    from stdatamodels import DataModel

    if is_association(input_data) or isinstance(input_data, Mapping):
        if isinstance(input_data, Mapping):
            asn, folder = dict(input_data), Path.cwd()  # as ModelLibrary reads a dictionary
        else:
            path = Path(input_data).expanduser().resolve()
            asn, folder = load_association(path), path.parent
            asn["table_name"] = path.name  # as ModelLibrary names an association file
        members = [
            {**m, "exptype": str(m.get("exptype", "science")).lower()} for m in asn["products"][0]["members"]
        ]
        members = [m for m in members if m["exptype"] in RUN_EXPTYPES]
        for member in members:
            expname = Path(member["expname"])
            member["expname"] = os.fspath(expname if expname.is_absolute() else folder / expname)
    else:
        single = isinstance(input_data, (str, os.PathLike, DataModel))
        items = [input_data] if single else list(input_data)
        members = [
            {"expname": os.path.abspath(os.fspath(item))} if isinstance(item, (str, os.PathLike)) else item
            for item in items
        ]
        asn = {"products": [{"members": members}]}
    entries = []
    with unvalidated_reads():
        for item in members:
            if isinstance(item, Mapping):
                meta = read_exposure_metadata(item["expname"])
                exptype = item.get("exptype") or meta.get("meta.asn.exptype")
            else:
                meta = dict(item.get_crds_parameters())
                exptype = getattr(item.meta.asn, "exptype", None)
            entries.append((item, str(exptype or "science").lower(), meta))
    return asn, entries


def _classified(entries: Sequence[tuple[Any, str, dict]], rule: BackgroundRule) -> list[Exposure]:
    return [
        classify(
            item["expname"] if isinstance(item, Mapping) else item.meta.filename or "model", kind, meta, rule
        )
        for item, kind, meta in entries
    ]


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


def read_exposure_metadata(path: str | os.PathLike) -> dict:
    """Flat metadata of one exposure file, or an error naming the file and what is wrong with it.

    Raises
    ------
    OSError
        The file is missing, empty, not FITS, truncated, has no ASDF
        extension, or its metadata cannot be read for another reason.
    """
    from stdatamodels.jwst.datamodels import read_metadata

    path = os.fspath(path)
    try:
        return dict(read_metadata(path, flatten=True))
    except Exception as exc:  # any failure to read the file is the file's problem
        raise OSError(f"{Path(path).name}: {file_problem(path, exc)} ({path})") from exc


#: FITS files are made of blocks of this many bytes.
FITS_BLOCK = 2880


def file_problem(path: str | os.PathLike, error: Exception | None = None) -> str:
    """What is wrong with an exposure file that could not be read, in words.

    Parameters
    ----------
    path : str or PathLike
        The file.
    error : Exception, optional
        The error reading it raised (quoted when nothing more precise is found).
    """
    import warnings

    from astropy.io import fits

    path = os.fspath(path)
    quoted = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
    if not os.path.exists(path):
        return "no such file"
    if os.path.isdir(path):
        return "a directory, not an exposure file"
    size = os.path.getsize(path)
    if size == 0:
        return "the file is empty (0 bytes)"
    with open(path, "rb") as handle:
        head = handle.read(30)
    if head.startswith(b"#ASDF"):
        return f"cannot be read as an ASDF data model ({quoted})"
    if not head.startswith(b"SIMPLE  ="):
        return "not a FITS file (it does not start with a FITS header); expected a calibrated exposure"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy warns about truncation; we say it
            with fits.open(path, memmap=False) as hdul:
                extents = [hdul.fileinfo(k) for k in range(len(hdul))]
                names = [hdu.name for hdu in hdul]
    except Exception as exc:
        whole = size % FITS_BLOCK == 0
        return f"corrupt FITS file{'' if whole else ' (truncated?)'} ({type(exc).__name__}: {exc})"
    described = max(info["datLoc"] + info["datSpan"] for info in extents)
    if described > size:
        return f"truncated: {size} bytes on disk, its FITS headers describe {described}"
    if size % FITS_BLOCK:
        return f"truncated or corrupt: {size} bytes is not a whole number of {FITS_BLOCK}-byte FITS blocks"
    if "ASDF" not in names:
        return "no ASDF extension: not a JWST data model, or truncated"
    return f"its metadata cannot be read ({quoted})"


def label_member(member: dict, meta: dict, asn: Mapping, index: int = 0) -> None:
    """Give an association member its ``group_id`` and its metadata what the association adds.

    A member that already carries its ``group_id`` spares ``ModelLibrary``
    a second read of the file; the metadata gets the association fields the
    library's own ``read_metadata`` would add.  Both are updated in place.
    A member whose header lacks the keywords of a ``group_id`` gets a unique
    one, ``exposureNNNN`` from its 0-based ``index``, as ``ModelLibrary``
    gives it.
    """
    from jwst.datamodels.utils import attrs_to_group_id

    if "group_id" not in member:
        prefix = "meta.observation."
        observation = {k[len(prefix) :]: v for k, v in meta.items() if k.startswith(prefix)}
        group_id = meta.get("meta.group_id")
        if not group_id:
            try:
                group_id = attrs_to_group_id(observation)
            except KeyError as missing:
                group_id = f"exposure{index + 1:04d}"
                log.info(
                    "%s: %s; it is a sky group of its own (%s).",
                    member.get("expname", f"member {index + 1}"),
                    str(missing).strip("'\""),
                    group_id,
                )
        member["group_id"] = group_id
    meta["meta.asn.exptype"] = member.get("exptype", "science")
    if "table_name" in asn:
        meta["meta.asn.table_name"] = asn["table_name"]
    for attr in ("group_id", "tweakreg_catalog"):
        if attr in member:
            meta[f"meta.{attr}"] = member[attr]
    if "asn_pool" in asn:
        meta["meta.asn.pool_name"] = asn["asn_pool"]


def read_all_metadata(library) -> list[dict]:
    """Flat metadata of every member, without loading data when on disk."""
    with library, unvalidated_reads():
        return [dict(library.read_metadata(i)) for i in range(len(library))]


def member_path(library, index: int) -> str | None:
    """A library member's file, when it has one (without opening it)."""
    try:
        return os.fspath(library.asn["products"][0]["members"][index]["expname"])
    except (KeyError, IndexError, TypeError, AttributeError):
        return None


def _borrow(library, index: int, name: str | None = None):
    """``library.borrow(index)``; a member that cannot be opened is named with the reason."""
    try:
        return library.borrow(index)
    except Exception as exc:
        path = member_path(library, index)
        name = name or (Path(path).name if path else f"exposure {index}")
        reason = file_problem(path, exc) if path and os.path.exists(path) else f"{type(exc).__name__}: {exc}"
        raise OSError(f"{name}: cannot be opened: {reason}") from exc


@contextmanager
def _opened(library) -> Iterator[None]:
    """The library open for borrowing; one already open is left open."""
    if getattr(library, "_open", False):
        yield
    else:
        with library:
            yield


@contextmanager
def borrowed(library, index: int, modify: bool = False, *, name: str | None = None, validate: bool = True):
    """One model of a ``ModelLibrary``, shelved again when the block ends.

    The library is opened for the block (one already open stays open).

    Parameters
    ----------
    library : ModelLibrary
        The library.
    index : int
        Which member.
    modify : bool
        Keep changes made to the model (an on-disk library writes it back).
    name : str, optional
        The exposure's name in the error for a member that cannot be opened.
    validate : bool
        Validate the file against its schema as it is read (see
        :func:`unvalidated_reads`).

    Raises
    ------
    OSError
        Naming a member that cannot be opened, and why.
    """
    with _opened(library):
        if validate:
            model = _borrow(library, index, name)
        else:
            with unvalidated_reads():
                model = _borrow(library, index, name)
        try:
            yield model
        finally:
            library.shelve(model, index, modify=modify)


def each_model(
    library, modify: bool = False, *, names: Sequence[str] | None = None, validate: bool = True
) -> Iterator[tuple[int, Any]]:
    """``(index, model)`` for every member of a ``ModelLibrary``, each shelved again after its turn.

    The library is opened for the loop (one already open stays open).

    Parameters
    ----------
    library : ModelLibrary
        The library (open or not).
    modify, validate : bool
        As for :func:`borrowed`.
    names : sequence of str, optional
        Exposure names for errors about members that cannot be opened.

    Examples
    --------
    >>> for index, model in each_model(library):  # doctest: +SKIP
    ...     print(index, model.meta.filename)
    """
    with _opened(library):
        for index in range(len(library)):
            name = names[index] if names else None
            with borrowed(library, index, modify, name=name, validate=validate) as model:
                yield index, model
