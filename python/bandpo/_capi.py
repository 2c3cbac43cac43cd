"""libbandpo's C ABI (``bandpo/bandpo.h``) through ctypes: the one compiled piece the torch-free parts of the
package use (the tables of options, their checks, ``bandpo.np``). No compiled Python module and no torch:
this is what lets one wheel serve every Python.

The structs below mirror ``bandpo.h``; the library's ``bandpo_abi_version()`` is checked at load, and the
options struct is built from the library's own table rows (its field order is theirs, checked in C++).
Errors come back as the library's status and message: ``ValueError`` (a bad value, shape or option),
``TypeError`` (a wrong dtype or type), ``MemoryError``, ``RuntimeError``.
"""

from __future__ import annotations

import ctypes
import math
import numbers
import os
from ctypes import POINTER, Structure, byref, c_char_p, c_double, c_int, c_int32, c_int64, c_void_p
from typing import Any

ABI_VERSION = 4  # BANDPO_ABI_VERSION of the header these structs mirror

# bandpo_status -> Python exception
_EXCEPTIONS = {1: ValueError, 2: RuntimeError, 3: MemoryError, 4: TypeError}

# bandpo_dtype codes, by the dtype names numpy and torch share (ml_dtypes' bfloat16 included).
DTYPE_CODES = {"float32": 0, "float64": 1, "bfloat16": 2, "float16": 3, "bool": 4, "uint8": 5, "int64": 6}
OTHER_DTYPE = 7
FLOAT_DTYPE_NAMES = ("float32", "float64", "bfloat16", "float16")  # by code


class Array(Structure):
    _fields_ = [
        ("data", c_void_p),
        ("dtype", c_int),
        ("ndim", c_int32),
        ("shape", POINTER(c_int64)),
        ("dtype_name", c_char_p),
    ]


# band_loss's arrays in argument order (bandpo_loss_arrays; lower and upper: bounds the caller gives)
LOSS_ARRAY_NAMES = ("logp", "old_logp", "advantages", "mask", "ref_logp", "lower", "upper")


class LossArrays(Structure):
    _fields_ = [(name, Array) for name in LOSS_ARRAY_NAMES]


class LossLayout(Structure):
    _fields_ = [
        ("compute_dtype", c_int),
        ("rows", c_int64),
        ("cols", c_int64),
        ("advantages_per_row", c_int),
        ("mask_kind", c_int),
        ("convert", c_int),
    ]


class LossInputs(Structure):
    _fields_ = [
        ("dtype", c_int),
        ("rows", c_int64),
        ("cols", c_int64),
        ("logp", c_void_p),
        ("old_logp", c_void_p),
        ("advantages", c_void_p),
        ("advantages_per_row", c_int),
        ("mask", c_void_p),
        ("mask_kind", c_int),
        ("ref_logp", c_void_p),
        ("lower", c_void_p),
        ("upper", c_void_p),
    ]


class TableRow(Structure):
    _fields_ = [
        ("name", c_char_p),
        ("type", c_char_p),
        ("default_value", c_char_p),
        ("scope", c_char_p),
        ("requirement", c_char_p),
        ("group", c_int),
        ("value", c_double),
    ]


# bandpo_table codes
TABLE_DIVERGENCES, TABLE_AGGREGATIONS, TABLE_KL_ESTIMATORS, TABLE_METRICS, TABLE_OPTIONS, TABLE_CONSTANTS = range(6)


def library_path() -> str:
    """libbandpo.so of this package (``bandpo/lib``); ``BANDPO_LIBRARY`` names another build of it."""
    return os.environ.get("BANDPO_LIBRARY") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "lib", "libbandpo.so"
    )


def _load() -> ctypes.CDLL:
    path = library_path()
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise ImportError(f"bandpo: cannot load its library {path} ({e}); a broken installation?") from None
    if lib.bandpo_abi_version() != ABI_VERSION:
        raise ImportError(
            f"bandpo: {path} has C ABI version {lib.bandpo_abi_version()}, this package needs "
            f"{ABI_VERSION} (a library from another bandpo version)"
        )
    lib.bandpo_last_error.restype = c_char_p
    lib.bandpo_version.restype = c_char_p
    lib.bandpo_kl_table_builds.restype = c_int64
    for name in (
        "bandpo_band_bounds",
        "bandpo_band_loss",
        "bandpo_logit_stats",
        "bandpo_logit_grad",
        "bandpo_loss_layout_of",
        "bandpo_band_bounds_array",
        "bandpo_check_options",
        "bandpo_check_logit_options",
        "bandpo_logit_chunk_layout",
        "bandpo_table_get",
        "bandpo_parse_choice",
    ):
        getattr(lib, name).restype = c_int
    lib.bandpo_logit_stats.argtypes = [c_void_p, c_void_p, c_void_p, c_void_p, c_void_p]
    lib.bandpo_logit_grad.argtypes = [c_void_p, c_void_p, c_void_p, c_void_p]
    return lib


lib = _load()


def check(status: int) -> None:
    """Raise the exception of a failed call, with the library's message."""
    if status != 0:
        raise _EXCEPTIONS.get(status, RuntimeError)(lib.bandpo_last_error().decode())


def table(code: int) -> list[TableRow]:
    rows = []
    for i in range(lib.bandpo_table_size(c_int(code))):
        row = TableRow()
        check(lib.bandpo_table_get(c_int(code), c_int(i), byref(row)))
        rows.append(row)
    return rows


def _text(b: bytes) -> str:
    return b.decode()


# The options structs, one field per option row, in the rows' order: double for numbers, int for flags and choices,
# int64 for integers. Group 0 and 1: band_bounds' and band_loss's (bandpo_options); group 2: the lm_head steps'
# (bandpo_logit_options).
OPTION_ROWS = [r for r in table(TABLE_OPTIONS) if r.group in (0, 1)]
LOGIT_OPTION_ROWS = [r for r in table(TABLE_OPTIONS) if r.group == 2]
_C_TYPES = {"float": c_double, "float?": c_double, "int": c_int64}


class Options(Structure):
    _fields_ = [(_text(r.name), _C_TYPES.get(_text(r.type), c_int)) for r in OPTION_ROWS]


class LogitOptions(Structure):
    _fields_ = [(_text(r.name), _C_TYPES.get(_text(r.type), c_int)) for r in LOGIT_OPTION_ROWS]


class LogitChunk(Structure):
    _fields_ = [("rows", c_int64), ("vocab", c_int64), ("row_stride", c_int64), ("target", c_void_p)]


class LogitRowGrads(Structure):
    _fields_ = [("grad_logp", c_void_p), ("grad_entropy", c_void_p), ("logp", c_void_p), ("entropy", c_void_p)]


def _type_name(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _field(name: str, kind: str, value: Any, default: Any) -> Any:
    """One option's value in the struct's type; TypeError naming it for a value of the wrong type."""
    if kind in ("float", "float?"):
        if value is None and kind == "float?":
            return default  # the struct's sentinel: dual_clip +inf (off), normalizer NaN (unset)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            none = " or None" if kind == "float?" else ""
            raise TypeError(f"{name} must be a number (int or float){none}; got {_type_name(value)}")
        value = float(value)
        if kind == "float?" and math.isnan(value):
            raise ValueError(f"{name} must be a number (or None); got nan")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int; got {_type_name(value)}")
        if not -(1 << 63) <= int(value) < (1 << 63):
            raise ValueError(f"{name} must fit in int64, got {int(value)}")
        return int(value)
    if kind == "bool":
        if type(value).__name__ not in ("bool", "bool_"):
            raise TypeError(f"{name} must be True or False; got {_type_name(value)}")
        return int(bool(value))
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str; got {_type_name(value)}")
    code = c_int()
    check(lib.bandpo_parse_choice(name.encode(), value.encode(), byref(code)))
    return code.value


def _filled(struct, rows, defaults, checked, values: dict):
    """``struct`` (a ctypes options struct) with the library's defaults, ``values`` (option name -> value, any
    subset) set over them by their rows, then checked by the library as every face checks them (TypeError /
    ValueError naming the option)."""
    defaults(byref(struct))
    for row in rows:
        name = _text(row.name)
        if name in values:
            setattr(struct, name, _field(name, _text(row.type), values[name], getattr(struct, name)))
    check(checked(byref(struct)))
    return struct


def options(values: dict) -> Options:
    """The C options struct (bandpo_options) of ``values``, checked."""
    return _filled(Options(), OPTION_ROWS, lib.bandpo_default_options, lib.bandpo_check_options, values)


def logit_options(values: dict) -> LogitOptions:
    """The C struct of the lm_head steps' options (bandpo_logit_options) of ``values``, checked."""
    return _filled(
        LogitOptions(), LOGIT_OPTION_ROWS, lib.bandpo_default_logit_options, lib.bandpo_check_logit_options, values
    )


def describe(data: int, dtype_name: str, shape: tuple, keep: list) -> Array:
    """An array (data address, dtype name as numpy and torch print it, shape) as a bandpo_array; its shape
    buffer is appended to ``keep`` (alive as long as the struct is used)."""
    sizes = (c_int64 * max(len(shape), 1))(*shape)
    keep.append(sizes)
    code = DTYPE_CODES.get(dtype_name, OTHER_DTYPE)
    return Array(data or None, code, len(shape), sizes, dtype_name.encode())


ABSENT = Array(None, 0, -1, None, None)


def loss_layout(arrays: list, opts: Options) -> LossLayout:
    """band_loss's argument rules (``bandpo_loss_layout_of``) for ``arrays`` (LOSS_ARRAY_NAMES, in order), each
    None (absent) or (data address, dtype name, shape). TypeError / ValueError naming the argument."""
    keep: list = []
    arrays = list(arrays) + [None] * (len(LOSS_ARRAY_NAMES) - len(arrays))  # the trailing optional ones absent
    described = [ABSENT if a is None else describe(*a, keep) for a in arrays]
    layout = LossLayout()
    check(lib.bandpo_loss_layout_of(byref(LossArrays(*described)), byref(opts), byref(layout)))
    return layout


def loss_inputs(layout: LossLayout, pointers: list) -> LossInputs:
    """bandpo_loss_inputs of a call laid out by loss_layout, its arrays' data addresses in LOSS_ARRAY_NAMES order
    (None: absent), each contiguous and in the layout's compute dtype."""
    p = list(pointers) + [None] * (len(LOSS_ARRAY_NAMES) - len(pointers))
    return LossInputs(
        layout.compute_dtype,
        layout.rows,
        layout.cols,
        p[0],
        p[1],
        p[2],
        layout.advantages_per_row,
        p[3],
        layout.mask_kind,
        *p[4:],
    )


def kl_table_builds() -> int:
    """Float Band-KL tables built so far in this process (CPU and devices; ``bandpo_kl_table_builds``)."""
    return lib.bandpo_kl_table_builds()


def version() -> str:
    return lib.bandpo_version().decode()
