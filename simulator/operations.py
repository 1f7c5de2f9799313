"""The three operations: their routes, and the parts of a request body the simulator uses.

Only what changes the answer is read and checked (prompt, ``max_tokens``, ``stream``,
``stream_options``, embedding ``input``/``dimensions``/``encoding_format``); other fields
(temperature, tools, ``n`` ...) are accepted and ignored, and one choice is always returned.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

MAX_OUTPUT_TOKENS = 16384  # gpt-4o's output limit; also keeps a stream from running for hours
MAX_EMBEDDING_INPUTS = 2048  # Azure's limit of inputs per embeddings call
CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text


class Operation(enum.Enum):
    """An operation: (path after the deployment name, Azure's operation name)."""

    CHAT = ("chat/completions", "ChatCompletions_Create")
    COMPLETIONS = ("completions", "Completions_Create")
    EMBEDDINGS = ("embeddings", "Embeddings_Create")

    @property
    def path(self) -> str:
        return self.value[0]

    @property
    def azure_name(self) -> str:
        return self.value[1]

    @classmethod
    def from_path(cls, path: str) -> Operation | None:
        """The operation served at ``path`` (e.g. ``chat/completions``), if any."""
        for op in cls:
            if op.path == path:
                return op
        return None


class BadRequest(ValueError):
    """A body the real service would refuse with 400; the message is shown to the client."""


@dataclass(frozen=True)
class Call:
    """What one request asks for, as far as the simulator cares."""

    operation: Operation
    prompt_tokens: int
    prompt_text: str  # all prompt text, joined; seeds the generated answer
    max_tokens: int = 0  # output tokens to produce (0 for embeddings)
    max_tokens_given: bool = False
    stream: bool = False
    include_usage: bool = False
    inputs: tuple[str, ...] = field(default_factory=tuple)  # embeddings: one text per vector
    dimensions: int | None = None
    encoding_format: str = "float"

    @property
    def cost(self) -> int:
        """Tokens charged against the quota at admission: prompt + max_tokens."""
        return self.prompt_tokens + self.max_tokens


def estimate_tokens(text: str) -> int:
    """Tokens in ``text`` by the 4-characters rule, at least 1."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def parse_call(operation: Operation, body: Any, default_max_tokens: int) -> Call:
    """Check a decoded JSON body and return the call it describes; raise BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    if operation is Operation.EMBEDDINGS:
        return _embeddings(body)
    if operation is Operation.CHAT:
        text = _chat_text(body)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    else:
        text = _prompt_text(body.get("prompt", ""))
        max_tokens = body.get("max_tokens")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise BadRequest(f"{stream!r} is not of type 'boolean' - 'stream'")
    options = body.get("stream_options")
    if options is not None and not stream:
        raise BadRequest("The 'stream_options' parameter is only allowed when 'stream' is enabled.")
    if options is not None and not isinstance(options, dict):
        raise BadRequest(f"{options!r} is not of type 'object' - 'stream_options'")
    return Call(
        operation=operation,
        prompt_tokens=estimate_tokens(text),
        prompt_text=text,
        max_tokens=_max_tokens(max_tokens, default_max_tokens),
        max_tokens_given=max_tokens is not None,
        stream=bool(stream),
        include_usage=bool(options and options.get("include_usage")),
    )


def _max_tokens(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"max_tokens must be a positive integer, got {value!r}")
    if value > MAX_OUTPUT_TOKENS:
        raise BadRequest(
            f"max_tokens is too large: {value}. This model supports at most "
            f"{MAX_OUTPUT_TOKENS} completion tokens, whereas you provided {value}."
        )
    return value


def _chat_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' is a required property and must be a non-empty array")
    parts: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a 'role'")
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):  # [{"type": "text", "text": "..."}, ...]
            parts.extend(
                p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
        elif content is not None:
            raise BadRequest(f"messages[{i}].content must be a string, an array or null")
    return "".join(parts)


def _prompt_text(prompt: Any) -> str:
    """A completions prompt: a string, a list of strings, or token ids (one word each)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return "".join(prompt)
    if isinstance(prompt, list) and all(_is_int(p) for p in prompt):
        return _tokens_as_text(prompt)
    raise BadRequest("'prompt' must be a string, an array of strings or an array of tokens")


def _embeddings(body: dict[str, Any]) -> Call:
    inputs = _embedding_inputs(body.get("input"))
    dimensions = body.get("dimensions")
    if dimensions is not None and (not _is_int(dimensions) or not 1 <= dimensions <= 3072):
        raise BadRequest(f"dimensions must be an integer from 1 to 3072, got {dimensions!r}")
    encoding = body.get("encoding_format", "float") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest(f"encoding_format must be 'float' or 'base64', got {encoding!r}")
    return Call(
        operation=Operation.EMBEDDINGS,
        prompt_tokens=sum(estimate_tokens(text) for text in inputs),
        prompt_text="\n".join(inputs),
        inputs=tuple(inputs),
        dimensions=dimensions,
        encoding_format=encoding,
    )


def _embedding_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        items: list[str] = [value]
    elif isinstance(value, list) and value and all(_is_int(v) for v in value):
        items = [_tokens_as_text(value)]
    elif isinstance(value, list) and value:
        items = []
        for item in value:
            if isinstance(item, str):
                items.append(item)
            elif isinstance(item, list) and item and all(_is_int(v) for v in item):
                items.append(_tokens_as_text(item))
            else:
                raise BadRequest("'input' items must be strings or arrays of tokens")
    else:
        raise BadRequest("'input' is a required property: a string or a non-empty array")
    if len(items) > MAX_EMBEDDING_INPUTS:
        raise BadRequest(f"Too many inputs. The max number of inputs is {MAX_EMBEDDING_INPUTS}.")
    if any(not item for item in items):
        raise BadRequest("'input' cannot contain an empty string")
    return items


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tokens_as_text(tokens: list[int]) -> str:
    """Token ids as text of the same estimated length (4 characters per token)."""
    return "".join(f"{t % 10000:04d}" for t in tokens)
