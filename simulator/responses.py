"""Answer bodies in Azure OpenAI's shapes: completions, chunks, embeddings and errors.

Generated text is one word per token, taken from a fixed list at an offset derived from the
prompt, so the same prompt always gets the same answer.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
import time
import uuid
from typing import Any

from simulator.operations import Call, Operation

SYSTEM_FINGERPRINT = "fp_simulator"
_WORDS = (
    "the", "simulated", "deployment", "answers", "every", "request", "with", "a", "few",
    "plain", "words", "so", "that", "clients", "gateways", "and", "benchmarks", "can",
    "count", "tokens", "measure", "latency", "and", "watch", "throttling", "without",
    "spending", "any", "real", "quota", "on", "a", "language", "model",
)


def words(call: Call) -> list[str]:
    """The output tokens of a call, as text pieces: ``["The", " simulated", ...]``."""
    start = int.from_bytes(hashlib.sha256(call.prompt_text.encode()).digest()[:4], "big")
    picked = (_WORDS[(start + i) % len(_WORDS)] for i in range(call.max_tokens))
    return [" " + w if i else w.capitalize() for i, w in enumerate(picked)]


def finish_reason(call: Call) -> str:
    """``length`` when the caller's max_tokens cut the answer, else ``stop``."""
    return "length" if call.max_tokens_given else "stop"


def usage(call: Call) -> dict[str, int]:
    """The usage object: the estimated prompt tokens and the tokens produced."""
    if call.operation is Operation.EMBEDDINGS:
        return {"prompt_tokens": call.prompt_tokens, "total_tokens": call.prompt_tokens}
    return {
        "prompt_tokens": call.prompt_tokens,
        "completion_tokens": call.max_tokens,
        "total_tokens": call.prompt_tokens + call.max_tokens,
    }


def new_id(call: Call) -> str:
    """An id in OpenAI's style: ``chatcmpl-...`` or ``cmpl-...``."""
    prefix = "chatcmpl" if call.operation is Operation.CHAT else "cmpl"
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def completion(call: Call, model: str) -> dict[str, Any]:
    """A whole (not streamed) chat.completion or text_completion."""
    text = "".join(words(call))
    if call.operation is Operation.CHAT:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish_reason(call),
            "logprobs": None,
        }
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish_reason(call), "logprobs": None}
        kind = "text_completion"
    return {
        "id": new_id(call),
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [choice],
        "usage": usage(call),
    }


class ChunkMaker:
    """Builds the chunks of one streamed answer; they share id, created and model."""

    def __init__(self, call: Call, model: str) -> None:
        self.call = call
        self._head = {
            "id": new_id(call),
            "object": "chat.completion.chunk" if call.operation is Operation.CHAT
            else "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def first(self, piece: str) -> dict[str, Any]:
        """The first chunk: the role (chat) with the first token."""
        if self.call.operation is Operation.CHAT:
            return self._chunk({"delta": {"role": "assistant", "content": piece}})
        return self._chunk({"text": piece})

    def token(self, piece: str) -> dict[str, Any]:
        """A chunk with one more token."""
        if self.call.operation is Operation.CHAT:
            return self._chunk({"delta": {"content": piece}})
        return self._chunk({"text": piece})

    def last(self) -> dict[str, Any]:
        """The chunk that closes the choice with its finish_reason, as OpenAI sends it."""
        reason = finish_reason(self.call)
        if self.call.operation is Operation.CHAT:
            return self._chunk({"delta": {}}, reason)
        return self._chunk({"text": ""}, reason)

    def usage(self) -> dict[str, Any]:
        """The extra chunk sent when ``stream_options.include_usage`` is true."""
        return {**self._head, "choices": [], "usage": usage(self.call)}

    def _chunk(self, choice: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        body = {**self._head, "choices": [{"index": 0, **choice, "logprobs": None,
                                           "finish_reason": reason}]}
        if self.call.include_usage:
            body["usage"] = None  # OpenAI marks every other chunk like this
        return body


def embeddings(call: Call, model: str, dimensions: int) -> dict[str, Any]:
    """An embeddings list: one unit vector per input, the same vector for the same text."""
    size = call.dimensions or dimensions
    data = []
    for index, text in enumerate(call.inputs):
        vector = _vector(text, size)
        if call.encoding_format == "base64":
            packed = struct.pack(f"<{size}f", *vector)
            embedding: Any = base64.b64encode(packed).decode("ascii")
        else:
            embedding = vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {"object": "list", "data": data, "model": model, "usage": usage(call)}


def _vector(text: str, size: int) -> list[float]:
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    raw = [rng.gauss(0.0, 1.0) for _ in range(size)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 7) for x in raw]


def error(code: str, message: str) -> dict[str, Any]:
    """Azure's error body: ``{"error": {"code": ..., "message": ...}}``."""
    return {"error": {"code": code, "message": message}}


def rate_limit_error(call: Call, api_version: str, limit: str, seconds: int) -> dict[str, Any]:
    """The 429 body Azure sends, naming the operation, the budget and the wait."""
    kind = "token rate limit" if limit == "tokens" else "call rate limit"
    return error(
        "429",
        f"Requests to the {call.operation.azure_name} Operation under Azure OpenAI API version "
        f"{api_version} have exceeded {kind} of your current OpenAI S0 pricing tier. "
        f"Please retry after {seconds} second{'s' if seconds != 1 else ''}. "
        "Please go here: https://aka.ms/oai/quotaincrease if you would like to further "
        "increase the default rate limit.",
    )


UNAUTHORIZED = error(
    "401",
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
    "a valid key for an active subscription and use a correct regional API endpoint for your "
    "resource.",
)
DEPLOYMENT_NOT_FOUND = error(
    "DeploymentNotFound",
    "The API deployment for this resource does not exist. If you created the deployment within "
    "the last 5 minutes, please wait a moment and try again.",
)
MISSING_API_VERSION = error(
    "MissingApiVersionParameter",
    "The api-version query parameter (?api-version=) is required for all requests.",
)
NOT_FOUND = error("404", "Resource not found")
SERVER_ERROR = error(
    "InternalServerError",
    "The server had an error while processing your request. Sorry about that!",
)
