"""The WCS adjustment table: a contract users keep files of (ECSV, ASDF, TOML)."""

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from jwst_skymatch_plus.core.alignment import SkyAffine, sky_to_tangent
from jwst_skymatch_plus.core.wcs_adjust_table import (
    COLUMNS,
    TABLE_FORMATS,
    affine_columns,
    build_wcs_adjust_table,
    read_wcs_adjust_table,
    row_affine,
    table_row,
    unit_name,
    visit_id,
    write_wcs_adjust_table,
)

DATA = Path(__file__).parent / "data"
NAMES = [c[0] for c in COLUMNS]
UNITS = {"ra_ref": "deg", "dec_ref": "deg", "rotation": "deg"}
UNITS.update(dict.fromkeys(("shift_ra", "shift_dec", "shift_error", "fit_rms"), "arcsec"))
META = {"method": "tweakreg", "fitgeometry": "rshift", "absolute": False, "degroup_nircam_modules": True}


def _rotation(deg):
    a = math.radians(deg)
    return [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]


def sample_table():
    """A measured row, a module's row and an unmeasured row with awkward text."""
    rows = [
        table_row(
            ("1234", "1", "1"),
            method="tweakreg",
            filter="F770W",
            measured=True,
            n_exposures=4,
            n_aligned=4,
            n_matches=2**40,
            shift_error=0.0021,
            fit_rms=1e-300,
            correlation=0.875,
            **affine_columns(SkyAffine(80.4875, -69.4983, _rotation(0.0123), [0.1 + 0.2, -1 / 3])),
        ),
        table_row(
            ("1234", "1", "2", "B"),
            method="cross_corr",
            measured=True,
            status='quoted "text", a back\\slash and ünïcode',
            **affine_columns(SkyAffine(359.9999, 89.9, [[1.0001, 2e-5], [-3e-5, 0.9999]], [-0.25, 5e-17])),
        ),
        table_row(("1234", "12", "3"), method="tweakreg", status="tweakreg could not align any exposure"),
    ]
    return build_wcs_adjust_table(rows, META)


def assert_same_rows(a: Table, b: Table):
    assert b.colnames[: len(NAMES)] == NAMES
    for name in NAMES:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        assert y.dtype.kind == x.dtype.kind, name
        if x.dtype.kind == "f":
            # Bit for bit: repr of a float reads back exactly.
            np.testing.assert_array_equal(x, y, err_msg=name)
        else:
            assert x.tolist() == y.tolist(), name


def test_row_helpers():
    assert visit_id(("1234", "1", "12")) == "jw01234001012"
    assert unit_name(("1234", "1", "12", "A")) == "jw01234001012 module A"
    assert unit_name(("1234", "1", "12", "")) == unit_name(("1234", "1", "12")) == "jw01234001012"
    row = table_row(("1234", "1", "12", "A"), measured=True)
    assert set(row) == set(NAMES) and row["module"] == "A" and row["visit_id"] == "jw01234001012"
    assert row["n_matches"] == 0 and math.isnan(row["shift_ra"])


def test_affine_columns_and_row_affine_are_inverse():
    affine = SkyAffine(10.0, -20.0, _rotation(-0.2), [0.3, -0.4])
    cols = affine_columns(affine)
    assert cols["rotation"] == pytest.approx(0.2, abs=1e-12)  # a clockwise turn raises position angles
    assert cols["scale"] == pytest.approx(1.0, abs=1e-12)
    back = row_affine(cols)
    np.testing.assert_array_equal(back.matrix, affine.matrix)
    np.testing.assert_array_equal(back.shift, affine.shift)
    # The tangent point moves by the shift.
    xi, eta = sky_to_tangent(*back.apply(10.0, -20.0), 10.0, -20.0)
    assert (float(xi), float(eta)) == pytest.approx((0.3, -0.4), abs=1e-9)


def test_build_gives_every_column_with_types_and_units():
    table = build_wcs_adjust_table([{"program": "1", "observation": "2", "visit": "3"}], {"k": 1})
    assert table.colnames == NAMES and table.meta == {"k": 1}
    assert table["measured"].dtype == bool and table["n_matches"].dtype == np.int64
    assert not table["measured"][0] and np.isnan(table["shift_ra"][0])
    for name, _, _, description in COLUMNS:
        assert table[name].description == description
        assert str(table[name].unit or "") == UNITS.get(name, ""), name
    empty = build_wcs_adjust_table([])
    assert len(empty) == 0 and empty.colnames == NAMES


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_round_trip(tmp_path, fmt):
    table = sample_table()
    (path,) = write_wcs_adjust_table(table, tmp_path / "sub" / "t.txt", [fmt])
    assert path == tmp_path / "sub" / f"t.{fmt}"
    back = read_wcs_adjust_table(path)
    assert_same_rows(table, back)
    for name in NAMES:
        assert str(back[name].unit or "") == UNITS.get(name, ""), name
    # TOML has no place for the table's metadata.
    assert back.meta == ({} if fmt == "toml" else META)
    # Written again, the same file.
    (again,) = write_wcs_adjust_table(back, tmp_path / "again.txt", [fmt])
    if fmt != "asdf":  # ASDF files record when and by what they were written

        def lines(p):
            # TOML's metadata comments are not read back.
            return [s for s in p.read_text(encoding="utf-8").splitlines() if not s.startswith("# ")]

        assert lines(again) == lines(path)
    assert_same_rows(table, read_wcs_adjust_table(again))


def test_all_formats_at_once_and_only_those(tmp_path):
    written = write_wcs_adjust_table(sample_table(), tmp_path / "t.ecsv", ["toml", "asdf", "ecsv"])
    assert written == [tmp_path / "t.toml", tmp_path / "t.asdf", tmp_path / "t.ecsv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.asdf", "t.ecsv", "t.toml"]
    tables = [read_wcs_adjust_table(p) for p in written]
    for t in tables[1:]:
        assert_same_rows(tables[0], t)


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_files_written_by_version_0_1_0_read(fmt):
    """tests/data holds tables written by the first release's code: they must keep reading."""
    table = read_wcs_adjust_table(DATA / f"wcs_adjust_table_0.1.0.{fmt}")
    assert table.colnames == NAMES
    assert list(table["visit_id"]) == ["jw01234001001", "jw01234001002", "jw01234012003"]
    assert [tuple(r) for r in table["program", "observation", "visit", "module"]] == [
        ("1234", "1", "1", ""),
        ("1234", "1", "2", "A"),
        ("1234", "12", "3", ""),
    ]
    assert list(table["measured"]) == [True, True, False]
    assert list(table["n_matches"]) == [120, 57, 0]
    assert list(table["status"]) == [
        "reference of the relative alignment",
        "2 exposure(s) not aligned, left out",
        "tweakreg could not align any exposure of this visit",
    ]
    np.testing.assert_array_equal(table["shift_ra"], [0.125, -0.25, np.nan])
    np.testing.assert_array_equal(table["shift_error"], [0.0, 0.004, np.nan])
    np.testing.assert_array_equal(table["m12"][:2], [-math.sin(math.radians(0.01)), 0.0])
    affine = row_affine(table[0])
    assert affine.rotation == pytest.approx(-0.01, abs=1e-12)
    assert (affine.ra0, affine.dec0) == (80.4875, -69.4983)
    assert table.meta == ({} if fmt == "toml" else META)


def test_tables_of_earlier_versions_and_by_hand_read(tmp_path):
    old = read_wcs_adjust_table(DATA / "wcs_adjust_table_0.1.0.ecsv")
    old.remove_columns(["module", "shift_error", "correlation"])
    old.write(tmp_path / "old.ecsv", format="ascii.ecsv")
    back = read_wcs_adjust_table(tmp_path / "old.ecsv")
    assert back.colnames[: len(NAMES)] == NAMES
    assert list(back["module"]) == [""] * 3 and np.all(np.isnan(back["shift_error"]))
    # By hand: the visit numbers with leading zeros, measured, the correction.
    (tmp_path / "hand.toml").write_text(
        "[[visit]]\nprogram = '01234'\nobservation = 1\nvisit = '001'\nmeasured = true\n"
        "ra_ref = 10.0\ndec_ref = 20.0\nshift_ra = 0.5\nshift_dec = 0\n"
        "m11 = 1\nm12 = 0\nm21 = 0\nm22 = 1\n"
    )
    hand = read_wcs_adjust_table(tmp_path / "hand.toml")
    assert (hand["program"][0], hand["observation"][0], hand["visit"][0]) == ("1234", "1", "1")
    assert hand["measured"][0] and hand["shift_ra"][0] == 0.5 and hand["module"][0] == ""
    np.testing.assert_array_equal(row_affine(hand[0]).matrix, np.eye(2))


def test_unknown_formats_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"table format 'csv': use one of \('ecsv', 'asdf', 'toml'\)"):
        write_wcs_adjust_table(sample_table(), tmp_path / "t.ecsv", ["ecsv", "csv"])
    (tmp_path / "t.fits").write_text("")
    with pytest.raises(ValueError, match=r"t.fits: unknown table format \(use .ecsv, .asdf or .toml\)"):
        read_wcs_adjust_table(tmp_path / "t.fits")


def test_missing_columns_are_named(tmp_path):
    Table({"program": ["1"], "visit": ["1"]}).write(tmp_path / "t.ecsv", format="ascii.ecsv")
    with pytest.raises(
        ValueError, match=r"t.ecsv: not a WCS adjustment table \(no column observation, measured\)"
    ):
        read_wcs_adjust_table(tmp_path / "t.ecsv")
    table = sample_table()
    table.remove_column("measured")
    (path,) = write_wcs_adjust_table(table, tmp_path / "m.asdf", ["asdf"])
    with pytest.raises(ValueError, match=r"m.asdf: not a WCS adjustment table \(no column measured\)"):
        read_wcs_adjust_table(path)


def test_asdf_file_of_something_else_is_named(tmp_path):
    import asdf

    asdf.AsdfFile({"data": np.zeros(3)}).write_to(tmp_path / "other.asdf")
    with pytest.raises(ValueError, match=r"other.asdf: not a WCS adjustment table \(no 'wcs_adjust' entry\)"):
        read_wcs_adjust_table(tmp_path / "other.asdf")


def test_toml_rows_missing_columns_are_named(tmp_path):
    """A [[visit]] without 'measured' would otherwise read as an unmeasured visit."""
    (tmp_path / "t.toml").write_text(
        "[[visit]]\nprogram = '1'\nobservation = '1'\nvisit = '1'\nmeasured = true\n"
        "[[visit]]\nprogram = '1'\nobservation = '1'\nvisit = '2'\nshift_ra = 0.5\n"
    )
    with pytest.raises(ValueError, match=r"t.toml: \[\[visit\]\] table 2 has no measured"):
        read_wcs_adjust_table(tmp_path / "t.toml")


def test_values_of_the_wrong_type_name_their_column(tmp_path):
    (tmp_path / "t.toml").write_text(
        "[[visit]]\nprogram = '1'\nobservation = '1'\nvisit = '1'\nmeasured = true\nshift_ra = 'east'\n"
    )
    with pytest.raises(ValueError, match=r"t.toml: WCS adjustment table column 'shift_ra'"):
        read_wcs_adjust_table(tmp_path / "t.toml")


def test_columns_in_other_units_are_refused(tmp_path):
    table = read_wcs_adjust_table(DATA / "wcs_adjust_table_0.1.0.ecsv")
    table["shift_ra"].unit = "mas"
    table.write(tmp_path / "mas.ecsv", format="ascii.ecsv")
    with pytest.raises(
        ValueError, match=r"mas.ecsv: column 'shift_ra' is in mas; the table's unit is arcsec"
    ):
        read_wcs_adjust_table(tmp_path / "mas.ecsv")
