"""openpi's wire format: msgpack with numpy arrays as plain maps, never pickle.

An array travels as {b"__ndarray__": True, b"data": raw bytes, b"dtype": "<f4", b"shape": [H, W]} and a
numpy scalar as {b"__npgeneric__": True, b"data": value, b"dtype": "<f4"} (openpi-client 0.1.2's
`msgpack_numpy`). Decoding is strict: only boolean and numeric dtypes, and the byte count must match the
shape, so a hostile frame can neither run code nor build an array bigger than what it sent.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

ALLOWED_KINDS = "biuf"  # bool, signed, unsigned, float; no objects, strings, voids or complex


class WireError(ValueError):
    """A frame that is not valid openpi msgpack-numpy."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in ALLOWED_KINDS:
            raise WireError(f"cannot send an array of dtype {obj.dtype} (only bool and numbers travel)")
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(),
                b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in ALLOWED_KINDS:
            raise WireError(f"cannot send a scalar of dtype {obj.dtype}")
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot pack {type(obj).__name__}")


def _decode(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        try:
            dtype = np.dtype(obj[b"dtype"])
            shape = tuple(int(n) for n in obj[b"shape"])
            data = obj[b"data"]
        except (KeyError, TypeError, ValueError) as err:
            raise WireError(f"bad array map ({err})") from err
        if dtype.kind not in ALLOWED_KINDS:
            raise WireError(f"array dtype {dtype} is not allowed (only bool and numbers)")
        if not isinstance(data, bytes) or any(n < 0 for n in shape):
            raise WireError("bad array map (data must be bytes, shape non-negative)")
        if len(data) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise WireError(f"array of shape {shape} and dtype {dtype} needs "
                            f"{int(np.prod(shape, dtype=np.int64)) * dtype.itemsize} bytes, got {len(data)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj:
        try:
            dtype = np.dtype(obj[b"dtype"])
            if dtype.kind not in ALLOWED_KINDS:
                raise WireError(f"scalar dtype {dtype} is not allowed")
            return dtype.type(obj[b"data"])
        except (KeyError, TypeError, ValueError) as err:
            raise WireError(f"bad scalar map ({err})") from err
    return obj


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """bytes -> Python objects with numpy arrays; anything malformed raises WireError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"expected a binary frame, got {type(data).__name__}")
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)
    except WireError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as err:
        raise WireError(f"not a msgpack frame ({type(err).__name__}: {err})") from err
