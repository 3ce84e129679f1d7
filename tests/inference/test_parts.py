"""Survey-scale reading and writing of `galmorph predict` (issue 20): every source yields its
galaxies from any start on, a block at a time (what a resumed run skips is not read); the
output parts folder (galmorph.inference.parts) continues, refuses another prediction's parts,
cleans what a killed process left and assembles CSV or Parquet. The whole command, killed and
rerun with a real model: tests/workflows/test_predict_scale.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_h5

from galmorph.core.errors import GalmorphError
from galmorph.inference import catalogue, inputs, parts
from galmorph.inference.catalogue import CatalogueSource, cutout_file
from galmorph.inference.model import Prediction

PIL = pytest.importorskip("PIL")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
from PIL import Image  # noqa: E402

G = inputs.Geometry(32)
NAMES = ("E", "S")


def _same(a, b):
    assert [e.source for e in a] == [e.source for e in b] and [e.meta for e in a] == [e.meta for e in b]
    assert all((x.image is None and y.image is None) or np.array_equal(x.image, y.image) for x, y in zip(a, b))


def _no_fetch(todo, *args):
    assert todo == [], "every cutout is cached"


def test_every_source_yields_its_galaxies_from_any_start(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "H5_CHUNK", 4)
    monkeypatch.setattr(catalogue, "PIECE", 3)
    h5 = inputs.H5Source(make_h5(tmp_path / "a.h5", n=11, size=32, id=np.arange(11)), G)
    rng = np.random.default_rng(0)
    for k in range(5):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"g{k}.png")
    (files,) = inputs.discover([str(tmp_path)], G)
    ids, ra, dec = [f"c{k}" for k in range(8)], np.linspace(1, 8, 8).tolist(), np.linspace(-3, 3, 8).tolist()
    cache = tmp_path / "cache"
    cache.mkdir()
    for k in range(8):
        Image.fromarray(np.full((32, 32, 3), 10 * k, np.uint8)).save(cutout_file(cache, ra[k], dec[k], 0.4, 32), "JPEG")
    (tmp_path / "cat.csv").write_text("id,ra,dec\n" + "".join(f"{i},{r!r},{d!r}\n" for i, r, d in zip(ids, ra, dec)))
    pq.write_table(pa.table({"Id": ids, "RA": ra, "DEC": dec}), tmp_path / "cat.parquet", row_group_size=5)
    csv_cat = CatalogueSource(tmp_path / "cat.csv", G, cache, scale=0.4, fetch=_no_fetch)
    parquet_cat = CatalogueSource(tmp_path / "cat.parquet", G, cache, scale=0.4, fetch=_no_fetch)
    for source in (h5, files, csv_cat, parquet_cat):
        everything = list(source)
        assert len(everything) == len(source) and all(e.image is not None for e in everything)
        for start in (0, 1, 3, 4, 5, len(source) - 1, len(source)):
            _same(list(source.entries(start)), everything[start:])
    _same([e for e in parquet_cat], [e for e in csv_cat])
    assert [e.meta for e in csv_cat][2] == {"id": "c2", "ra": ra[2], "dec": dec[2]}
    broken = inputs.H5Source(tmp_path / "g0.png", G)  # one error entry, then nothing
    assert broken.problem and len(list(broken.entries(0))) == 1 and list(broken.entries(1)) == []


def _table(sources, std=False):
    p = np.tile([[0.25, 0.75]], (len(sources), 1))
    meta = [{"source": s} for s in sources]
    return parts.part_table(meta, Prediction(p, p / 10 if std else None), NAMES)


def test_parts_continue_refuse_another_key_and_assemble_csv_or_parquet(tmp_path):
    out = tmp_path / "p.csv"
    key = {"model": "m", "inputs": ["a"], "options": {"crop": 1}, "part_size": 2}
    store = parts.Parts.open(out, key)
    store.write(0, _table(["a", "b"]), [])
    store.write(1, _table(["c"]), [("d", "bad")])
    # what a process killed while writing part 2 leaves: its errors, temporary files
    store.errors_path(2).write_text("source,error\nx,late\n")
    (store.folder / ".part-000002.parquet.x1.tmp").write_bytes(b"half")
    (tmp_path / ".p.csv.x2.tmp").write_text("half")
    again = parts.Parts.open(out, key)
    assert again.done() == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["p.csv.parts"]
    assert sorted(p.name for p in again.folder.iterdir()) == [
        "manifest.json", "part-000000.parquet", "part-000001.errors.csv", "part-000001.parquet"]
    assert json.loads((again.folder / "manifest.json").read_text()) == {"format": parts.FORMAT, "key": key}
    with pytest.raises(GalmorphError, match=r"p.csv.parts holds the parts of another prediction \(different inputs, "
                                            r"part_size\); delete it, pass --restart"):
        parts.Parts.open(out, {**key, "inputs": ["b"], "part_size": 3})
    assert again.assemble(out, tmp_path / "p.errors.csv") == (3, 1)
    # no row has an id, ra or dec: those columns are left out
    assert out.read_text().splitlines() == ["source,p_E,p_S,predicted,confidence"] + [
        f"{s},0.25,0.75,S,0.75" for s in "abc"]
    assert (tmp_path / "p.errors.csv").read_text() == "source,error\nd,bad\n"
    assert again.assemble(tmp_path / "p.parquet", tmp_path / "p.errors.csv") == (3, 1)
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.column_names == ["source", "p_E", "p_S", "predicted", "confidence"]
    assert table["source"].to_pylist() == ["a", "b", "c"] and table["p_S"].to_pylist() == [0.75] * 3
    again.remove()
    assert not again.folder.exists() and parts.Parts.open(out, key, restart=True).done() == 0
    restarted = parts.Parts.open(out, {**key, "model": "other"}, restart=True)
    assert restarted.done() == 0 and restarted.key["model"] == "other"


@pytest.mark.parametrize("statistics", [True, False])
def test_which_optional_columns_hold_a_value_is_read_from_the_footer_or_else_the_data(tmp_path, statistics):
    import pyarrow as pa

    path = tmp_path / "part.parquet"
    table = pa.table({"id": pa.array([None, None, None, "7"], pa.string()), "ra": pa.array([None] * 4, pa.float64())})
    pq.write_table(table, path, row_group_size=2, write_statistics=statistics)  # "7" in the second row group
    part = pq.ParquetFile(path)
    assert part.metadata.row_group(1).column(0).is_stats_set is statistics
    assert parts._has_values(part, "id") and not parts._has_values(part, "ra") and not parts._has_values(part, "dec")


def test_a_catalogue_of_image_paths_reads_them_like_files(tmp_path, monkeypatch):
    monkeypatch.setattr(catalogue, "PIECE", 2)
    rng = np.random.default_rng(1)
    (tmp_path / "imgs").mkdir()
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"g{k}.png")
    (tmp_path / "imgs" / "empty.png").write_bytes(b"")
    geometry = inputs.Geometry(32, crop=0.8)
    (files,) = inputs.discover([str(tmp_path / "imgs")], geometry)
    rows = {"path": ["imgs/g0.png", str(tmp_path / "imgs" / "g1.png"), "imgs/empty.png", None, "imgs/g2.png"],
            "id": ["a", None, "c", "d", "e"], "ra": [10.5, None, None, None, 11.0]}
    pq.write_table(pa.table(rows), tmp_path / "list.parquet")
    src = CatalogueSource(tmp_path / "list.parquet", geometry, tmp_path / "cache", scale=None, fetch=_no_fetch)
    got = list(src)
    assert [e.source for e in got] == ["a", str(tmp_path / "imgs" / "g1.png"), "c", "d", "e"]
    by_name = {p.name: e.image for p, e in zip(files.files, files)}
    for k, name in ((0, "g0.png"), (1, "g1.png"), (4, "g2.png")):
        assert np.array_equal(got[k].image, by_name[name])
    assert got[2].error == "empty file" and got[3].error == "no path" and got[3].meta == {"id": "d"}
    assert got[0].meta == {"id": "a", "ra": 10.5} and got[1].meta == {}
    _same(list(src.entries(3)), got[3:])
    (tmp_path / "x.csv").write_text("name,size\nx,1\n")
    with pytest.raises(GalmorphError, match="no ra or dec column .* or a path column of image files"):
        CatalogueSource(tmp_path / "x.csv", geometry, tmp_path, scale=1, fetch=_no_fetch)


def test_a_csv_catalogues_length_is_its_entries_blank_lines_left_out(tmp_path):
    """predict skips an earlier input's galaxies by its length when it continues: a length that
    counted blank lines would drop as many galaxies of the next input."""
    (tmp_path / "g.png").write_bytes(b"")
    (tmp_path / "list.csv").write_text("path,id\n\ng.png,a\n\n\ng.png,b\n\n")
    src = CatalogueSource(tmp_path / "list.csv", inputs.Geometry(32), tmp_path / "cache", scale=None, fetch=_no_fetch)
    assert len(src) == len(list(src)) == 2
