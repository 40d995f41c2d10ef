"""The WCS adjustment table: its columns, and reading and writing it as ECSV, ASDF or TOML.

``get_wcs_adjust`` writes one row per visit (or per visit and NIRCam module)
and ``apply_wcs_adjust`` reads it back, possibly in another session, from a
file the user keeps or writes by hand: the columns and formats here are a
contract (see ``docs/wcs_adjust.rst``).  Tables written before a column
existed read with that column at its unmeasured value.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from astropy.table import Table

from .._atomic import atomic_path
from .alignment import SkyAffine
from .keys import plain_number

__all__ = [
    "COLUMNS",
    "REQUIRED_COLUMNS",
    "TABLE_FORMATS",
    "affine_columns",
    "build_wcs_adjust_table",
    "read_wcs_adjust_table",
    "row_affine",
    "table_row",
    "unit_name",
    "visit_id",
    "write_wcs_adjust_table",
]

TABLE_FORMATS = ("ecsv", "asdf", "toml")

# name, dtype, fill when unmeasured, description
COLUMNS = (
    ("visit_id", str, "", "jw<program><observation><visit>"),
    ("program", str, "", "Program number"),
    ("observation", str, "", "Observation number"),
    ("visit", str, "", "Visit number"),
    ("module", str, "", "NIRCam module the row is for ('' = every detector of the visit)"),
    ("method", str, "", "How the correction was measured"),
    ("filter", str, "", "Filter of the reference band"),
    ("measured", bool, False, "False: no correction measured (shift and matrix NaN)"),
    ("status", str, "", "Why not measured, or remarks"),
    ("n_exposures", int, 0, "Reference-band exposures of the visit"),
    ("n_aligned", int, 0, "Of those, exposures whose WCS the measurement corrected"),
    ("ra_ref", float, math.nan, "Tangent point of the correction, RA, deg"),
    ("dec_ref", float, math.nan, "Tangent point of the correction, Dec, deg"),
    ("shift_ra", float, math.nan, "Shift of the tangent point towards East, arcsec"),
    ("shift_dec", float, math.nan, "Shift of the tangent point towards North, arcsec"),
    ("rotation", float, math.nan, "Change of position angle, deg"),
    ("scale", float, math.nan, "Scale factor sqrt(|det(matrix)|)"),
    ("m11", float, math.nan, "Matrix element (East, East)"),
    ("m12", float, math.nan, "Matrix element (East, North)"),
    ("m21", float, math.nan, "Matrix element (North, East)"),
    ("m22", float, math.nan, "Matrix element (North, North)"),
    ("shift_error", float, math.nan, "1-sigma uncertainty of the shift (both axes together), arcsec"),
    ("n_matches", int, 0, "tweakreg: sources matched in the visit's fit(s); cross_corr: overlap blocks used"),
    ("correlation", float, math.nan, "cross_corr: median correlation of the blocks used"),
    ("fit_rms", float, math.nan, "RMS of the exposures' corrections about the visit's one, arcsec"),
)

#: Columns a table must have to be read (every other one has a fill value).
REQUIRED_COLUMNS = ("program", "observation", "visit", "measured")

_UNITS = {
    **dict.fromkeys(("ra_ref", "dec_ref", "rotation"), "deg"),
    **dict.fromkeys(("shift_ra", "shift_dec", "shift_error", "fit_rms"), "arcsec"),
}


def visit_id(key: tuple[str, ...]) -> str:
    """``jw<program><observation><visit>`` of a ``(program, observation, visit, ...)`` key."""
    p, o, v = key[:3]
    return f"jw{p.zfill(5)}{o.zfill(3)}{v.zfill(3)}"


def unit_name(key: tuple[str, ...]) -> str:
    """Visit id, with the module when the row is for one module."""
    return visit_id(key) + (f" module {key[3]}" if len(key) > 3 and key[3] else "")


def table_row(key: tuple[str, ...], **values) -> dict:
    """A table row for ``key`` = ``(program, observation, visit[, module])``: unmeasured, then ``values``."""
    row = {name: fill for name, _, fill, _ in COLUMNS}
    row.update(visit_id=visit_id(key), program=key[0], observation=key[1], visit=key[2])
    row["module"] = key[3] if len(key) > 3 else ""
    row.update(values)
    return row


def affine_columns(affine: SkyAffine) -> dict:
    """The table columns describing a correction (tangent point, shift, rotation, scale, matrix)."""
    m = affine.matrix
    return {
        "ra_ref": affine.ra0,
        "dec_ref": affine.dec0,
        "shift_ra": float(affine.shift[0]),
        "shift_dec": float(affine.shift[1]),
        "rotation": affine.rotation,
        "scale": affine.scale,
        "m11": m[0, 0],
        "m12": m[0, 1],
        "m21": m[1, 0],
        "m22": m[1, 1],
    }


def build_wcs_adjust_table(rows: Sequence[Mapping], meta: dict | None = None) -> Table:
    """A WCS adjustment table from row dicts (missing columns take their unmeasured value).

    Parameters
    ----------
    rows : sequence of mapping
        One mapping of column name to value per row (e.g. :func:`table_row`).
    meta : dict, optional
        Table metadata (how the corrections were measured).

    Returns
    -------
    astropy.table.Table
        Every column of :data:`COLUMNS`, with its description and unit.

    Raises
    ------
    ValueError
        A value that does not fit its column's type (the column is named).
    """
    table = Table()
    for name, kind, fill, _ in COLUMNS:
        dtype = {str: str, bool: bool, int: np.int64, float: np.float64}[kind]
        try:
            values = np.array([r.get(name, fill) for r in rows], dtype=dtype) if rows else np.zeros(0, dtype)
        except (TypeError, ValueError) as err:
            raise ValueError(f"WCS adjustment table column {name!r}: {err}") from None
        table[name] = values
    _describe(table)
    table.meta.update(meta or {})
    return table


def _describe(table: Table, path: Path | None = None) -> None:
    """Set the description and unit of every column of :data:`COLUMNS` in ``table``.

    A column that has a unit must have the schema's (values are never converted).
    """
    for name, _, _, description in COLUMNS:
        col = table[name]
        col.description = description
        unit = _UNITS.get(name)
        if col.unit is None:
            col.unit = unit
        elif unit is None or col.unit != unit:
            where = f"{path}: " if path else ""
            raise ValueError(f"{where}column {name!r} is in {col.unit}; the table's unit is {unit or 'none'}")


def row_affine(row) -> SkyAffine:
    """The correction a measured table row describes."""
    matrix = [[row["m11"], row["m12"]], [row["m21"], row["m22"]]]
    return SkyAffine(float(row["ra_ref"]), float(row["dec_ref"]), matrix, [row["shift_ra"], row["shift_dec"]])


def _toml_value(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else repr(float(value))
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_wcs_adjust_table(table: Table, path: str | Path, formats: Sequence[str] = ("ecsv",)) -> list[Path]:
    """Write the table in each format (atomically), next to ``path`` with the format's suffix.

    Parameters
    ----------
    table : astropy.table.Table
        The WCS adjustment table.
    path : str or Path
        Output path; its suffix is replaced by each format's.
    formats : sequence of {'ecsv', 'asdf', 'toml'}
        Formats to write.

    Returns
    -------
    list of Path
        The files written.
    """
    import asdf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        if fmt not in TABLE_FORMATS:
            raise ValueError(f"table format {fmt!r}: use one of {TABLE_FORMATS}")
        out = path.with_suffix("." + fmt)
        with atomic_path(out) as tmp:
            if fmt == "ecsv":
                table.write(tmp, format="ascii.ecsv", overwrite=True)
            elif fmt == "asdf":
                tree = {"wcs_adjust": {name: np.asarray(table[name]) for name in table.colnames}}
                tree["meta"] = dict(table.meta)
                asdf.AsdfFile(tree).write_to(tmp)
            else:
                lines = [f"# {k} = {v}" for k, v in table.meta.items()]
                for row in table:
                    lines.append("[[visit]]")
                    lines += [f"{name} = {_toml_value(row[name])}" for name in table.colnames]
                tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append(out)
    return written


def read_wcs_adjust_table(path: str | Path) -> Table:
    """Read a table written by :func:`write_wcs_adjust_table` (format from the suffix).

    Parameters
    ----------
    path : str or Path
        A ``.ecsv``, ``.asdf`` or ``.toml`` file.

    Returns
    -------
    astropy.table.Table
        Every column of :data:`COLUMNS` in that order, with its description
        and unit (those the file lacks at their unmeasured value), then any
        other column of the file; text columns as ``str``, visit numbers
        without leading zeros.  TOML keeps no table metadata.

    Raises
    ------
    ValueError
        An unknown suffix, a file that is not a WCS adjustment table (the
        missing columns, or the TOML row, are named), or a value that does
        not fit its column (named).
    """
    import asdf

    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix == "ecsv":
        table = Table.read(path, format="ascii.ecsv")
    elif suffix == "asdf":
        with asdf.open(path) as af:
            if "wcs_adjust" not in af.tree:
                raise ValueError(f"{path}: not a WCS adjustment table (no 'wcs_adjust' entry)")
            cols = {k: np.array(v) for k, v in af.tree["wcs_adjust"].items()}
            meta = dict(af.tree.get("meta", {}))
        table = Table(cols, meta=meta)
    elif suffix == "toml":
        rows = tomllib.loads(path.read_text(encoding="utf-8")).get("visit", [])
        for k, row in enumerate(rows):
            missing = [c for c in REQUIRED_COLUMNS if c not in row]
            if missing:
                raise ValueError(
                    f"{path}: [[visit]] table {k + 1} has no {', '.join(missing)}: "
                    "not a WCS adjustment table row"
                )
        try:
            table = build_wcs_adjust_table(rows)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    else:
        raise ValueError(f"{path}: unknown table format (use .ecsv, .asdf or .toml)")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.colnames]
    if missing:
        raise ValueError(f"{path}: not a WCS adjustment table (no column {', '.join(missing)})")
    for name, kind, fill, _ in COLUMNS:
        if name not in table.colnames:
            # Written by an earlier version, before this column existed.
            table[name] = np.full(len(table), fill, dtype=type(fill) if kind is not str else str)
    for name, kind, _, _ in COLUMNS:
        if kind is str and name in table.colnames:
            # ECSV reads an all-empty text column back as masked.
            col = table[name]
            mask = np.asarray(getattr(col, "mask", np.zeros(len(col), bool)))
            table[name] = np.array(["" if m else str(v) for v, m in zip(col, mask, strict=True)], dtype=str)
    for name in ("program", "observation", "visit"):
        table[name] = [plain_number(v) for v in table[name]]
    # Every format reads to the same table (ASDF keeps neither order nor units).
    names = [c[0] for c in COLUMNS]
    table = table[names + [c for c in table.colnames if c not in names]]
    _describe(table, path)
    return table
