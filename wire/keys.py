"""The aggregate key: the one string that names an aggregate on the wire (the Kafka record key),
in the version counters and in the warehouse.
"""

from __future__ import annotations

from collections.abc import Sequence


def composite_key(parts: Sequence[str]) -> str:
    r"""The aggregate key of a primary key made of `parts`: one part as it is, several joined by `:`
    with `\` and `:` inside a part escaped as `\\` and `\:`.

    Unambiguous for a given number of parts (read left to right: `\` takes the next character as
    it is, any other `:` ends a part), so `('x:y', 'z')` -> `x\:y:z` and `('x', 'y:z')` -> `x:y\:z`
    stay two aggregates; joined plainly, both were `x:y:z`: one Kafka key, one version counter, one
    warehouse row. The escape is escaped too, or the parts `a\`, `b:c` and the parts `a:b\`, `c`
    would both be `a\:b\:c`. Escaping rather than, say, a JSON array, because every key without
    `:` or `\` in its parts stays exactly as it was on the wire (same counter, partition and
    warehouse row): only the keys that could collide change.
    """
    if len(parts) == 1:
        return parts[0]
    return ":".join(part.replace("\\", "\\\\").replace(":", "\\:") for part in parts)
