#!/usr/bin/env python3
"""gRPC client for an hmsa_keras SavedModel served by TensorFlow Serving (port 8500).

Needs numpy, Pillow and ``grpcio`` only: the ``tensorflow-serving-api`` package would bring
the protos, but it depends on the full ``tensorflow`` wheel. The few messages of
``PredictionService.Predict`` are written and read here in protobuf's wire format
(field numbers of ``tensorflow_serving/apis/predict.proto``, ``model.proto``,
``prediction_log.proto`` and ``tensorflow/core/framework/tensor.proto``); the tests check
them against TensorFlow's own ``TensorProto`` and, when installed, against
``tensorflow_serving.apis``. ``hmsa-export`` uses the same encoder for the warm-up file.
Copy this file and ``image_io.py`` (the image reader) to use it elsewhere::

    python export/grpc_client.py street.png --out classes.png                  (uint8 tensor)
    python export/grpc_client.py street.jpg --signature serving_encoded_png --out classes.png
    python export/grpc_client.py street.png --host 127.0.0.1 --port 8500 --model hmsa

``serving_default`` / ``with_details`` get the image as a uint8 ``[1, H, W, 3]`` tensor
(``tensor_content``: 1.5 MB at 512x1024, no JSON); ``serving_encoded`` /
``serving_encoded_png`` get the PNG/JPEG bytes (EXIF-rotated or 16-bit files are
re-encoded upright as 8-bit PNG first).
"""

from __future__ import annotations

import argparse
import os
import struct
import sys

import numpy as np

try:  # inside the package: the project's own modules
    from hmsa_keras import image_io
except ImportError:  # copied to a device without hmsa_keras: the copies beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import image_io  # noqa: E402

# tensorflow/core/framework/types.proto
DTYPES = {
    np.dtype(np.float32): 1,
    np.dtype(np.float64): 2,
    np.dtype(np.int32): 3,
    np.dtype(np.uint8): 4,
    np.dtype(np.int16): 5,
    np.dtype(np.int8): 6,
    np.dtype(np.int64): 9,
    np.dtype(np.bool_): 10,
    np.dtype(np.uint16): 17,
    np.dtype(np.float16): 19,
    np.dtype(np.uint32): 22,
    np.dtype(np.uint64): 23,
}
DT_STRING = 7
NUMPY_OF = {v: k for k, v in DTYPES.items()}
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"


# ----------------------------------------------------------------------------- wire format
def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values take ten bytes, as in protobuf
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    """A varint field (wire type 0)."""
    return _varint(number << 3) + _varint(value)


def _read_varint(data, pos):
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def parse_fields(data: bytes):
    """``[(field number, wire type, value)]`` of one message: ints for varints, bytes for
    length-delimited fields, raw bytes for fixed 32/64-bit fields."""
    fields, pos, data = [], 0, memoryview(data)
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            value, pos = bytes(data[pos : pos + size]), pos + size
        elif wire == 5:
            value, pos = bytes(data[pos : pos + 4]), pos + 4
        elif wire == 1:
            value, pos = bytes(data[pos : pos + 8]), pos + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {number})")
        fields.append((number, wire, value))
    return fields


def encode_tensor(value) -> bytes:
    """A ``tensorflow.TensorProto``: numeric arrays in ``tensor_content`` (little-endian),
    bytes/str arrays in ``string_val``."""
    array = np.asarray(value)
    if array.dtype.kind in "OSU":
        dtype = DT_STRING
        items = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]
        body = b"".join(_field(8, v) for v in items)
    else:
        if array.dtype not in DTYPES:
            raise ValueError(f"no TensorProto dtype for numpy {array.dtype}")
        dtype = DTYPES[array.dtype]
        body = _field(
            4, np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        )
    shape = b"".join(_field(2, _int_field(1, d)) for d in array.shape)
    return _int_field(1, dtype) + _field(2, shape) + body


def _packed(fields, number, fmt, size):
    values = []
    for n, wire, v in fields:
        if n != number:
            continue
        if wire == 2:
            values.extend(struct.unpack(f"<{len(v) // size}{fmt}", v))
        else:
            values.append(struct.unpack(f"<{fmt}", v)[0])
    return values


def _packed_varints(fields, number):
    values = []
    for n, wire, v in fields:
        if n != number:
            continue
        if wire == 2:
            pos = 0
            while pos < len(v):
                x, pos = _read_varint(v, pos)
                values.append(x)
        else:
            values.append(v)
    return values


def decode_tensor(data: bytes) -> np.ndarray:
    """A ``TensorProto`` -> numpy array (``tensor_content`` or the typed ``*_val`` fields,
    which TF Serving may use; a single value is broadcast as TensorFlow does)."""
    fields = parse_fields(data)
    dtype = next((v for n, w, v in fields if n == 1), 0)
    shape = []
    for n, _, v in fields:
        if n == 2:
            shape = [
                next((x for m, _, x in parse_fields(d) if m == 1), 0)
                for k, _, d in parse_fields(v)
                if k == 2
            ]
    if dtype == DT_STRING:
        values = np.array([v for n, _, v in fields if n == 8], dtype=object)
        return (
            values.reshape(shape)
            if values.size == int(np.prod(shape))
            else np.full(shape, values[0], object)
        )
    if dtype not in NUMPY_OF:
        raise ValueError(f"unsupported TensorProto dtype {dtype}")
    np_dtype = NUMPY_OF[dtype]
    content = [v for n, _, v in fields if n == 4]
    if content:
        return np.frombuffer(content[0], np_dtype.newbyteorder("<")).astype(np_dtype).reshape(shape)
    if np_dtype == np.float32:
        values = _packed(fields, 5, "f", 4)
    elif np_dtype == np.float64:
        values = _packed(fields, 6, "d", 8)
    elif np_dtype == np.int64:
        values = [v - (1 << 64) if v >= 1 << 63 else v for v in _packed_varints(fields, 10)]
    elif np_dtype == np.bool_:
        values = _packed_varints(fields, 11)
    elif np_dtype in (np.uint32, np.uint64):
        values = _packed_varints(fields, 16 if np_dtype == np.uint32 else 17)
    elif np_dtype == np.float16:
        values = np.array(_packed_varints(fields, 13), np.uint16).view(np.float16)
    else:  # int32, int16, int8, uint8, uint16: int_val
        values = [v - (1 << 64) if v >= 1 << 63 else v for v in _packed_varints(fields, 7)]
    values = np.asarray(values).astype(np_dtype)
    count = int(np.prod(shape))
    if values.size == count:
        return values.reshape(shape)
    return np.full(shape, values[0] if values.size else 0, np_dtype)


def encode_model_spec(model: str, signature: str = "serving_default", version=None) -> bytes:
    """``tensorflow.serving.ModelSpec``: name (1), version (2, an Int64Value),
    signature_name (3)."""
    spec = _field(1, model.encode()) + _field(3, signature.encode())
    if version is not None:
        spec += _field(2, _int_field(1, int(version)))
    return spec


def encode_predict_request(model: str, signature: str, inputs: dict, version=None) -> bytes:
    """``tensorflow.serving.PredictRequest``: model_spec (1), inputs
    (2, map<string, TensorProto>)."""
    body = _field(1, encode_model_spec(model, signature, version))
    for name, value in inputs.items():
        entry = _field(1, name.encode()) + _field(2, encode_tensor(value))
        body += _field(2, entry)
    return body


def encode_prediction_log(model: str, signature: str, inputs: dict) -> bytes:
    """``tensorflow.serving.PredictionLog`` with ``predict_log`` (6) = PredictLog{request (1)}:
    one record of a SavedModel's ``assets.extra/tf_serving_warmup_requests``."""
    return _field(6, _field(1, encode_predict_request(model, signature, inputs)))


def decode_predict_request(data: bytes):
    """``(model, signature, {name: array})`` of a PredictRequest (for servers and tests)."""
    model = signature = ""
    inputs = {}
    for number, _, value in parse_fields(data):
        if number == 1:
            for n, _, v in parse_fields(value):
                if n == 1:
                    model = v.decode()
                elif n == 3:
                    signature = v.decode()
        elif number == 2:
            entry = {n: v for n, _, v in parse_fields(value)}
            inputs[entry.get(1, b"").decode()] = decode_tensor(entry.get(2, b""))
    return model, signature or "serving_default", inputs


def encode_predict_response(outputs: dict, model: str = "", signature: str = "") -> bytes:
    """``tensorflow.serving.PredictResponse``: outputs (1, map<string, TensorProto>),
    model_spec (2)."""
    body = b""
    for name, value in outputs.items():
        body += _field(1, _field(1, name.encode()) + _field(2, encode_tensor(value)))
    if model:
        body += _field(2, encode_model_spec(model, signature))
    return body


def decode_predict_response(data: bytes) -> dict:
    """``{output name: numpy array}`` of a PredictResponse."""
    outputs = {}
    for number, _, value in parse_fields(data):
        if number == 1:
            entry = {n: v for n, _, v in parse_fields(value)}
            outputs[entry.get(1, b"").decode()] = decode_tensor(entry.get(2, b""))
    return outputs


# ----------------------------------------------------------------------------- client
class PredictionClient:
    """``PredictionService.Predict`` over one gRPC channel (bytes in, bytes out: the
    messages are encoded above, no generated stubs)."""

    def __init__(self, target="localhost:8500", model="hmsa", timeout=300.0, max_message_mb=512):
        import grpc

        limit = int(max_message_mb * 1024 * 1024)
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
            ],
        )
        self.model, self.timeout = model, timeout
        self._predict = self.channel.unary_unary(PREDICT_METHOD)  # no (de)serializers: raw bytes

    def predict(self, inputs: dict, signature="serving_default", version=None) -> dict:
        """``{input name: array}`` -> ``{output name: array}``; gRPC errors (e.g. the model's
        INVALID_ARGUMENT for a bad image) are raised as RuntimeError with the server's text."""
        import grpc

        request = encode_predict_request(self.model, signature, inputs, version)
        try:
            return decode_predict_response(self._predict(request, timeout=self.timeout))
        except grpc.RpcError as exc:
            raise RuntimeError(
                f"TF Serving gRPC error {exc.code().name}: {exc.details()}"
            ) from None

    def segment(self, image, signature="serving_default"):
        """int32 class map ``[H, W]`` of one uint8 RGB image (a tensor request), or of one
        encoded file's bytes for the ``serving_encoded*`` signatures."""
        if signature.startswith("serving_encoded"):
            out = self.predict({"image_bytes": np.array([bytes(image)], dtype=object)}, signature)
            if "classes_png_bytes" in out:
                return decode_class_png(out["classes_png_bytes"][0])
            return out["classes"][0].astype(np.int32)
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image must be uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}")
        return self.predict({"images": image[None]}, signature)["classes"][0].astype(np.int32)

    def close(self):
        self.channel.close()


def decode_class_png(data: bytes) -> np.ndarray:
    """int32 ``[H, W]`` class ids of a single-channel (8- or 16-bit) PNG."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image).astype(np.int32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", help="image file to segment (PNG/JPEG/...)")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8500, help="TF Serving gRPC port")
    parser.add_argument(
        "--model", default="hmsa", help="--model_name given to tensorflow_model_server"
    )
    parser.add_argument(
        "--signature",
        default="serving_default",
        choices=["serving_default", "serving_encoded", "serving_encoded_png"],
    )
    parser.add_argument("--out", help="write the class map here (8-bit PNG of class ids)")
    args = parser.parse_args(argv)

    client = PredictionClient(f"{args.host}:{args.port}", args.model)
    if args.signature.startswith("serving_encoded"):
        classes = client.segment(image_io.image_bytes(args.image), args.signature)
    else:
        classes = client.segment(image_io.read_image(args.image), args.signature)
    print(
        f"{args.image}: {classes.shape[0]}x{classes.shape[1]} class map, "
        f"classes {np.unique(classes).tolist()}"
    )
    if args.out:
        from PIL import Image

        Image.fromarray(np.clip(classes, 0, 255).astype(np.uint8)).save(args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
