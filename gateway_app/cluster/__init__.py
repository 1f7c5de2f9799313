"""Several gateway processes acting as one, through Redis (``API_GATEWAY_REDIS_URL``).

The registry stays the one place that holds state and routing reads only its local copy:
this package carries what changes to the other replicas and back, on background threads.

- ``messages.py``: what travels (cooldowns, reload requests and their answers), one class
  per kind; names, URLs, numbers and digests only, never a key.
- ``link.py``: the Redis connection, a publisher fed by a bounded queue that never blocks
  a call, and a subscriber that applies what other replicas publish.
- ``view.py``: each replica's metrics written to Redis, and the cluster's sum of them.
- ``version.py``: the configuration version, a digest that reveals no key.
"""
