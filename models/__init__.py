"""Model adapters: small classes with one contract and no Ray inside.

Each adapter is built from a :class:`models.registry.ResolvedModel`, loads its weights once in
``__init__``, and exposes a batch method that takes plain arrays and returns plain arrays or
dataclass records. Ray wiring lives in ``ray_jobs/``.
"""
