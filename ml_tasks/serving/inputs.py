"""Request payloads → model inputs, or a :class:`BadInput` that tells the client what is wrong.

The two KServe protocols carry the same two kinds of input (the payloads are documented in
``ml_tasks.serve``): encoded images (base64 PNG/JPEG, decoded by
:func:`ml_tasks.data.images.decode_image`, the rules training data passes) and raw pixel arrays
(the model's ``(size, size)`` grid, floats in [0, 1] or, in v2, ``UINT8`` 0..255). Parsing
is strict on purpose: a field the service does not know is an error, not something ignored,
because an ignored field is a client bug nobody sees. Nothing here imports KServe; v2 requests
are read through the attributes of KServe's ``InferRequest`` (duck-typed), so the rules are
testable on their own. Parsing only checks structure: encoded images are left as base64 text in
:attr:`Batch.encoded`, for :mod:`ml_tasks.serving.decoding` to decode within a per-request
budget and, when they are large, off the event loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml_tasks.data.images import DEFAULT_MAX_PIXELS

V1_IMAGE_FIELD = "b64"
V2_IMAGE_INPUT = "image"
V2_PIXELS_INPUT = "pixels"
V2_PIXEL_DATATYPES = ("FP32", "UINT8")
OUTPUT_NAMES = ("label", "score", "probabilities", "classes")


class BadInput(ValueError):
    """A request the service cannot use; ``reason`` is a short code (a metric label)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[type[BadInput], tuple[str, str]]:
        # Raised in the decoding process too: it must cross back with its reason.
        return (BadInput, (self.reason, str(self)))


@dataclass(frozen=True)
class Limits:
    """What one request may carry; every limit has a 400 that names it."""

    image_size: int
    max_batch: int = 64
    max_image_bytes: int = 4 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_request_pixels: int = DEFAULT_MAX_PIXELS
    """Decoded pixels in all the images of one request: bounds the CPU a request can demand
    (a 16 kB PNG can hold 16 million pixels, so the byte limits alone do not)."""
    max_request_image_bytes: int = 16 * 1024 * 1024
    """Encoded bytes in all the images of one request (base64 decoded)."""


@dataclass
class Batch:
    """The images of one request, ready for the model, and what is kept of them for storage."""

    pixels: np.ndarray
    """``(N, size, size)`` float32 in [0, 1]: what the classifier reads."""
    sources: list[bytes | np.ndarray]
    """Per image: the encoded bytes as received, or the pixel array (float32 in [0, 1])."""
    protocol: str
    encoded: list[tuple[int, str, str]] = field(default_factory=list)
    """Images still to decode: (row in ``pixels``, where in the request, base64 text); the
    decoder fills their rows and sources."""
    request_id: str | None = None
    outputs: tuple[str, ...] = OUTPUT_NAMES
    started: float = 0.0
    """``time.perf_counter()`` when parsing began (the latency histogram's start)."""
    model: Any = None
    """The loaded model that parsed the request, and so answers it (``LoadedModel``): a model
    swapped in meanwhile serves the next requests, not this one."""


def parse_v1(body: Any, limits: Limits) -> Batch:
    """``{"instances": [{"b64": "<base64 image>"} | [[pixel rows]], ...]}`` → a Batch."""
    if isinstance(body, bytes | str):
        raise BadInput(
            "not_json", "the v1 protocol takes a JSON body (Content-Type: application/json)"
        )
    if not isinstance(body, dict):
        raise BadInput("wrong_type", f"the request must be a JSON object, got {_kind(body)}")
    _reject_unknown(body, {"instances"}, "the request")
    if "instances" not in body:
        raise BadInput("missing_field", "the request has no 'instances' list")
    instances = body["instances"]
    if not isinstance(instances, list):
        raise BadInput("wrong_type", f"'instances' must be a list, got {_kind(instances)}")
    _check_batch_size(len(instances), limits)
    pixels = np.empty((len(instances), limits.image_size, limits.image_size), dtype=np.float32)
    sources: list[bytes | np.ndarray] = []
    encoded: list[tuple[int, str, str]] = []
    for i, instance in enumerate(instances):
        where = f"instances[{i}]"
        if isinstance(instance, dict):
            _reject_unknown(instance, {V1_IMAGE_FIELD}, where)
            if V1_IMAGE_FIELD not in instance:
                raise BadInput("missing_field", f"{where}: expected {{'b64': <base64 image>}}")
            encoded.append(
                (i, f"{where}.b64", _base64_text(instance[V1_IMAGE_FIELD], f"{where}.b64"))
            )
            sources.append(b"")
        elif isinstance(instance, list):
            grid = _unit_pixels(instance, where, limits)
            pixels[i] = grid[0]
            sources.append(pixels[i])
        else:
            raise BadInput(
                "wrong_type",
                f"{where}: expected {{'b64': <base64 image>}} or a {limits.image_size}x"
                f"{limits.image_size} pixel array, got {_kind(instance)}",
            )
    return Batch(pixels=pixels, sources=sources, protocol="v1", encoded=encoded)


def parse_v2(request: Any, limits: Limits) -> Batch:
    """An Open Inference Protocol request (KServe ``InferRequest``) → a Batch."""
    if request.parameters:
        raise BadInput(
            "unknown_field",
            f"unknown request parameter(s) {_names(request.parameters)}: this model takes none",
        )
    outputs = _requested_outputs(request.request_outputs)
    inputs = list(request.inputs or [])
    if len(inputs) != 1:
        raise BadInput(
            "wrong_inputs",
            f"expected exactly one input ('{V2_IMAGE_INPUT}' BYTES or '{V2_PIXELS_INPUT}' "
            f"FP32/UINT8), got {len(inputs)}",
        )
    tensor = inputs[0]
    where = f"input '{tensor.name}'"
    if tensor.parameters:
        raise BadInput(
            "unknown_field", f"{where}: unknown parameter(s) {_names(tensor.parameters)}"
        )
    shape = [int(n) for n in tensor.shape]
    if tensor.name == V2_IMAGE_INPUT:
        batch = _v2_images(tensor, shape, where, limits)
    elif tensor.name == V2_PIXELS_INPUT:
        batch = _v2_pixels(tensor, shape, where, limits)
    else:
        raise BadInput(
            "unknown_input",
            f"unknown input '{tensor.name}': expected '{V2_IMAGE_INPUT}' or '{V2_PIXELS_INPUT}'",
        )
    batch.request_id = request.id or None
    batch.outputs = outputs
    return batch


def _v2_images(tensor: Any, shape: list[int], where: str, limits: Limits) -> Batch:
    if tensor.datatype != "BYTES":
        raise BadInput(
            "wrong_dtype", f"{where}: datatype must be BYTES (base64 images), got {tensor.datatype}"
        )
    data = tensor.data
    if len(shape) != 1:
        raise BadInput(
            "wrong_shape", f"{where}: shape must be [N] (one string per image), got {shape}"
        )
    _check_batch_size(shape[0], limits)
    if not isinstance(data, list) or len(data) != shape[0]:
        count = len(data) if isinstance(data, list) else _kind(data)
        raise BadInput("wrong_shape", f"{where}: shape {shape} but data holds {count} item(s)")
    pixels = np.empty((len(data), limits.image_size, limits.image_size), dtype=np.float32)
    encoded = [
        (i, f"{where}[{i}]", _base64_text(text, f"{where}[{i}]")) for i, text in enumerate(data)
    ]
    sources: list[bytes | np.ndarray] = [b""] * len(data)
    return Batch(pixels=pixels, sources=sources, protocol="v2", encoded=encoded)


def _v2_pixels(tensor: Any, shape: list[int], where: str, limits: Limits) -> Batch:
    size = limits.image_size
    if tensor.datatype not in V2_PIXEL_DATATYPES:
        raise BadInput(
            "wrong_dtype",
            f"{where}: datatype must be FP32 (0..1) or UINT8 (0..255), got {tensor.datatype}",
        )
    if any(n < 0 for n in shape):
        raise BadInput("wrong_shape", f"{where}: shape {shape} has a negative dimension")
    if shape[1:] not in ([size, size], [1, size, size]):
        raise BadInput(
            "wrong_shape",
            f"{where}: shape must be [N, {size}, {size}] or [N, 1, {size}, {size}], got {shape}",
        )
    _check_batch_size(shape[0], limits)
    values = _numbers(tensor.data, where)
    if values.ndim > 1 and list(values.shape) != shape:
        # The protocol's data is flat (row-major) or nested exactly as the shape says: a
        # nesting that only has the right number of values is a client bug, not an image.
        raise BadInput(
            "wrong_shape",
            f"{where}: data nested as {list(values.shape)} does not match shape {shape} "
            "(send it flat or nested exactly as the shape)",
        )
    if values.size != math.prod(shape):
        raise BadInput(
            "wrong_shape",
            f"{where}: shape {shape} needs {math.prod(shape)} values, got {values.size}",
        )
    values = values.reshape(shape[0], size, size)
    if tensor.datatype == "UINT8":
        if values.dtype.kind == "f" or values.min() < 0 or values.max() > 255:
            raise BadInput("wrong_dtype", f"{where}: UINT8 values must be integers 0..255")
        pixels = values.astype(np.float32) / np.float32(255.0)
    else:
        pixels = _in_unit_range(values.astype(np.float32), where)
    return Batch(pixels=pixels, sources=list(pixels), protocol="v2")


def _requested_outputs(requested: Sequence[Any] | None) -> tuple[str, ...]:
    if not requested:
        return OUTPUT_NAMES
    names = []
    for output in requested:
        if output.name not in OUTPUT_NAMES:
            raise BadInput(
                "unknown_output",
                f"unknown output '{output.name}': this model returns {', '.join(OUTPUT_NAMES)}",
            )
        params = dict(output.parameters or {})
        if params.pop("binary_data", False):
            raise BadInput(
                "unsupported", f"output '{output.name}': binary outputs are not supported"
            )
        if params:
            raise BadInput(
                "unknown_field", f"output '{output.name}': unknown parameter(s) {_names(params)}"
            )
        names.append(output.name)
    return tuple(names)


def _base64_text(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise BadInput("wrong_type", f"{where}: expected a base64 string, got {_kind(text)}")
    return text


def _unit_pixels(values: Any, where: str, limits: Limits) -> np.ndarray:
    """A v1 pixel instance: ``(size, size)`` or ``(1, size, size)`` floats in [0, 1]."""
    size = limits.image_size
    array = _numbers(values, where)
    if array.shape not in ((size, size), (1, size, size)):
        raise BadInput(
            "wrong_shape",
            f"{where}: pixel arrays must be {size}x{size} (or 1x{size}x{size}), got shape "
            f"{list(array.shape)}",
        )
    return _in_unit_range(array.astype(np.float32).reshape(1, size, size), where)


def _numbers(values: Any, where: str) -> np.ndarray:
    """A rectangular array of JSON numbers (no strings, no booleans, no ragged rows)."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise BadInput("wrong_shape", f"{where}: not a rectangular array of numbers") from exc
    if array.dtype.kind not in "iuf" or _holds_bool(values):
        raise BadInput("wrong_dtype", f"{where}: pixel values must be numbers")
    return array


def _holds_bool(values: Any) -> bool:
    """Whether a JSON array holds true/false anywhere (numpy reads them as 1 and 0)."""
    stack = [values]
    while stack:
        items = stack.pop()
        for value in items:
            if isinstance(value, list):
                stack.append(value)
            elif isinstance(value, bool):
                return True
    return False


def _in_unit_range(pixels: np.ndarray, where: str) -> np.ndarray:
    if not np.isfinite(pixels).all() or pixels.min() < 0.0 or pixels.max() > 1.0:
        raise BadInput(
            "out_of_range",
            f"{where}: float pixel values must be in [0, 1] (send UINT8 in v2 for 0..255)",
        )
    return pixels


def _check_batch_size(count: int, limits: Limits) -> None:
    if count < 1:
        raise BadInput("empty_batch", "the request holds no images")
    if count > limits.max_batch:
        raise BadInput(
            "batch_too_large", f"{count} images is over the limit of {limits.max_batch} per request"
        )


def _reject_unknown(mapping: dict[str, Any], known: set[str], where: str) -> None:
    unknown = [key for key in mapping if key not in known]
    if unknown:
        raise BadInput(
            "unknown_field",
            f"{where}: unknown field(s) {_names(unknown)}; expected {_names(sorted(known))}",
        )


def _names(keys: Any) -> str:
    return ", ".join(repr(str(k)) for k in keys)


def _kind(value: Any) -> str:
    for kind, name in ((dict, "an object"), (list, "a list"), (str, "a string"), (bytes, "bytes")):
        if isinstance(value, kind):
            return name
    return type(value).__name__
