"""A bound on how deeply JSON may nest, for request bodies and the configuration file.

OpenAI request bodies nest about a dozen levels at most (a tool's or a response format's JSON
schema is the deepest part), the configuration file five. Python's json module has no bound of
its own: it stops at the interpreter's recursion limit, about 1,000 levels less the stack
already in use, so whether a body near that depth parses depends on where it is parsed. One that
parsed in the handler failed a few frames deeper, when the proxy re-encoded it to add
``stream_options``: a 500. A fixed bound far below the limit gives the same answer everywhere.
"""

from __future__ import annotations

from typing import Any

MAX_JSON_DEPTH = 64  # levels of arrays and objects; a top-level object is level 1

_CONTAINERS = frozenset((dict, list))


def nests_deeper(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether decoded JSON ``value`` nests arrays and objects more than ``limit`` levels deep.

    Iterative, so the check cannot hit the recursion limit itself. It looks at each element of
    each array and object once: under a microsecond for a short chat call, a fraction of
    json.loads's own time for long strings and number arrays, about as long for bodies made of
    many small objects (tools).
    """
    if type(value) not in _CONTAINERS:
        return False
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        for child in item.values() if type(item) is dict else item:
            if type(child) in _CONTAINERS:
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False
