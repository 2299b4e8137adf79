"""The checker's exception tree. A violation of the guarantee is a finding (`verify.checks`), never
an exception: an exception says the check itself could not run, so its verdict is unknown.

    VerifyError               the check could not run (a topic missing, Kafka away, nothing read
                              for the timeout): exit 1, and no verdict; the operator fixes the
                              named topic or service and runs the check again

Invalid settings are refused while they load (pydantic, exit 2), so there is no configuration
error here.
"""

from __future__ import annotations


class VerifyError(Exception):
    """The check itself could not run (a topic missing, Kafka away); not a finding."""
