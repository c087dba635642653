"""The built-in safetensors reader, on files written here and by the reference library."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import larder_client
from larder_client import safetensors


def write(tensors, metadata=None, pad_to=8):
    """A safetensors file: {name: (dtype_name, shape, raw bytes)}, in the given order."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % pad_to)
    return struct.pack("<Q", len(text)) + text + b"".join(raw for _, _, raw in tensors.values())


def test_every_dtype_reads_back_with_its_shape_and_values():
    f32 = np.arange(6, dtype="<f4").reshape(2, 3) - 2.5
    f16 = np.array([[0.5, -1.25], [65504, -0.0]], dtype="<f2")
    i8 = np.array([[-128, 127, 0]], dtype="i1")
    u8 = np.array([1, 0, 1], dtype="u1")
    f64 = np.array([1e300, -2.0], dtype="<f8")
    i64 = np.array([2**40, -(2**40)], dtype="<i8")
    boolean = np.array([True, False])
    data = write(
        {
            "a": ("F32", f32.shape, f32.tobytes()),
            "b": ("F16", f16.shape, f16.tobytes()),
            "c": ("I8", i8.shape, i8.tobytes()),
            "d": ("U8", u8.shape, u8.tobytes()),
            "e": ("F64", f64.shape, f64.tobytes()),
            "f": ("I64", i64.shape, i64.tobytes()),
            "g": ("BOOL", boolean.shape, boolean.tobytes()),
        },
        metadata={"degraded": "false"},
    )
    tensors, meta = safetensors.load(data)
    assert meta == {"degraded": "false"}
    for name, expected in zip("abcdefg", [f32, f16, i8, u8, f64, i64, boolean]):
        assert tensors[name].dtype == expected.dtype
        assert tensors[name].shape == expected.shape
        np.testing.assert_array_equal(tensors[name], expected)
    assert tensors["b"][1, 1] == 0 and np.signbit(tensors["b"][1, 1])


def test_bf16_widens_exactly_to_float32():
    values = np.array([1.0, -2.5, 3.140625, 2.0**100, -0.0], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype("<u2")  # these values are exact in bf16
    tensors, _ = safetensors.load(write({"x": ("BF16", (1, 5), bits.tobytes())}))
    assert tensors["x"].dtype == np.float32
    np.testing.assert_array_equal(tensors["x"][0], values)


def test_bytearray_gives_writable_arrays_and_bytes_read_only_ones():
    raw = np.ones((2, 2), dtype="<f4")
    data = write({"x": ("F32", (2, 2), raw.tobytes())})
    tensors, _ = safetensors.load(bytearray(data))
    tensors["x"][0, 0] = 7.0
    assert tensors["x"][0, 0] == 7.0
    tensors, _ = safetensors.load(data)
    assert not tensors["x"].flags.writeable


def test_empty_tensors_and_no_metadata():
    tensors, meta = safetensors.load(write({"x": ("F32", (0, 4), b""), "x.present": ("U8", (0,), b"")}))
    assert meta == {}
    assert tensors["x"].shape == (0, 4)
    assert tensors["x.present"].shape == (0,)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x01\x00", "too short"),
        (struct.pack("<Q", 1000) + b"{}", "does not fit"),
        (struct.pack("<Q", 4) + b"nope", "not UTF-8 JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (write({"x": ("F32", (2, 2), b"\x00" * 12)}), "offsets span 12 bytes"),
        (write({"x": ("C64", (1,), b"\x00" * 8)}), "unsupported dtype"),
        (write({"x": ("F32", (1,), b"\x00" * 4)})[:-2], "outside the"),
    ],
    ids=["short", "header-overruns", "not-json", "not-object", "size-mismatch", "bad-dtype", "truncated"],
)
def test_corrupt_files_raise_protocol_error(data, message):
    with pytest.raises(larder_client.ProtocolError, match=message):
        safetensors.load(data)


def test_agrees_with_the_reference_library():
    st = pytest.importorskip("safetensors.numpy")
    arrays = {
        "clip": np.random.default_rng(1).standard_normal((5, 7)).astype(np.float16),
        "text": np.random.default_rng(2).standard_normal((5, 3)).astype(np.float32),
        "q": np.arange(-10, 10, dtype=np.int8).reshape(4, 5),
        "clip.present": np.array([1, 0, 1, 1, 0], dtype=np.uint8),
    }
    data = st.save(arrays, metadata={"degraded": "true"})
    tensors, meta = safetensors.load(data)
    assert meta == {"degraded": "true"}
    assert set(tensors) == set(arrays)
    for name, expected in arrays.items():
        assert tensors[name].dtype == expected.dtype
        np.testing.assert_array_equal(tensors[name], expected)
