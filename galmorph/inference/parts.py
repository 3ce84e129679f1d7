"""A long prediction written in parts that a rerun continues, then assembled into one file.

`OUTPUT.parts/` (beside the output the user asked for) holds:

- `manifest.json`: what the parts are the output of (`key`: the model, the inputs, the
  options, the part size), written before the first part; a rerun whose key differs is
  refused (`Parts.open`) rather than mixed in;
- `part-NNNNNN.parquet`: the output rows of galaxies [N x part_size, (N + 1) x part_size) of
  the input stream, errors included in the count, in input order (`part_table`: `source`,
  `id`, `ra`, `dec`, `p_<class>`..., `predicted`, `confidence`, `p_<class>_std` for an
  ensemble; `id` is text, the ids of several inputs being numbers or names);
- `part-NNNNNN.errors.csv` beside it where some of those galaxies failed (`source`, `error`).

Each file is written to a temporary name and renamed into place, the errors first: a part
counts as done once its `.parquet` is in place, so that parts 0..k-1 being there means the
first k x part_size galaxies are done. A process killed at any instant loses at most the part
it was writing. `assemble` then writes the single OUTPUT (CSV, or Parquet where its name
ends in .parquet) and its errors CSV, each atomically and one part at a time (memory: one
part), and `remove` deletes the folder. The id, ra and dec columns are kept only where some
row has them.

galmorph predict writes its parts here; anything that predicts partitions of an input in
order (a Spark job, say) can write them with `write` and finish with `assemble`.
`after_commit`, None in normal use, is called with each part's path once it is in place:
tests kill the process there.
"""

from __future__ import annotations

import csv
import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from galmorph.core.errors import GalmorphError
from galmorph.core.io import atomic_path, atomic_write, errors_path

FORMAT = "galmorph-predict-parts-1"
META = ("source", "id", "ra", "dec")
OPTIONAL_META = ("id", "ra", "dec")
MANIFEST = "manifest.json"

after_commit: Callable[[Path], None] | None = None


def folder_of(output: Path) -> Path:
    """The parts folder of `output`: `<output>.parts` beside it."""
    output = Path(output)
    return output.with_name(output.name + ".parts")


def is_parquet(path: Path) -> bool:
    return Path(path).suffix.lower() == ".parquet"


def schema(class_names, ensemble: bool):
    """The pyarrow schema of every part: META, then the columns of galmorph.inference.model.table."""
    import pyarrow as pa

    from galmorph.inference.model import column

    fields = [("source", pa.string()), ("id", pa.string()), ("ra", pa.float64()), ("dec", pa.float64())]
    fields += [(column(c), pa.float64()) for c in class_names]
    fields += [("predicted", pa.string()), ("confidence", pa.float64())]
    if ensemble:
        fields += [(column(c) + "_std", pa.float64()) for c in class_names]
    return pa.schema(fields)


def _text(value):
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _number(value):
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def part_table(meta: list[dict], prediction, class_names):
    """The pyarrow table of one part: `meta` (one dict per predicted galaxy: `source`, and
    `id`, `ra`, `dec` where known) beside `prediction` (galmorph.inference.model.Prediction,
    one row per dict)."""
    import pyarrow as pa

    from galmorph.inference.model import table

    frame = table(prediction, class_names)
    columns = {"source": [_text(m["source"]) for m in meta], "id": [_text(m.get("id")) for m in meta],
               "ra": [_number(m.get("ra")) for m in meta], "dec": [_number(m.get("dec")) for m in meta]}
    columns.update({name: frame[name].to_numpy() for name in frame.columns})
    return pa.Table.from_pydict(columns, schema=schema(class_names, prediction.std is not None))


class Parts:
    """The parts folder of one output (module docstring)."""

    def __init__(self, folder: Path, key: dict):
        self.folder, self.key = Path(folder), key
        self.part_size = int(key["part_size"])

    @classmethod
    def open(cls, output: Path, key: dict, *, restart: bool = False) -> "Parts":
        """The parts folder of `output` for a run described by `key` (JSON-able, with a
        `part_size`): created if missing, continued if its manifest holds the same key, else
        a GalmorphError (or, with `restart`, emptied first). Leftovers of a killed process
        (temporary files, the errors of a part that never got its rows) are removed."""
        folder = folder_of(output)
        if restart and folder.exists():
            _remove_tree(folder)
        stored = _read_manifest(folder)
        if stored is None and folder.exists() and any(folder.glob("part-*.parquet")):
            raise GalmorphError(f"{folder} holds parts but no readable {MANIFEST}; delete it, pass --restart, "
                                "or choose another --output")
        if stored is not None and stored != {"format": FORMAT, "key": key}:
            differ = [k for k in key if stored.get("key", {}).get(k) != key[k]] or ["format"]
            raise GalmorphError(f"{folder} holds the parts of another prediction (different {', '.join(differ)}); "
                                "delete it, pass --restart, or choose another --output")
        folder.mkdir(exist_ok=True)
        parts = cls(folder, key)
        if stored is None:
            atomic_write(folder / MANIFEST, lambda fh: json.dump({"format": FORMAT, "key": key}, fh, indent=1))
        parts._clean(Path(output))
        return parts

    def path(self, index: int) -> Path:
        return self.folder / f"part-{index:06d}.parquet"

    def errors_path(self, index: int) -> Path:
        return self.folder / f"part-{index:06d}.errors.csv"

    def done(self) -> int:
        """How many parts are done: parts 0..done-1 are all in place."""
        k = 0
        while self.path(k).is_file():
            k += 1
        return k

    def _clean(self, output: Path) -> None:
        for tmp in [*self.folder.glob(".*.tmp"), *output.parent.glob(f".{output.name}.*.tmp"),
                    *output.parent.glob(f".{errors_path(output).name}.*.tmp"),
                    *output.parent.glob(f".{self.folder.name}.*.tmp")]:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        done = self.done()
        for path in self.folder.glob("part-*"):
            index = int(path.name[5:11]) if path.name[5:11].isdigit() else -1
            if index >= done:  # after a gap, or the errors of a part whose rows never came
                path.unlink()

    def write(self, index: int, table, errors: list[tuple[str, str]]) -> None:
        """Part `index`: its rows (a part_table) and its failed galaxies, each atomically; the
        rows last, which makes it done."""
        import pyarrow.parquet as pq

        if errors:
            atomic_write(self.errors_path(index), lambda fh: errors_writer(fh).writerows(errors))
        with atomic_path(self.path(index)) as tmp:
            pq.write_table(table, tmp)
        if after_commit is not None:
            after_commit(self.path(index))

    @staticmethod
    def _kept_columns(paths: list[Path], names: list[str]) -> list[str]:
        """`names` less the optional metadata columns that no row of any part fills."""
        import pyarrow.parquet as pq

        present = set()
        for path in paths:
            missing = [c for c in OPTIONAL_META if c not in present]
            if not missing:
                break
            part = pq.ParquetFile(path)
            present |= {c for c in missing if _has_values(part, c)}
        return [c for c in names if c not in OPTIONAL_META or c in present]

    def assemble(self, output: Path, errors_output: Path) -> tuple[int, int]:
        """Write `output` (CSV, or Parquet for a .parquet name) from parts 0..done-1, and
        `errors_output` (CSV), each atomically, a part at a time; (rows, errors) written."""
        import pyarrow.parquet as pq

        paths = [self.path(k) for k in range(self.done())]
        full = pq.read_schema(paths[0]) if paths else None
        keep = self._kept_columns(paths, full.names if full else list(META))
        if is_parquet(output):
            import pyarrow as pa

            target = pa.schema([full.field(c) if full else pa.field(c, pa.string()) for c in keep])
            rows = join_parquet(paths, Path(output), target)
        else:
            rows = 0
            with atomic_path(Path(output)) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
                if not paths:
                    fh.write(",".join(keep) + "\n")
                for k, path in enumerate(paths):
                    frame = pq.read_table(path, columns=keep).to_pandas()
                    frame.to_csv(fh, index=False, header=k == 0, lineterminator="\n")
                    rows += len(frame)
        failed = 0

        def write_errors(fh):
            nonlocal failed
            writer = errors_writer(fh)
            for k in range(len(paths)):
                if self.errors_path(k).is_file():
                    with open(self.errors_path(k), newline="", encoding="utf-8") as part:
                        body = list(csv.reader(part))[1:]
                    writer.writerows(body)
                    failed += len(body)

        atomic_write(Path(errors_output), write_errors, text=True)
        return rows, failed

    def remove(self) -> None:
        _remove_tree(self.folder)


def errors_writer(fh):
    """A csv writer into `fh` of errors rows (`source`, `error`), the header written."""
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(["source", "error"])
    return writer


def join_parquet(paths: list[Path], output: Path, schema) -> int:
    """The Parquet files `paths`, in order, as the one Parquet file `output` (atomically) with
    the columns of the pyarrow `schema`, a row batch at a time; its number of rows."""
    import pyarrow.parquet as pq

    rows = 0

    def write(fh):
        nonlocal rows
        with pq.ParquetWriter(fh, schema) as writer:
            for path in paths:
                for batch in pq.ParquetFile(path).iter_batches(columns=schema.names):
                    writer.write_batch(batch)
                    rows += batch.num_rows

    atomic_write(output, write, text=False)
    return rows


def _has_values(part, column: str) -> bool:
    """Whether some row of the Parquet file `part` (a pyarrow ParquetFile) fills `column`: from
    the null counts in its footer, reading the column itself only where they are missing."""
    meta = part.metadata
    names = [meta.schema.column(j).path for j in range(meta.num_columns)]  # a nested field is "s.id", not "id"
    if column not in names:
        return False
    j = names.index(column)
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        stats = group.column(j).statistics
        if stats is None or not stats.has_null_count:
            return part.read(columns=[column]).column(0).null_count < meta.num_rows
        if stats.null_count < group.num_rows:
            return True
    return False


def _read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _remove_tree(folder: Path) -> None:
    """Rename `folder` aside, then remove it: a kill part way leaves no half-emptied parts folder."""
    aside = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    folder.rename(aside)
    shutil.rmtree(aside, ignore_errors=True)

