"""Inputs of `prepare`, read as a stream of row chunks so no input is ever held whole.

CSV and Parquet go through pyarrow's streaming readers (the optional extra `data`); `.npy` files
are memory-mapped and `.npz` / `.pt` arrays taken from safe loaders (never unpickled: a file that
needs code to load is refused); in-memory arrays are sliced. Array names are detected among
`features`/`x`/`obs`/`observations` and `labels`/`y`/`actions`, or named by `features_key` and `label`.
"""

from __future__ import annotations

import codecs
import glob
import io
import logging
import math
import re
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent_lightning.errors import ConfigError

log = logging.getLogger("agent_lightning.prepare")

FEATURE_KEYS = ("features", "x", "X", "obs", "observations", "states")
LABEL_KEYS = ("labels", "y", "actions", "action", "label", "targets", "target")
LABEL_COLUMNS = ("label", "labels", "y", "action", "actions", "target", "class")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
ARRAY_SUFFIXES = (".npy", ".npz", ".pt")
CODECS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}  # CSV/TSV text, compressed: pyarrow's codecs
INSTALL_HINT = "pip install 'lightning-agent-trainer[data]'"


def _stream(path: Path) -> Any:
    """The file's bytes, decompressed by the codec its suffix names (in any case: `.CSV.GZ` too)."""
    codec = CODECS.get(path.suffix.lower()) if kind_of(path) in (".csv", ".tsv") else None
    return _pyarrow().input_stream(str(path), compression=codec)


def kind_of(path: Path) -> str:
    """A file's type by its suffix, past a compression suffix: `data.csv.gz` is `.csv`."""
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) >= 2 and suffixes[-1] in CODECS and suffixes[-2] in (".csv", ".tsv"):
        return suffixes[-2]
    return path.suffix.lower()


@dataclass
class Chunk:
    """Consecutive rows of one input: float32 features, raw labels, optional group ids and split names."""

    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None
    splits: np.ndarray | None
    source: str
    first_row: int
    feature_names: list[str] | None = None
    in_memory: bool = False  # arrays or a DataFrame given in Python: `source` names them, not a file
    from_text: bool = False  # read from CSV/TSV text, where a missing label is spelt (`NA`), not null

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def where(self) -> str:
        """Where the rows came from, as messages name it: `input file <path>`, `input arrays` or `input DataFrame`."""
        return self.source if self.in_memory else f"input file {self.source}"


@dataclass(frozen=True)
class ReadOptions:
    """How rows are found in an input: label / group / split column (or array) names, feature columns."""

    label: str | None = None
    group: str | None = None
    split_column: str | None = None
    features: Sequence[str] | None = None
    features_key: str | None = None
    chunk_rows: int = 65_536
    float_columns: Sequence[str] | None = None  # CSV columns read as float64; None: the features (all numeric)
    delimiter: str | None = None  # CSV field separator; None: `,` for .csv, a tab for .tsv
    encoding: str = "utf-8"  # CSV text encoding, any Python codec name (latin-1, cp1252, utf-16, ...)
    decimal: str = "."  # CSV decimal point, e.g. `,` for `1,5`


def expand_inputs(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """Files named by a path, a glob, a directory, or a list of them; ConfigError when nothing matches."""
    patterns = [spec] if isinstance(spec, str | Path) else list(spec)
    files: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matched = sorted(p for p in path.iterdir() if kind_of(p) in TABLE_SUFFIXES + ARRAY_SUFFIXES)
        else:
            matched = [Path(p) for p in sorted(glob.glob(str(pattern)))]
        if not matched:
            raise ConfigError(f"input={pattern} matches no file")
        for file in matched:
            if kind_of(file) not in TABLE_SUFFIXES + ARRAY_SUFFIXES:
                raise ConfigError(
                    f"input file {file}: unsupported type {file.suffix!r}; use one of "
                    f"{', '.join(TABLE_SUFFIXES + ARRAY_SUFFIXES)} (CSV/TSV also as .csv.gz, .bz2, .zst or .lz4)"
                )
        files += matched
    return files


def input_bytes(files: Sequence[Path]) -> int:
    """Total size of the input files (sizes the shuffle buckets)."""
    return sum(f.stat().st_size for f in files)


def is_data_frame(value: Any) -> bool:
    """Whether `value` is a pandas DataFrame (told without importing pandas)."""
    return hasattr(value, "columns") and hasattr(value, "iloc") and hasattr(value, "dtypes")


def check_unique_columns(names: Sequence[str], where: str) -> None:
    """ConfigError for a column name that appears twice (which of the two is meant cannot be told)."""
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{where}: column {twice[0]!r} appears more than once; give each its name")


def _frame_batches(frame: Any, options: ReadOptions) -> Iterator[Any]:
    pa = _pyarrow()
    names = [str(c) for c in frame.columns]
    check_unique_columns(names, "input DataFrame")
    used = _read_only(names, options)  # only what is read converts: a column of mixed objects elsewhere is no matter
    try:
        table = pa.Table.from_pandas(frame[used] if used else frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
        said = "; ".join(str(part) for part in err.args)  # pyarrow gives (what failed, which column)
        raise ConfigError(f"input DataFrame: {said.splitlines()[0]}") from None
    return iter(table.to_batches(max_chunksize=options.chunk_rows))


def read_chunks(source: Path | Mapping[str, Any] | tuple, options: ReadOptions) -> Iterator[Chunk]:
    """Chunks of rows of one input file, one pandas DataFrame or one in-memory set of arrays."""
    if is_data_frame(source):  # a table like a file's: columns by name, the label detected or named
        yield from _table_chunks(_frame_batches(source, options), "DataFrame", options)
        return
    if not isinstance(source, Path):
        yield from _array_chunks(_named_arrays(source, "input arrays", options), "input arrays", options)
        return
    suffix = kind_of(source)
    if suffix in TABLE_SUFFIXES:
        yield from _table_chunks(table_batches(source, options), source, options)
    elif suffix == ".npy":
        yield from _array_chunks(_npy_arrays(source, options), str(source), options)
    else:
        yield from _array_chunks(_named_arrays(_load_archive(source), str(source), options), str(source), options)


# --- arrays: .npy / .npz / .pt / in memory ---------------------------------------------------------------


def _load_npy(path: Path) -> np.ndarray:
    # The header says what the file holds: objects (refused: they need pickle), or how many bytes of
    # numbers, which a truncated file lacks; only then is it memory-mapped.
    from numpy.lib import format as npy_format

    try:
        with open(path, "rb") as file:
            version = npy_format.read_magic(file)
            read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, _, dtype = read_header(file)
            offset = file.tell()
    except OSError as err:
        raise ConfigError(f"input file {path} cannot be read: {err.strerror or err}") from None
    except (ValueError, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"input file {path} is not a .npy array (unreadable NumPy header: {first})") from None
    if dtype.hasobject:
        raise ConfigError(f"input file {path}: refused, it holds Python objects ({dtype}), not numbers")
    expected = offset + math.prod(shape) * dtype.itemsize
    size = path.stat().st_size
    if size < expected:
        raise ConfigError(
            f"input file {path} is truncated: its header promises {expected:,} bytes ({shape} {dtype}), the file "
            f"has {size:,}"
        )
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ConfigError(f"input file {path} cannot be read as .npy: {str(err).splitlines()[0]}") from None


def _npy_arrays(path: Path, options: ReadOptions) -> dict[str, Any]:
    # A bare .npy holds features only: labels (and groups) come from .npy files named by label= / group=.
    if not options.label or not options.label.endswith(".npy"):
        raise ConfigError(f"input file {path} is a bare .npy array: name its labels' .npy file with label=PATH")
    arrays = {"features": _load_npy(path), "labels": _load_npy(Path(options.label))}
    if options.group:
        arrays["groups"] = _load_npy(Path(options.group))
    return arrays


def _load_archive(path: Path) -> dict[str, Any]:
    if path.suffix.lower() == ".npz":
        try:
            archive = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:  # a truncated .npz is no zip file
            raise ConfigError(
                f"input file {path} cannot be read as .npz (truncated or not an archive): {err}"
            ) from None
        return _LazyNpz(path, archive)
    import pickle

    from agent_lightning.safe_load import refusal_reason, weights_only_load

    try:
        loaded = weights_only_load(path, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        raise ConfigError(
            f"input file {path}: refused, it needs code to unpickle (only tensors are read): {refusal_reason(err)}"
        ) from None
    except Exception as err:  # not a torch file, truncated, ...
        raise ConfigError(f"input file {path} cannot be read as a .pt of tensors: {type(err).__name__}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"input file {path} holds a {type(loaded).__name__}; expected a dict of named tensors")
    return loaded


class _LazyNpz(dict):
    """An .npz whose members are read only when asked for (object members refused then)."""

    def __init__(self, path: Path, archive: Any) -> None:
        super().__init__({name: None for name in archive.files})
        self.path, self.archive = path, archive

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.archive[name]
        except ValueError as err:
            if "pickle" not in str(err):
                raise ConfigError(f"input file {self.path}: array {name!r} cannot be read ({err})") from None
            raise ConfigError(
                f"input file {self.path}: refused array {name!r}, it holds Python objects ({err})"
            ) from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # a damaged member
            raise ConfigError(f"input file {self.path}: array {name!r} cannot be read ({err})") from None


def _pick(
    arrays: Mapping[str, Any], wanted: str | None, candidates: Sequence[str], what: str, where: str, key: str
) -> str:
    if wanted:
        if wanted not in arrays:
            raise ConfigError(f"{where} has no array {wanted!r} ({what}); it holds {sorted(arrays)}")
        return wanted
    found = _detected(list(arrays), candidates, where, "array", what, key) if candidates else None
    if found is None:
        raise ConfigError(
            f"{where} has no {what} array: name it (one of {sorted(arrays)}); looked for {list(candidates)}"
        )
    return found


def _named_arrays(source: Mapping[str, Any] | tuple, where: str, options: ReadOptions) -> dict[str, Any]:
    if isinstance(source, tuple):
        if len(source) not in (2, 3):
            raise ConfigError("input arrays: give (features, labels) or (features, labels, groups)")
        named = dict(zip(("features", "labels", "groups"), source, strict=False))
        return {role: _array(value, role, where) for role, value in named.items()}
    names = {"features": _pick(source, options.features_key, FEATURE_KEYS, "features", where, "features_key")}
    names["labels"] = _pick(source, options.label, LABEL_KEYS, "labels", where, "label")
    if options.group:
        names["groups"] = _pick(source, options.group, (), "group", where, "group")
    if options.split_column:
        names["splits"] = _pick(source, options.split_column, (), "split", where, "split_column")
    return {role: _array(source[name], name, where) for role, name in names.items()}


def _array(value: Any, name: str, where: str) -> Any:
    # Arrays and tensors are sliced as they are (memory-mapped ones stay on disk). Python lists given in
    # memory become arrays; in a .pt file they are refused: tensors are what it is read for.
    if hasattr(value, "shape") and hasattr(value, "__getitem__"):
        return value
    if where == "input arrays" and isinstance(value, list | tuple):
        try:
            array = np.asarray(value)
        except ValueError as err:  # ragged
            raise ConfigError(f"input arrays: {name!r} is not a rectangular array ({err})") from None
        if array.dtype.kind in "fiubUS":
            return array
    if where == "input arrays":
        raise ConfigError(f"input arrays: {name!r} is a {type(value).__name__}, not an array of numbers")
    raise ConfigError(
        f"input file {where}: {name!r} is a {type(value).__name__}, not an array of numbers: save tensors, e.g. "
        f"torch.save({{{name!r}: torch.tensor(...)}}, ...)"
    )


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (possibly memory-mapped)
        value = value.detach()
        if value.dtype.is_floating_point and value.element_size() < 4:  # bfloat16 and float16: no numpy twin
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _array_chunks(arrays: dict[str, Any], where: str, options: ReadOptions) -> Iterator[Chunk]:
    features = arrays["features"]
    if getattr(features, "ndim", 0) != 2:
        raise ConfigError(f"{where}: features must be 2-D [rows, features], got shape {tuple(features.shape)}")
    rows = features.shape[0]
    labels = arrays["labels"]
    if getattr(labels, "ndim", 1) == 2 and labels.shape[1] > 1:
        raise ConfigError(
            f"{where}: labels have shape {tuple(labels.shape)}, one row of scores per sample (one-hot?): give one "
            "class index per row, e.g. labels.argmax(1)"
        )
    for name in ("labels", "groups", "splits"):
        if name in arrays and len(arrays[name]) != rows:
            raise ConfigError(f"{where}: {len(arrays[name])} {name} for {rows} feature rows")
    for start in range(0, rows, options.chunk_rows):
        stop = min(rows, start + options.chunk_rows)
        part = {name: _as_numpy(value[start:stop]) for name, value in arrays.items()}
        if part["features"].dtype.kind not in "fiub":
            raise ConfigError(f"{where}: features have dtype {part['features'].dtype}; expected numbers")
        chunk = Chunk(
            features=np.ascontiguousarray(part["features"], dtype=np.float32),
            labels=part["labels"].reshape(-1),
            groups=part.get("groups"),
            splits=part.get("splits"),
            source=where,
            first_row=start,
            feature_names=[str(c) for c in features.columns] if is_data_frame(features) else None,
            in_memory=where == "input arrays",
        )
        check_labels(chunk.labels, chunk.where, start)
        check_groups(chunk.groups, chunk.where, start, "groups")
        yield chunk


def check_groups(groups: np.ndarray | None, source: str, first_row: int, name: str) -> None:
    """ConfigError naming the first row of in-memory group ids that is missing (NaN, None or blank)."""
    if groups is None or not len(groups):
        return
    if groups.dtype.kind == "f":
        missing = np.isnan(groups)
    elif groups.dtype.kind == "O":
        missing = np.array([g is None or (isinstance(g, float) and g != g) for g in groups], dtype=bool)
        missing |= np.char.strip(groups.astype(str)) == ""
    elif groups.dtype.kind in "US":
        missing = np.char.strip(groups.astype(str)) == ""
    else:
        return
    _refuse_empty_group(missing, source, first_row, name)


def _check_group_column(column: Any, source: str, first_row: int, name: str) -> None:
    """The same check on a table's group column, in pyarrow (a Python loop over its rows would cost seconds)."""
    import pyarrow.compute as pc

    pa = _pyarrow()
    missing = pc.is_null(column, nan_is_null=True)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):  # a CSV's empty cell reads as ""
        missing = pc.or_(missing, pc.equal(pc.utf8_trim_whitespace(column), ""))
    if pc.any(missing).as_py():
        _refuse_empty_group(missing.to_numpy(zero_copy_only=False), source, first_row, name)


def _refuse_empty_group(missing: np.ndarray, source: str, first_row: int, name: str) -> None:
    if missing.any():
        raise ConfigError(
            f"{source}, row {first_row + int(np.flatnonzero(missing)[0])}: group {name!r} is empty: every row "
            "needs its group id, or its rows would be split apart"
        )


def check_labels(labels: np.ndarray, source: str, first_row: int, name: str = "labels") -> None:
    """ConfigError naming the first empty name label, or numeric label too large for a class index (int64)."""
    if not len(labels):
        return
    if labels.dtype.kind in "OUS":  # names: a CSV's empty cell reads as '', not as a missing value
        blank = np.char.strip(labels.astype(str)) == ""
        if blank.any():
            raise ConfigError(f"{source}, row {first_row + int(np.flatnonzero(blank)[0])}: label {name!r} is empty")
    elif labels.dtype.kind in "fu":  # ints fit; a fraction, NaN or negative is named when the labels are encoded
        with np.errstate(invalid="ignore"):
            huge = np.abs(labels.astype(np.float64)) >= 2.0**63
        if huge.any():
            row = int(np.flatnonzero(huge)[0])
            raise ConfigError(
                f"{source}, row {first_row + row}: label {labels[row]} is out of range: use class indices >= 0"
            )


# --- tables: CSV / Parquet through pyarrow ---------------------------------------------------------------


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise ConfigError(f"reading CSV or Parquet needs pyarrow: {INSTALL_HINT}") from None
    return pyarrow


def _check_text(path: Path, encoding: str, sample_bytes: int = 1 << 16) -> None:
    """ConfigError for a file named as text (CSV/TSV) whose first bytes are not text in `encoding`."""
    try:
        with _stream(path) as file:
            sample = file.read(sample_bytes)
    except OSError as err:  # a damaged compressed file
        raise ConfigError(f"input file {path} cannot be read: {str(err).splitlines()[0]}") from None
    try:
        text = codecs.getincrementaldecoder(encoding)().decode(sample, final=False)  # a cut character is fine
    except UnicodeDecodeError:
        text = None
    except UnicodeError:  # utf-16 / utf-32 without a byte-order mark: its byte order is not known
        raise ConfigError(
            f"input file {path} has no byte-order mark for encoding={encoding}: name the byte order, e.g. "
            f"encoding={encoding}-le (or -be)"
        ) from None
    if text is not None and "\x00" not in text:
        if not codecs.lookup(encoding).name.startswith("utf") and _is_utf8(sample):
            raise ConfigError(
                f"input file {path} is UTF-8 text, not {encoding} (its accents would read as two characters each): "
                "prepare it with encoding=utf-8 (a file of each encoding apart), or convert it to one encoding"
            )
        return
    if text is None and sample[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        raise ConfigError(f"input file {path} is not {encoding} text: it starts as UTF-16 does: encoding=utf-16")
    if text is None and b"\x00" not in sample:  # no NUL byte: likely text in a one-byte encoding
        raise ConfigError(
            f"input file {path} is not {encoding} text: if it is text in another encoding, name it, e.g. "
            "encoding=latin-1 or encoding=cp1252"
        )
    odd, even = sample[1::2], sample[0::2]
    for zeros, chars, name in ((odd, even, "utf-16-le"), (even, odd, "utf-16-be")):
        if _utf16_without_mark(zeros, chars):
            raise ConfigError(f"input file {path} is not {encoding} text: it reads as UTF-16 does: encoding={name}")
    raise ConfigError(
        f"input file {path} is not a text CSV (binary bytes in its first {len(sample):,}): give CSV/TSV text, "
        "Parquet, .npy, .npz or .pt"
    )


def _utf16_without_mark(zeros: bytes, chars: bytes) -> bool:
    """Whether bytes look like ASCII written as UTF-16: every other byte 0, the others printable text."""
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in chars)
    return len(zeros) > 8 and zeros.count(0) > 0.9 * len(zeros) and printable > 0.9 * len(chars)


def _is_utf8(sample: bytes) -> bool:
    """Whether bytes beyond ASCII decode as UTF-8: text in a one-byte encoding almost never does."""
    if sample.isascii():
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _separator_hint(names: Sequence[str]) -> str:
    """A hint naming `delimiter=` when a CSV header was read as one column holding another separator."""
    separators = {";": "semicolon", "\t": "tab", "|": "pipe", ",": "comma"}
    found = next((sep for sep in separators if len(names) == 1 and sep in names[0]), None)
    if found is None:
        return ""
    name = separators[found]
    return f"; its header reads as one column: if {name}s separate its fields, add delimiter={name}"


def _csv_batches(path: Path, options: ReadOptions) -> Iterator[Any]:
    pa = _pyarrow()
    from pyarrow import csv

    if path.stat().st_size == 0:  # no header, no rows: skipped as a header-only file is
        return
    _check_text(path, options.encoding)  # pyarrow would fail on the bytes inside its row handler, with its traceback
    bad_row: list[Any] = []

    def on_invalid(row: Any) -> str:
        bad_row.append(row)
        return "error"

    excel_sep = _excel_separator(path, options.encoding)  # Excel's first line `sep=;` names the delimiter
    delimiter = options.delimiter or excel_sep or ("\t" if kind_of(path) == ".tsv" else ",")
    if options.decimal == delimiter:
        raise ConfigError(
            f"decimal and the field delimiter of {path} are both {delimiter!r}: they must differ, e.g. "
            "delimiter=semicolon decimal=comma"
        )
    parse = csv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid)
    read = csv.ReadOptions(block_size=1 << 24, encoding=options.encoding, skip_rows=1 if excel_sep else 0)
    try:
        first_types = csv.ConvertOptions(decimal_point=options.decimal)
        with csv.open_csv(_stream(path), read_options=read, parse_options=parse, convert_options=first_types) as first:
            header = first.schema
        _check_decoded(header, path, options.encoding)
        # Feature columns (the named ones, else every numeric one) are read as float64, so a column whose first
        # block looks integral does not fail later; the label as float64 too when numeric, checked for whole
        # numbers here. Other columns keep their own types (an id copied beside predict's actions).
        special = {options.label, options.group, options.split_column}
        named = [options.features] if isinstance(options.features, str) else options.features
        chosen = options.float_columns if options.float_columns is not None else named
        types = {
            f.name: pa.float64()
            for f in header
            if (f.name in chosen if chosen is not None else f.name not in special)
            and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
        }
        if options.label in header.names and pa.types.is_integer(header.field(options.label).type):
            types[options.label] = pa.float64()
        convert = csv.ConvertOptions(
            column_types=types, decimal_point=options.decimal, include_columns=_read_only(header.names, options)
        )
        reader = csv.open_csv(_stream(path), read_options=read, parse_options=parse, convert_options=convert)
        yield from reader
    except pa.ArrowInvalid as err:
        undecoded = re.match(r"In CSV column #(\d+): CSV conversion error to string: invalid UTF8", str(err))
        if undecoded and int(undecoded.group(1)) < len(header.names):  # bytes past the first block
            _refuse_undecoded(header.names[int(undecoded.group(1))], path, options.encoding)
        stray = re.match(r"In CSV column #(\d+): CSV conversion error to \w+: invalid value '(.*)'", str(err))
        if stray and int(stray.group(1)) < len(header.names):  # a text cell after the rows the types were read from
            column = header.names[int(stray.group(1))]
            role = {options.label: "label", options.group: "group", options.split_column: "split"}.get(column)
            way_out = "" if role else ", or leave the column out with features=[...]"
            raise ConfigError(
                f"input file {path}: {role or 'column'} {column!r} holds {stray.group(2)!r} further down, not a "
                f"number: correct that cell{way_out}"
            ) from None
        if bad_row:
            row = bad_row[0]
            where = f"line {row.number if row.number is not None else _line_of(path, row.text, options.encoding)}"
            hint = _separator_hint([_first_line(path, options.encoding)]) if row.expected_columns == 1 else ""
            raise ConfigError(
                f"input file {path}, {where}: {row.actual_columns} fields where the header has "
                f"{row.expected_columns} (ragged row){hint}"
            ) from None
        raise ConfigError(f"input file {path}: {str(err).splitlines()[0]}") from None


def _check_decoded(header: Any, path: Path, encoding: str) -> None:
    """ConfigError for a column pyarrow kept as bytes: text that is not in `encoding` past the sample checked."""
    pa = _pyarrow()
    undecoded = [f.name for f in header if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    if undecoded:
        _refuse_undecoded(undecoded[0], path, encoding)


def _refuse_undecoded(column: str, path: Path, encoding: str) -> None:
    raise ConfigError(
        f"input file {path}: column {column!r} holds text that is not {encoding}: name its encoding, e.g. "
        "encoding=cp1252 or encoding=latin-1"
    )


def _read_only(names: Sequence[str], options: ReadOptions) -> list[str]:
    """The columns to parse when features and label are named (others are never converted); [] for all."""
    if not options.features or not options.label:
        return []
    features = [options.features] if isinstance(options.features, str) else list(options.features)
    wanted = {*features, options.label, options.group, options.split_column}
    return [name for name in names if name in wanted]


def _open_text(path: Path, encoding: str) -> Any:
    """The file as text, decompressed where its suffix names a codec."""
    return io.TextIOWrapper(_stream(path), encoding, errors="replace")


def _excel_separator(path: Path, encoding: str) -> str | None:
    with _open_text(path, encoding) as file:
        match = re.fullmatch(r"\ufeff?sep=(.)", file.readline().rstrip("\r\n"))
    return match.group(1) if match else None


def _line_of(path: Path, text: str, encoding: str) -> int | str:
    # pyarrow's streaming reader does not count lines: find the bad row's text, one line at a time.
    with _open_text(path, encoding) as file:
        for number, line in enumerate(file, start=1):
            if line.rstrip("\r\n") == text:
                return number
    return "?"


def _first_line(path: Path, encoding: str) -> str:
    with _open_text(path, encoding) as file:
        return file.readline()


def _parquet_batches(path: Path, options: ReadOptions) -> Iterator[Any]:
    pa = _pyarrow()
    from pyarrow import parquet

    try:
        yield from parquet.ParquetFile(path).iter_batches(batch_size=options.chunk_rows)
    except (pa.ArrowInvalid, OSError) as err:
        raise ConfigError(f"input file {path} cannot be read as Parquet: {str(err).splitlines()[0]}") from None


def _detected(
    names: Sequence[str], candidates: Sequence[str], where: str, kind: str, role: str, key: str = "label"
) -> str | None:
    """The one candidate name present (None for none); ConfigError when several are: which is meant is not known."""
    found = [c for c in candidates if c in names]
    if len(found) > 1:
        raise ConfigError(
            f"{where} has several {kind}s that could be the {role} ({', '.join(map(repr, found))}): name it, "
            + " or ".join(f"{key}={name}" for name in found)
        )
    return found[0] if found else None


# Columns pandas writes for a DataFrame's index (`to_csv`'s unnamed first column, read back as `Unnamed: 0`,
# or Parquet's `__index_level_0__`): never a feature unless named in `features=`.
_INDEX_COLUMN = re.compile(r"^(|Unnamed: \d+|__index_level_\d+__)$")


def _default_features(schema: Any, special: set[str | None], where: str) -> list[str]:
    """Every column but the label, group and split ones and a pandas index (logged when left out)."""
    names = schema.names
    try:  # a Parquet file pandas wrote lists its index columns (a named index keeps its name)
        stored = [c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)]
    except (ValueError, TypeError, AttributeError):
        stored = []
    index = [n for n in names if (_INDEX_COLUMN.match(n) or n in stored) and n not in special]
    if index:
        log.info("%s: column(s) %s left out as a pandas index (features=[...] to use them)", where, index)
    return [n for n in names if n not in special and n not in index]


def check_feature_columns(batch: Any, columns: Sequence[str], where: str, decimal: str = ".") -> None:
    """ConfigError for a feature column the pyarrow `batch` lacks or that does not hold numbers (`where`: its input)."""
    pa = _pyarrow()
    for name in columns:
        if name not in batch.schema.names:
            raise ConfigError(f"{where} has no feature column {name!r}; its columns are {batch.schema.names}")
        kind = batch.schema.field(name).type
        if is_number_type(kind) or pa.types.is_null(kind):  # null: empty so far, named by row as NaN
            continue
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            row, value = _first_non_number(batch.column(name))
            if row is not None:
                raise ConfigError(
                    f"{where}, row {row}: feature {name} is {value!r}, not a number" + _decimal_hint(value, decimal)
                )
        raise ConfigError(f"{where}: feature column {name!r} holds {kind}, not numbers")


FLOAT32_EXACT = 2**24  # whole numbers beyond this are rounded by float32, the dataset's feature type


def _warn_of_ids(batch: Any, columns: Sequence[str], where: str) -> None:
    """Log a feature column of whole numbers beyond float32's exact range: most likely an id or a time."""
    import pyarrow.compute as pc

    pa = _pyarrow()
    for name in columns:
        column = batch.column(name)
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            continue
        ends = pc.min_max(column).as_py()  # not abs(): the smallest int64 has no positive twin
        if ends["min"] is None or max(abs(ends["min"]), abs(ends["max"])) < FLOAT32_EXACT:
            continue
        largest = max(abs(ends["min"]), abs(ends["max"]))
        if not pc.all(pc.equal(column, pc.round(column))).as_py():
            continue
        log.warning(
            "%s: feature column %r holds whole numbers up to %s, which float32 rounds (exact to %s): an id or a "
            "time? leave it out with features=[...]",
            where, name, f"{int(largest):,}", f"{FLOAT32_EXACT:,}",
        )  # fmt: skip


def is_number_type(kind: Any) -> bool:
    """Whether a pyarrow type holds numbers a feature can be (integers, floats, decimals, booleans)."""
    types = _pyarrow().types
    return types.is_integer(kind) or types.is_floating(kind) or types.is_boolean(kind) or types.is_decimal(kind)


def _first_non_number(column: Any) -> tuple[int | None, Any]:
    """(row, value) of the first cell of a text column that is not a number; (None, None) if every one is."""
    for row, value in enumerate(column.to_pylist()):
        if value is None:
            continue
        try:
            float(value)
        except ValueError:
            return row, value
    return None, None


def feature_matrix(batch: Any, columns: Sequence[str]) -> np.ndarray:
    """The pyarrow `batch`'s numeric `columns` as a float32 [rows, columns] array (an empty cell as NaN)."""
    pa = _pyarrow()
    # Column by column into rows of a [features, rows] array, then one transposing copy: writing
    # each column into a strided [rows, features] array is ~9x slower.
    by_column = np.empty((len(columns), batch.num_rows), dtype=np.float32)
    for j, name in enumerate(columns):
        column = batch.column(name)
        plain = column.null_count == 0 and not pa.types.is_decimal(column.type)
        by_column[j] = column.to_numpy(zero_copy_only=False) if plain else _nan_filled(column)
    return np.ascontiguousarray(by_column.T)


def table_batches(path: Path, options: ReadOptions) -> Iterator[Any]:
    """The pyarrow record batches of a CSV/TSV or Parquet file (numeric CSV columns as float64)."""
    if kind_of(path) in (".csv", ".tsv"):
        return _csv_batches(path, options)
    return _parquet_batches(path, options)


def _table_chunks(batches: Iterator[Any], path: Path | str, options: ReadOptions) -> Iterator[Chunk]:
    in_memory = not isinstance(path, Path)
    where = f"input {path}" if in_memory else f"input file {path}"
    first_row = 0
    columns: list[str] | None = None
    label = options.label
    for batch in batches:
        names = batch.schema.names
        if columns is None:
            check_unique_columns(names, where)
            if label is None:
                label = _detected(names, LABEL_COLUMNS, where, "column", "label")
                if label is None:
                    raise ConfigError(
                        f"{where}: no label column; name it with label= (columns: {names})" + _separator_hint(names)
                    )
            for key, name in (("label", label), ("group", options.group), ("split column", options.split_column)):
                if name is not None and name not in names:
                    raise ConfigError(
                        f"{where} has no {key} {name!r}; its columns are {names}" + _separator_hint(names)
                    )
            special = {label, options.group, options.split_column}
            given = [options.features] if isinstance(options.features, str) else options.features  # one column
            columns = list(given) if given else _default_features(batch.schema, special, where)
            if not columns:
                raise ConfigError(f"{where}: no feature columns besides {sorted(special - {None})}")
            for name in columns:
                for role, taken in (("label", label), ("group", options.group), ("split", options.split_column)):
                    if name == taken:
                        raise ConfigError(
                            f"features lists {name!r}, the {role} column of {path}: list only feature columns"
                        )
            check_feature_columns(batch, columns, where, options.decimal)
            _warn_of_ids(batch, columns, where)
        features = feature_matrix(batch, columns)
        labels = batch.column(label)
        if labels.null_count:
            null_at = first_row + int(np.flatnonzero(np.asarray(labels.is_null()))[0])
            raise ConfigError(f"{where}, row {null_at}: label {label!r} is empty")
        label_values = labels.to_numpy(zero_copy_only=False)
        check_labels(label_values, where, first_row, label)
        groups = None
        if options.group:
            _check_group_column(batch.column(options.group), where, first_row, options.group)
            groups = batch.column(options.group).to_numpy(zero_copy_only=False)
        yield Chunk(
            features=features,
            labels=label_values,
            groups=groups,
            splits=batch.column(options.split_column).to_numpy(zero_copy_only=False) if options.split_column else None,
            source=where if in_memory else str(path),
            first_row=first_row,
            feature_names=columns,
            in_memory=in_memory,
            from_text=not in_memory and kind_of(Path(path)) in (".csv", ".tsv"),
        )
        first_row += batch.num_rows


def _decimal_hint(value: str, decimal: str) -> str:
    """A hint naming `decimal=` when a text cell is a number with another decimal point."""
    match = re.fullmatch(r"[-+]?\d*([.,])\d+", value.strip())
    if match is None or match.group(1) == decimal:
        return ""
    point = "decimal=comma" if match.group(1) == "," else "decimal=."
    return f": if {match.group(1)!r} is its decimal point, add {point}"


def _nan_filled(column: Any) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.fill_null(column.cast("float64"), float("nan")).to_numpy(zero_copy_only=False)
