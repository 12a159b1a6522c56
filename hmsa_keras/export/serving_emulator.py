"""A stand-in for ``tensorflow_model_server``'s Predict API, backed by TensorFlow's own loader.

The model server is not installable from PyPI, so the clients in ``export/`` are tested
(and the request sizes and latencies of ``export/README.md`` measured) against this
emulator on the loopback interface. It serves one SavedModel (``tf.saved_model.load``)
under a model name and follows TF Serving's documented behaviour where the clients can
see it:

- REST ``POST /v1/models/<name>[/versions/<v>]:predict`` with ``{"signature_name": ...,
  "inputs": {...}}`` (columnar; the response is ``{"outputs": ...}``, a single output bare)
  or ``{"instances": [...]}`` (row; ``{"predictions": [...]}``); DT_STRING values given as
  ``{"b64": "..."}`` are base64-decoded; DT_STRING outputs whose name ends in ``_bytes`` are
  returned as ``{"b64": "..."}``; errors are HTTP 400 ``{"error": "..."}``.
  ``GET /v1/models/<name>`` returns a status in the shape of TF Serving's.
- gRPC ``tensorflow.serving.PredictionService/Predict`` (messages in protobuf wire format,
  :mod:`hmsa_keras.export.grpc_client`); errors are ``INVALID_ARGUMENT`` with the model's text.

Not a production server (no batching, no versions policy, one model). Only loopback.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from hmsa_keras.export import grpc_client as W


class Backend:
    """Runs the signatures of one SavedModel on numpy inputs."""

    def __init__(self, path, name="hmsa"):
        import tensorflow as tf

        from hmsa_keras.export.saved_model import resolve_saved_model_dir

        self.tf = tf
        self.path = resolve_saved_model_dir(path)
        self.name = name
        self.loaded = tf.saved_model.load(self.path)
        self.lock = threading.Lock()

    def input_dtypes(self, signature):
        fn = self._fn(signature)
        return {k: v.dtype for k, v in fn.structured_input_signature[1].items()}

    def _fn(self, signature):
        signature = signature or "serving_default"
        if signature not in self.loaded.signatures:
            raise ValueError(f'Serving signature name: "{signature}" not found in signature def')
        return self.loaded.signatures[signature]

    def predict(self, signature, inputs):
        """``{name: numpy}`` -> ``{name: numpy}``; raises ValueError with the model's message."""
        tf = self.tf
        fn = self._fn(signature)
        dtypes = self.input_dtypes(signature)
        missing = set(dtypes) - set(inputs)
        if missing:
            raise ValueError(f"input(s) {sorted(missing)} missing for signature {signature!r}")
        feed = {}
        for k, v in inputs.items():
            if k not in dtypes:
                raise ValueError(f"signature {signature!r} has no input {k!r}")
            if dtypes[k] == tf.string:
                feed[k] = tf.constant(
                    np.asarray(v, object).astype(bytes)
                    if np.asarray(v).size
                    else np.zeros(np.asarray(v).shape, bytes),
                    tf.string,
                )
            else:
                feed[k] = tf.constant(np.asarray(v).astype(dtypes[k].as_numpy_dtype))
        try:
            with self.lock:
                out = fn(**feed)
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as exc:
            text = getattr(exc, "message", None) or str(exc)
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            # the line that explains (an assert's message), as TF Serving's status text holds it
            reason = next((line for line in lines if line.startswith("assertion failed")), None)
            raise ValueError(reason or (lines[0] if lines else repr(exc))) from None
        return {k: v.numpy() for k, v in out.items()}


# ----------------------------------------------------------------------------- REST
def _json_values(name, array):
    if array.dtype == object or array.dtype.kind == "S":
        if name.endswith("_bytes"):
            return (
                np.vectorize(lambda b: {"b64": base64.b64encode(b).decode()}, otypes=[object])(
                    array
                ).tolist()
                if array.size
                else array.tolist()
            )
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(array).tolist()
    return array.tolist()


def _from_json(value, dtype, tf):
    if dtype == tf.string:

        def unwrap(v):
            if isinstance(v, list):
                return [unwrap(x) for x in v]
            if isinstance(v, dict):
                if set(v) != {"b64"}:
                    raise ValueError(
                        f"JSON Value: {json.dumps(v)[:80]} not formatted correctly for base64 data"
                    )
                return base64.b64decode(v["b64"])
            return v.encode()

        return np.array(unwrap(value), dtype=object)
    return np.asarray(value, dtype=dtype.as_numpy_dtype)


class _Handler(BaseHTTPRequestHandler):
    backend: Backend = None
    PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(/versions/\d+)?(?P<verb>:predict)?$")

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        m = self.PATH.match(self.path)
        if not m or m["name"] != self.backend.name or m["verb"]:
            return self._reply(404, {"error": f"Servable not found for request: {self.path}"})
        version = self.backend.path.rstrip("/").split("/")[-1]
        self._reply(
            200,
            {
                "model_version_status": [
                    {
                        "version": version,
                        "state": "AVAILABLE",
                        "status": {"error_code": "OK", "error_message": ""},
                    }
                ]
            },
        )

    def do_POST(self):
        tf = self.backend.tf
        m = self.PATH.match(self.path)
        if not m or m["name"] != self.backend.name or not m["verb"]:
            return self._reply(404, {"error": f"Servable not found for request: {self.path}"})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            signature = body.get("signature_name", "serving_default")
            dtypes = self.backend.input_dtypes(signature)
            if ("inputs" in body) == ("instances" in body):
                raise ValueError(
                    "Missing 'inputs' or 'instances' key"
                    if "inputs" not in body
                    else "expecting only one of 'inputs' or 'instances'"
                )
            row = "instances" in body
            if row:
                instances = body["instances"]
                named = isinstance(instances[0], dict) and set(instances[0]) != {
                    "b64"
                }  # b64: a value
                if len(dtypes) == 1 and not named:
                    name = next(iter(dtypes))
                    inputs = {name: _from_json(instances, dtypes[name], tf)}
                else:
                    inputs = {
                        k: _from_json([inst[k] for inst in instances], dtypes[k], tf)
                        for k in dtypes
                    }
            else:
                given = body["inputs"]
                if not isinstance(given, dict):
                    given = {next(iter(dtypes)): given}
                inputs = {k: _from_json(v, dtypes[k], tf) for k, v in given.items() if k in dtypes}
            outputs = self.backend.predict(signature, inputs)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return self._reply(400, {"error": str(exc)})
        values = {k: _json_values(k, v) for k, v in outputs.items()}
        if row:
            n = len(next(iter(values.values())))
            preds = [
                (
                    {k: v[i] for k, v in values.items()}
                    if len(values) > 1
                    else next(iter(values.values()))[i]
                )
                for i in range(n)
            ]
            return self._reply(200, {"predictions": preds})
        return self._reply(
            200, {"outputs": values if len(values) > 1 else next(iter(values.values()))}
        )


class ServingEmulator:
    """REST and gRPC endpoints for one SavedModel on 127.0.0.1 (ephemeral ports)::

    with ServingEmulator("exported/hmsa", name="hmsa") as server:
        server.rest_url   # http://127.0.0.1:<port>/v1/models/hmsa
        server.grpc_target  # 127.0.0.1:<port>
    """

    def __init__(self, path, name="hmsa", grpc=True, rest=True):
        self.backend = Backend(path, name)
        self.name = name
        self._http = self._grpc = None
        if rest:
            handler = type("Handler", (_Handler,), {"backend": self.backend})
            self._http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            threading.Thread(target=self._http.serve_forever, daemon=True).start()
            self.rest_url = f"http://127.0.0.1:{self._http.server_address[1]}/v1/models/{name}"
        if grpc:
            self._grpc, port = self._start_grpc()
            self.grpc_target = f"127.0.0.1:{port}"

    def _start_grpc(self):
        from concurrent import futures

        import grpc

        backend = self.backend

        def predict(request, context):
            try:
                model, signature, inputs = W.decode_predict_request(request)
                if model != backend.name:
                    context.abort(
                        grpc.StatusCode.NOT_FOUND,
                        f"Servable not found for request: Latest({model})",
                    )
                outputs = backend.predict(signature, inputs)
            except ValueError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return W.encode_predict_response(outputs, backend.name, signature)

        handler = grpc.method_handlers_generic_handler(
            "tensorflow.serving.PredictionService",
            {"Predict": grpc.unary_unary_rpc_method_handler(predict)},
        )
        limit = 512 * 1024 * 1024
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2),
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
            ],
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        return server, port

    def close(self):
        if self._http:
            self._http.shutdown()
            self._http.server_close()
        if self._grpc:
            self._grpc.stop(None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["Backend", "ServingEmulator"]


# ----------------------------------------------------------------------------- measurement
def measure(path, image, rounds=5, name="hmsa"):
    """Request/response sizes and client-side latency of one ``image`` (uint8 ``[H, W, 3]``)
    for every way of calling the SavedModel at ``path``, in interleaved rounds (medians),
    with the model's own time (the signature called directly) as the baseline. Returns rows
    ``{transport, signature, request_bytes, response_bytes, median_s, overhead_s}``."""
    import statistics
    import time

    import tensorflow as tf

    from hmsa_keras import image_io
    from hmsa_keras.export import serving_client as REST

    png = image_io.encode_png(image)
    with ServingEmulator(path, name=name) as server:
        url = server.rest_url + ":predict"
        client = W.PredictionClient(server.grpc_target, name)
        direct = server.backend.loaded.signatures["serving_default"]
        x = tf.constant(image[None])
        sizes = {}

        def rest(body):
            def call():
                _, sent, received = REST.post(url, body)
                return sent, received

            return call

        def grpc_call(signature, inputs):
            def call():
                request = W.encode_predict_request(name, signature, inputs)
                response = client._predict(request, timeout=600)
                W.decode_predict_response(response)
                return len(request), len(response)

            return call

        cases = {
            ("direct (no transport)", "serving_default"): lambda: (
                direct(images=x)["classes"].numpy(),
                (0, 0),
            )[1],
            ("REST uint8 JSON", "serving_default"): rest(REST.build_request(image)),
            ("REST b64 PNG", "serving_encoded"): rest(
                REST.build_encoded_request(png, "serving_encoded")
            ),
            ("REST b64 PNG", "serving_encoded_png"): rest(
                REST.build_encoded_request(png, "serving_encoded_png")
            ),
            ("gRPC uint8 tensor", "serving_default"): grpc_call(
                "serving_default", {"images": image[None]}
            ),
            ("gRPC PNG bytes", "serving_encoded_png"): grpc_call(
                "serving_encoded_png", {"image_bytes": np.array([png], dtype=object)}
            ),
        }
        times = {k: [] for k in cases}
        for key, call in cases.items():  # warm-up, and the sizes
            sizes[key] = call()
        for _ in range(rounds):
            for key, call in cases.items():
                start = time.perf_counter()
                call()
                times[key].append(time.perf_counter() - start)
        client.close()
    base = statistics.median(times[("direct (no transport)", "serving_default")])
    rows = []
    for (transport, signature), t in times.items():
        median = statistics.median(t)
        rows.append(
            {
                "transport": transport,
                "signature": signature,
                "request_bytes": sizes[(transport, signature)][0],
                "response_bytes": sizes[(transport, signature)][1],
                "median_s": median,
                "overhead_s": median - base,
                "png_bytes": len(png),
            }
        )
    return rows


def main(argv=None):
    """``python -m hmsa_keras.export.serving_emulator --saved_model=DIR [--size=512x1024]``:
    prints :func:`measure`'s table for a synthetic street scene of that size."""
    import argparse

    from hmsa_keras.config import DataConfig
    from hmsa_keras.conventions import parse_hw
    from hmsa_keras.export.report import sample_images

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--saved_model", required=True, help="SavedModel or TF Serving model folder"
    )
    parser.add_argument("--size", default="512x1024")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    size = parse_hw(args.size, "--size")
    image = sample_images(
        DataConfig(synthetic_image_size=size, synthetic_val_size=1), "val", 1, training=False
    )[0]
    rows = measure(args.saved_model, image, rounds=args.rounds)
    print(
        f"{'transport':<24} {'signature':<20} {'request':>10} {'response':>10} "
        f"{'median':>9} {'overhead':>9}"
    )
    for r in rows:
        print(
            f"{r['transport']:<24} {r['signature']:<20} {r['request_bytes'] / 1e6:>8.2f}MB "
            f"{r['response_bytes'] / 1e6:>8.2f}MB {1000 * r['median_s']:>7.0f}ms "
            f"{1000 * r['overhead_s']:>7.0f}ms"
        )
    print(
        f"(image {size[0]}x{size[1]}, PNG {rows[0]['png_bytes'] / 1e6:.2f} MB; "
        f"{args.rounds} interleaved rounds, "
        "medians; loopback, TensorFlow's loader behind the emulator)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
