"""Namespaces, upserts and batch lookups against a real server."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

import larder_client
from larder_client import dequantize

from conftest import WRITE_TOKEN

# One field per stored dtype.
SCHEMA = {
    "text": {"dim": 4, "dtype": "f32"},
    "clip": {"dim": 8, "dtype": "f16"},
    "q": {"dim": 6, "dtype": "i8"},
    "b": (5, "bf16"),
}
DIMS = {"text": 4, "clip": 8, "q": 6, "b": 5}


def vectors(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(dim).astype(np.float32) for name, dim in DIMS.items()}


def assert_close(field: str, got: np.ndarray, sent: np.ndarray) -> None:
    """What each stored dtype keeps of the vector that was sent."""
    sent = np.asarray(sent, dtype=np.float32)
    if field == "text":  # f32: exact
        np.testing.assert_array_equal(got, sent)
    elif field == "clip":  # f16: 11 significant bits
        np.testing.assert_allclose(got, sent, rtol=1e-3, atol=1e-4)
        np.testing.assert_array_equal(got, sent.astype(np.float16).astype(np.float32))
    elif field == "b":  # bf16: 8 significant bits
        np.testing.assert_allclose(got, sent, rtol=8e-3, atol=1e-6)
    elif field == "q":  # i8: symmetric per-vector scale max|v|/127, error at most half a step
        step = np.abs(sent).max() / 127
        assert np.abs(got - sent).max() <= step / 2 + 1e-6
    else:
        raise AssertionError(field)


@pytest.fixture
def ns(client, ns_name):
    client.create_namespace(ns_name, SCHEMA)
    return ns_name


def test_create_namespace_answers_the_stored_schema(client, ns_name):
    answer = client.create_namespace(ns_name, SCHEMA, ttl_seconds=3600)
    assert answer["name"] == ns_name
    assert answer["fields"] == {
        "text": {"dim": 4, "dtype": "f32"},
        "clip": {"dim": 8, "dtype": "f16"},
        "q": {"dim": 6, "dtype": "i8"},
        "b": {"dim": 5, "dtype": "bf16"},
    }
    assert answer["ttl_seconds"] == 3600

    one = client.namespace(ns_name)
    assert one["fields"] == answer["fields"]
    assert one["entity_count"] == 0
    assert ns_name in [n["name"] for n in client.namespaces()]

    # Adding a field keeps the others.
    grown = client.create_namespace(ns_name, {"extra": (2, "f32")}, ttl_seconds=3600)
    assert set(grown["fields"]) == {"text", "clip", "q", "b", "extra"}


def test_upsert_then_lookup_present_and_absent_keys(client, ns):
    sent = {"user:1": vectors(1), "user:2": vectors(2), "user:3": vectors(3)}
    assert client.upsert(ns, sent) == 3

    keys = ["user:2", "nobody", "user:1", "user:3", "user:2"]  # absent and duplicate keys
    r = client.lookup(ns, keys)
    assert r["degraded"] is False
    assert list(r["fields"]) == sorted(DIMS)  # every field when none are named
    for field, dim in DIMS.items():
        values = r["fields"][field]
        assert values.dtype == np.float32
        assert values.shape == (len(keys), dim)
        present = r["present"][field]
        assert present.dtype == np.bool_
        np.testing.assert_array_equal(present, [True, False, True, True, True])
        np.testing.assert_array_equal(values[1], np.zeros(dim, np.float32))  # absent: zeros
        for row, key in enumerate(keys):
            if key != "nobody":
                assert_close(field, values[row], sent[key][field])
        np.testing.assert_array_equal(values[0], values[4])  # duplicates answered in place
    assert r["scale"] == {}


def test_lookup_fields_subset_in_the_order_asked(client, ns):
    v = vectors(7)
    client.upsert(ns, {"k": v})
    r = client.lookup(ns, ["k", "missing"], fields=["q", "text"])
    assert list(r["fields"]) == ["q", "text"]
    assert list(r["present"]) == ["q", "text"]
    np.testing.assert_array_equal(r["fields"]["text"][0], v["text"])
    assert_close("q", r["fields"]["q"][0], v["q"])
    np.testing.assert_array_equal(r["present"]["text"], [True, False])


def test_lookup_stored_dtypes(client, ns):
    sent = {"a": vectors(11), "b": vectors(12)}
    client.upsert(ns, sent)
    keys = ["a", "zzz", "b"]
    f32 = client.lookup(ns, keys)
    stored = client.lookup(ns, keys, dtype="stored")

    assert stored["fields"]["text"].dtype == np.float32
    assert stored["fields"]["clip"].dtype == np.float16
    assert stored["fields"]["q"].dtype == np.int8
    assert stored["fields"]["b"].dtype == np.float32  # bf16 widened: numpy has no bfloat16
    for field, dim in DIMS.items():
        assert stored["fields"][field].shape == (3, dim)
        np.testing.assert_array_equal(stored["present"][field], [True, False, True])

    # Only the i8 field carries scales: max|v|/127 per row, 0 where absent.
    assert list(stored["scale"]) == ["q"]
    scale = stored["scale"]["q"]
    assert scale.dtype == np.float32 and scale.shape == (3,)
    assert scale[1] == 0
    for row, key in [(0, "a"), (2, "b")]:
        np.testing.assert_allclose(scale[row], np.abs(sent[key]["q"]).max() / 127, rtol=1e-6)
    assert np.abs(stored["fields"]["q"]).max() == 127

    # The stored values are the same numbers the f32 answer decodes.
    np.testing.assert_array_equal(dequantize(stored["fields"]["q"], scale), f32["fields"]["q"])
    np.testing.assert_array_equal(stored["fields"]["clip"].astype(np.float32), f32["fields"]["clip"])
    np.testing.assert_array_equal(stored["fields"]["b"], f32["fields"]["b"])
    np.testing.assert_array_equal(stored["fields"]["text"], f32["fields"]["text"])


def test_upsert_merges_fields_and_accepts_lists_and_any_numeric_dtype(client, ns):
    client.upsert(ns, {"m": {"text": [1, 2, 3, 4]}})
    r = client.lookup(ns, ["m"])
    np.testing.assert_array_equal(r["fields"]["text"][0], [1, 2, 3, 4])
    assert [r["present"][f][0] for f in ("text", "clip", "q", "b")] == [True, False, False, False]

    clip = np.linspace(-1, 1, 8)  # float64 in, f16 stored
    client.upsert(ns, [("m", {"clip": clip})])  # pairs work as well as a dict
    r = client.lookup(ns, ["m"])
    np.testing.assert_array_equal(r["fields"]["text"][0], [1, 2, 3, 4])  # left alone
    assert_close("clip", r["fields"]["clip"][0], clip)

    client.upsert(ns, {"m": {"text": np.array([5, 6, 7, 8], dtype=np.int64)}})
    np.testing.assert_array_equal(client.lookup(ns, ["m"], ["text"])["fields"]["text"][0], [5, 6, 7, 8])


def test_unicode_and_reserved_characters_in_keys(client, ns):
    keys = ["사용자:42", "a/b?c#d e%20", "emoji 🙂"]
    sent = {k: {"text": np.full(4, i + 0.5, np.float32)} for i, k in enumerate(keys)}
    assert client.upsert(ns, sent) == 3
    r = client.lookup(ns, keys, ["text"])
    np.testing.assert_array_equal(r["fields"]["text"], [[0.5] * 4, [1.5] * 4, [2.5] * 4])
    for k in keys:
        got = client.get_entity(ns, k)
        assert list(got) == ["text"]
        np.testing.assert_array_equal(got["text"], sent[k]["text"])


def test_get_and_delete_entity(client, ns):
    v = vectors(5)
    client.upsert(ns, {"gone": v})
    got = client.get_entity(ns, "gone")
    assert set(got) == set(DIMS)
    np.testing.assert_array_equal(got["text"], v["text"])
    assert_close("clip", got["clip"], v["clip"])

    client.delete_entity(ns, "gone")
    client.delete_entity(ns, "gone")  # absent: fine too
    with pytest.raises(larder_client.NotFound) as e:
        client.get_entity(ns, "gone")
    assert e.value.status == 404 and e.value.code == "not_found"
    r = client.lookup(ns, ["gone"])
    assert not any(r["present"][f][0] for f in DIMS)


def test_big_lookup(client, ns_name):
    client.create_namespace(ns_name, {"e": (256, "f32"), "h": (256, "f16")})
    rng = np.random.default_rng(9)
    e = rng.standard_normal((500, 256)).astype(np.float32)
    h = rng.standard_normal((500, 256)).astype(np.float32)
    keys = [f"k{i}" for i in range(500)]
    assert client.upsert(ns_name, {k: {"e": e[i], "h": h[i]} for i, k in enumerate(keys)}) == 500
    order = list(reversed(keys)) + ["absent"]
    r = client.lookup(ns_name, order)
    assert r["fields"]["e"].shape == (501, 256)
    np.testing.assert_array_equal(r["fields"]["e"][:500], e[::-1])
    np.testing.assert_array_equal(r["fields"]["h"][:500], h[::-1].astype(np.float16).astype(np.float32))
    assert r["present"]["e"].sum() == 500 and not r["present"]["e"][500]
    # Arrays are writable numpy arrays of their own.
    r["fields"]["e"][0, 0] = 42.0
    assert client.namespace(ns_name)["entity_count"] == 500


def test_lookup_matches_the_json_answer(server, client, ns):
    sent = {"j1": vectors(21), "j2": {"text": vectors(22)["text"]}}
    client.upsert(ns, sent)
    keys = ["j1", "j2", "none"]
    request = urllib.request.Request(
        server.url + f"/v1/namespaces/{ns}/lookup",
        data=json.dumps({"keys": keys}).encode(),
        headers={"Authorization": f"Bearer {WRITE_TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        answer = json.load(resp)
    assert answer["missing"] == ["none"]
    binary = client.lookup(ns, keys)
    for row, result in enumerate(answer["results"]):
        assert result["key"] == keys[row]
        for field, values in result["fields"].items():
            assert binary["present"][field][row] == (values is not None)
            if values is not None:
                np.testing.assert_array_equal(binary["fields"][field][row], np.asarray(values, np.float32))


def test_empty_lookup(client, ns):
    r = client.lookup(ns, [])
    assert r["fields"]["text"].shape == (0, 4)
    assert r["present"]["text"].shape == (0,)
    assert r["degraded"] is False


def test_reader_can_look_up_but_not_write(client, reader, ns):
    v = vectors(31)
    client.upsert(ns, {"r": v})
    r = reader.lookup(ns, ["r"], ["text"])
    np.testing.assert_array_equal(r["fields"]["text"][0], v["text"])
    np.testing.assert_array_equal(reader.get_entity(ns, "r")["text"], v["text"])
    with pytest.raises(larder_client.Forbidden) as e:
        reader.upsert(ns, {"r": {"text": [0, 0, 0, 0]}})
    assert isinstance(e.value, larder_client.ApiError)
    assert (e.value.status, e.value.code) == (403, "forbidden")
    with pytest.raises(larder_client.ApiError) as e:
        reader.create_namespace(ns, {"other": (3, "f32")})
    assert (e.value.status, e.value.code) == (403, "forbidden")
    # Nothing was written by the refused requests.
    np.testing.assert_array_equal(client.lookup(ns, ["r"], ["text"])["fields"]["text"][0], v["text"])
    assert "other" not in client.namespace(ns)["fields"]
