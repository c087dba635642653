"""A small reader of the safetensors format (https://github.com/huggingface/safetensors), in
pure Python and numpy.

The file is: an 8-byte little-endian unsigned header length ``N``; ``N`` bytes of UTF-8 JSON
mapping each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into
the data that follows), plus an optional ``"__metadata__"`` object of string values; then the
raw little-endian data.

numpy has no bfloat16, so ``BF16`` tensors are widened to float32 (exactly: a bfloat16 is the
top half of a float32).
"""

from __future__ import annotations

import json
from typing import Dict, Tuple, Union

import numpy as np

from .errors import ProtocolError

__all__ = ["load", "DTYPES"]

#: safetensors dtype name -> numpy dtype (little-endian). BF16 is read as raw uint16 first.
DTYPES: Dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

# A header larger than this is refused as corrupt (the reference implementation uses 100 MB).
_MAX_HEADER = 100_000_000

Buffer = Union[bytes, bytearray, memoryview]


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 bits (uint16) to float32, exactly."""
    return (raw.astype("<u4") << 16).view("<f4")


def load(data: Buffer) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Parse a safetensors file held in memory.

    Returns ``(tensors, metadata)``: every tensor as a numpy array of its shape (views of
    ``data`` where possible, so a ``bytearray`` gives writable arrays and ``bytes`` read-only
    ones), and the ``__metadata__`` strings (empty when absent).

    Raises :class:`larder_client.ProtocolError` when the data is not a valid safetensors file.
    """
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    total = len(view)
    if total < 8:
        raise ProtocolError(f"safetensors: {total} bytes is too short for the 8-byte header length")
    header_len = int.from_bytes(view[:8], "little")
    if header_len > _MAX_HEADER or 8 + header_len > total:
        raise ProtocolError(
            f"safetensors: header length {header_len} does not fit in {total} bytes"
        )
    try:
        header = json.loads(bytes(view[8 : 8 + header_len]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"safetensors: the header is not UTF-8 JSON: {e}") from None
    if not isinstance(header, dict):
        raise ProtocolError("safetensors: the header is not a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise ProtocolError("safetensors: __metadata__ is not an object")

    start = 8 + header_len
    data_len = total - start
    tensors: Dict[str, np.ndarray] = {}
    for name, info in header.items():
        try:
            dtype_name = info["dtype"]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (TypeError, KeyError, ValueError):
            raise ProtocolError(f"safetensors: tensor {name!r} has a malformed entry: {info!r}") from None
        dtype = DTYPES.get(dtype_name)
        if dtype is None:
            raise ProtocolError(f"safetensors: tensor {name!r} has unsupported dtype {dtype_name!r}")
        if any(d < 0 for d in shape):
            raise ProtocolError(f"safetensors: tensor {name!r} has a negative dimension: {shape}")
        if not 0 <= begin <= end <= data_len:
            raise ProtocolError(
                f"safetensors: tensor {name!r} offsets [{begin}, {end}] are outside the {data_len} data bytes"
            )
        count = 1
        for d in shape:
            count *= d
        if count * dtype.itemsize != end - begin:
            raise ProtocolError(
                f"safetensors: tensor {name!r} is {dtype_name}{list(shape)} ({count * dtype.itemsize} bytes) "
                f"but its offsets span {end - begin} bytes"
            )
        array = np.frombuffer(view, dtype=dtype, count=count, offset=start + begin).reshape(shape)
        if dtype_name == "BF16":
            array = bf16_to_f32(array)
        tensors[name] = array
    return tensors, {str(k): str(v) for k, v in metadata.items()}
