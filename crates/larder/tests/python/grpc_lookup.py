"""A Python user of Larder's gRPC API: stubs generated from proto/larder/v1/larder.proto with
grpcio-tools, a lookup read as numpy arrays. Run by crates/larder/tests/grpc_python.rs against
a running `larder serve`.

Usage: python grpc_lookup.py HTTP_BASE GRPC_ADDR PROTO_ROOT OUT_DIR
"""

import json
import sys
import urllib.request

import grpc
import numpy as np
from grpc_tools import protoc

http_base, grpc_addr, proto_root, out_dir = sys.argv[1:5]

code = protoc.main(
    [
        "protoc",
        f"-I{proto_root}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"{proto_root}/larder/v1/larder.proto",
    ]
)
assert code == 0, f"protoc failed: {code}"
sys.path.insert(0, out_dir)
from larder.v1 import larder_pb2, larder_pb2_grpc  # noqa: E402


def http(method, path, body):
    request = urllib.request.Request(
        http_base + path,
        data=json.dumps(body).encode(),
        method=method,
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)


rng = np.random.default_rng(7)
vectors = rng.standard_normal((20, 768)).astype(np.float32)
http("PUT", "/v1/namespaces/py", {"fields": {"emb": {"dim": 768, "dtype": "f32"}}})
http(
    "POST",
    "/v1/namespaces/py/entities",
    {"entities": [{"key": f"item-{i}", "fields": {"emb": v.tolist()}} for i, v in enumerate(vectors)]},
)

with grpc.insecure_channel(grpc_addr) as channel:
    stub = larder_pb2_grpc.EmbeddingsStub(channel)
    keys = ["item-3", "absent", "item-17", "item-3"]
    answer = stub.Lookup(larder_pb2.LookupRequest(namespace="py", keys=keys))

assert not answer.degraded
assert list(answer.missing) == ["absent"], answer.missing
(tensor,) = answer.tensors
assert tensor.name == "emb" and tensor.dtype == "F32", (tensor.name, tensor.dtype)
emb = np.frombuffer(tensor.data, dtype="<f4").reshape(tuple(tensor.shape))
present = np.frombuffer(tensor.present, dtype=np.uint8)
assert emb.shape == (4, 768), emb.shape
np.testing.assert_array_equal(present, [1, 0, 1, 1])
np.testing.assert_array_equal(emb[0], vectors[3])
np.testing.assert_array_equal(emb[2], vectors[17])
np.testing.assert_array_equal(emb[3], vectors[3])
assert not emb[1].any()
print("ok: numpy", emb.dtype, emb.shape)
