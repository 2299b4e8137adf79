"""outboxkit: the composition root — the `outboxkit` command line and the demo.

The libraries live in `outbox` (app side), `relay` and `sink`; this package wires them together
and is imported by none of them.
"""

from importlib.metadata import version

__version__ = version("outboxkit")
__all__ = ["__version__"]
