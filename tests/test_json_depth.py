"""The JSON nesting bound: exact at the bound, iterative, blind to width."""

from __future__ import annotations

import json

import pytest

from gateway_app.json_depth import MAX_JSON_DEPTH, nests_deeper


def arrays(depth: int) -> str:
    return "[" * depth + "]" * depth


def objects(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def mixed(depth: int) -> str:
    """Alternating objects and arrays, each level with siblings before and after."""
    text = "[]"
    for level in range(depth - 1):
        text = f'{{"x": "[{{", "a": {text}, "b": [1]}}' if level % 2 else f'[0, {{}}, {text}, "]"]'
    return text


@pytest.mark.parametrize("make", [arrays, objects, mixed])
def test_exact_at_the_bound(make):
    assert not nests_deeper(json.loads(make(MAX_JSON_DEPTH)))
    assert nests_deeper(json.loads(make(MAX_JSON_DEPTH + 1)))
    assert nests_deeper(json.loads(make(900)))


@pytest.mark.parametrize("value", [None, 1, "[[[[", True, [], {}, [1, "a"], {"a": [1]}])
def test_scalars_and_shallow_values(value):
    assert not nests_deeper(value)


def test_a_deep_branch_among_many_shallow_ones_is_found():
    value = {"messages": [{"role": "user", "content": str(i)} for i in range(10_000)]}
    assert not nests_deeper(value)
    value["messages"][5_000]["content"] = json.loads(arrays(MAX_JSON_DEPTH))
    assert nests_deeper(value)


def test_a_custom_limit():
    assert not nests_deeper([[1]], limit=2)
    assert nests_deeper([[[1]]], limit=2)
