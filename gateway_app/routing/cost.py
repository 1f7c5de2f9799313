"""A call's cost as Azure OpenAI estimates it at admission, before the model runs.

Azure admits a call against a deployment's tokens-per-minute quota by an estimate made when the
call arrives, not by the tokens it finally uses: the prompt's text, counted as characters / 4,
plus the answer's budget, ``max_tokens`` (or ``max_completion_tokens``), for each answer asked
(``n``; ``best_of`` for completions when larger). The gateway makes the same estimate once per
call, when the call is read (``Call.cost``), so headroom routing, client limits and unmet demand
all count with one number.

It is an estimate, and so is Azure's: a real tokenizer counts English at about 4 characters a
token, other scripts, code and JSON differently; images, tool definitions and message roles are
not counted here, and a call that gives no ``max_tokens`` is counted with
:data:`DEFAULT_MAX_TOKENS`.
"""

from __future__ import annotations

from typing import Any

CHARS_PER_TOKEN = 4
# The answer budget of a call that gives none. The completions API documents 16 as the default
# of max_tokens (Azure's reference and OpenAI's); chat completions document none (an answer may
# run to the model's limit) and Azure does not say what it counts for them at admission. 16 keeps
# such a call's estimate to what is known, its prompt, rather than a guessed model limit that
# would pass over deployments with room; it is also the simulator's default_max_tokens.
DEFAULT_MAX_TOKENS = 16


def estimate_cost(payload: Any) -> int:
    """Tokens Azure counts against the quota for the OpenAI request ``payload`` (decoded JSON).

    - chat (``messages``): the characters of every message content, strings and the text of
      multi-part contents;
    - completions (``prompt``): a string, a list of strings (one answer each), or token ids,
      one token per id;
    - embeddings (``input``): a string or a list of strings, each rounded up on its own, or
      token ids; no answer, so no answer budget and no ``n``.

    Characters / 4 rounded up, plus ``max_completion_tokens`` or ``max_tokens`` (else
    :data:`DEFAULT_MAX_TOKENS`) for each answer: ``n`` (and ``best_of`` when larger) times the
    prompts given. The prompt is counted once: it is read once whatever ``n`` is. Anything else
    (not a JSON object, no prompt field) costs 0.
    """
    if not isinstance(payload, dict):
        return 0
    messages = payload.get("messages")
    if isinstance(messages, list):
        return _tokens(_chat_chars(messages)) + _answer(payload, 1, best_of=False)
    if "prompt" in payload:
        tokens, prompts = _prompt_tokens(payload["prompt"])
        return tokens + _answer(payload, prompts, best_of=True)
    return _input_tokens(payload.get("input"))


def _tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)  # rounded up


def _chat_chars(messages: list[Any]) -> int:
    chars = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):  # [{"type": "text", "text": "..."}, {"type": "image_url"...
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
    return chars


def _is_ids(value: Any) -> bool:
    """A list of token ids (integers, not booleans)."""
    return isinstance(value, list) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in value)


def _prompt_tokens(prompt: Any) -> tuple[int, int]:
    """A completions prompt's tokens, and how many prompts it holds (each gets its answers)."""
    if isinstance(prompt, str):
        return _tokens(len(prompt)), 1
    if not isinstance(prompt, list) or not prompt:
        return 0, 1
    if _is_ids(prompt):
        return len(prompt), 1
    return _items_tokens(prompt), len(prompt)


def _input_tokens(value: Any) -> int:
    """An embeddings input: each text rounded up on its own, token ids one per id."""
    if isinstance(value, str):
        return _tokens(len(value))
    if not isinstance(value, list):
        return 0
    if _is_ids(value):
        return len(value)
    return _items_tokens(value)


def _items_tokens(items: list[Any]) -> int:
    """A list of texts (each rounded up on its own) or of token-id arrays (one per id)."""
    tokens = 0
    for item in items:
        if isinstance(item, str):
            tokens += _tokens(len(item))
        elif _is_ids(item):
            tokens += len(item)
    return tokens


def _count(value: Any, default: int) -> int:
    """A non-negative integer field, or ``default`` when missing or not one."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return default


def _answer(payload: dict[str, Any], prompts: int, best_of: bool) -> int:
    """The answer budget: max tokens for each answer asked, for each prompt."""
    limit = payload.get("max_completion_tokens")
    if limit is None:
        limit = payload.get("max_tokens")
    per_answer = _count(limit, DEFAULT_MAX_TOKENS)
    answers = max(_count(payload.get("n"), 1), 1)
    if best_of:
        answers = max(answers, _count(payload.get("best_of"), 1))
    return per_answer * answers * prompts
