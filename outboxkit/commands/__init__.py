"""The `outboxkit` commands, one module each: `register(commands)` adds the command's parser, its
flags and the handler that runs it (`args.handler`), so a new command is a new module, not a
longer parser.

A handler returns the exit code (`runtime.process.ExitCode`) and lets failures through: `outboxkit.cli`
turns them into one line at the one boundary, `outboxkit.failures`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeAlias

from outboxkit.failures import Named

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler: TypeAlias = Callable[[argparse.Namespace, Named], int]
