"""A restricted unpickler for the pickles other projects ship as data (FedBN's domain splits, CIFAR's
python batches): plain data and numpy arrays only, never code.

``pickle.load`` calls whatever callable a file names, so a crafted "data" file can run any code. Here
only these globals may appear in the file:

* builtin containers and scalars: ``set``, ``frozenset``, ``bytearray``, ``complex`` (lists, tuples,
  dicts, strings, bytes, numbers, booleans and None need no global);
* numpy arrays: ``numpy.ndarray``, ``numpy.dtype`` and numpy's reconstruction functions
  (``_reconstruct``, ``scalar``, ``_frombuffer``, under numpy 1's ``numpy.core`` or numpy 2's
  ``numpy._core`` name);
* ``_codecs.encode`` with the ``latin1`` codec only (how protocol-2 pickles written by Python 3 store
  bytes).

Every other global (``os.system``, ``builtins.exec``, any class) is refused with ``DataError`` before
it is looked up, so nothing named in the file is imported or called.
"""
from __future__ import annotations

import codecs
import io
import pickle
from typing import Any

import numpy as np

from federated.errors import DataError

__all__ = ["load_data_pickle"]


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with the {encoding!r} codec")
    return codecs.encode(text, "latin1", errors)


def _allowed() -> dict[tuple[str, str], Any]:
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    numeric = np._core.numeric if hasattr(np, "_core") else np.core.numeric
    out: dict[tuple[str, str], Any] = {}
    for module in ("builtins", "__builtin__"):
        for t in (set, frozenset, bytearray, complex):
            out[(module, t.__name__)] = t
    for core in ("numpy.core", "numpy._core"):
        out[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        out[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):
            out[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    out[("numpy", "ndarray")] = np.ndarray
    out[("numpy", "dtype")] = np.dtype
    out[("_codecs", "encode")] = _latin1_encode
    return out


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _allowed().get((module, name))
        if found is None:
            raise _Refused(f"{'builtins' if module == '__builtin__' else module}.{name}")
        return found


class _Refused(pickle.UnpicklingError):
    """A global outside the allowed list (its name is the message)."""


def load_data_pickle(path: str, encoding: str = "ASCII") -> Any:
    """Unpickle ``path`` admitting only plain data and numpy arrays (module docstring).

    ``encoding``: how Python 2 ``str`` objects are decoded (``"bytes"`` keeps them as bytes, as CIFAR's
    batches need).

    Raises:
        DataError: the file is unreadable, not a pickle, or names anything but plain data / numpy
            arrays (the message names what it holds and why it is refused).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        return _DataUnpickler(io.BytesIO(data), encoding=encoding).load()
    except _Refused as err:
        raise DataError(f"{path} is refused: it holds a pickled {err}, not plain data. FedTV reads pickled data files "
                        f"with lists, tuples, dicts, sets, strings, numbers and numpy arrays only (unpickling "
                        f"anything else can run code); convert the file to plain data") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError) as err:
        raise DataError(f"cannot read {path}: {type(err).__name__}: {err}") from None
