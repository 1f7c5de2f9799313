"""The admission estimate: a table of OpenAI payloads and the tokens Azure would count."""

from __future__ import annotations

import pytest

from gateway_app.routing.cost import DEFAULT_MAX_TOKENS, estimate_cost

D = DEFAULT_MAX_TOKENS
TEXT = "x" * 10  # 10 characters: 3 tokens, rounded up


def chat(*contents, **fields):
    return {"messages": [{"role": "user", "content": c} for c in contents], **fields}


@pytest.mark.parametrize("payload, expected", [
    # chat: every message's characters / 4, rounded up once, plus max tokens
    (chat("hello", "abc", max_tokens=10), 2 + 10),
    (chat(TEXT), 3 + D),
    (chat("", max_tokens=0), 0),
    (chat("x" * 8, max_completion_tokens=50), 2 + 50),
    (chat("x" * 8, max_completion_tokens=50, max_tokens=7), 2 + 50),  # the newer name wins
    (chat("x" * 8, max_tokens=5, n=3), 2 + 15),  # an answer budget per choice, prompt once
    (chat("x" * 8, max_tokens=5, best_of=4), 2 + 5),  # best_of is the completions API's
    # multi-part contents: the text parts; images are not counted
    ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "x" * 6},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "y" * 6}]}], "max_tokens": 1}, 3 + 1),
    # null contents (a tool-calling assistant turn), odd messages: nothing to count
    ({"messages": [{"role": "assistant", "content": None}, "junk", {"role": "user"}],
      "max_tokens": 2}, 2),
    # completions: a string, strings (each prompt gets its answers), token ids
    ({"prompt": TEXT, "max_tokens": 4}, 3 + 4),
    ({"prompt": TEXT}, 3 + D),
    ({"prompt": ["x" * 4, "y" * 5], "max_tokens": 10}, 1 + 2 + 2 * 10),
    ({"prompt": [1, 2, 3, 4, 5], "max_tokens": 1}, 5 + 1),
    ({"prompt": [[1, 2], [3, 4, 5]], "max_tokens": 1}, 5 + 2),
    ({"prompt": TEXT, "max_tokens": 4, "n": 2, "best_of": 5}, 3 + 20),  # best_of is larger
    ({"prompt": TEXT, "max_tokens": 4, "n": 3, "best_of": 2}, 3 + 12),
    # embeddings: each input rounded up on its own, no answer budget, no n
    ({"input": TEXT}, 3),
    ({"input": ["x", "y" * 5], "n": 9}, 1 + 2),
    ({"input": [1, 2, 3]}, 3),
    ({"input": [[1, 2], [3]]}, 3),
    # garbage degrades to defaults, never to an error
    (chat(TEXT, max_tokens="100", n=True), 3 + D),
    (chat(TEXT, max_tokens=-5, n=0), 3 + D),
    ({"prompt": True, "max_tokens": 3}, 3),
    ({"input": {"text": "x"}}, 0),
    ({"model": "gpt-4o"}, 0),
    ([1, 2, 3], 0),
    ("a string", 0),
])
def test_the_estimate_is_azures(payload, expected):
    assert estimate_cost(payload) == expected


def test_the_default_answer_budget_is_the_documented_completions_default():
    assert DEFAULT_MAX_TOKENS == 16
