"""One-line messages for errors raised from compiled code, for the command line.

A runtime check (`eqx.error_if`) that fails inside `jax.jit` or `eqx.filter_jit` raises a `RuntimeError` whose
text wraps the check's own message (which names the argument) in JAX and Equinox debugging notes and stack
traces. `runtime_message` recovers the check's message.
"""

import re

_MARKER = re.compile(r"EquinoxRuntimeError: (.+)")


def runtime_message(error: BaseException) -> str:
    """The message of `error` on one line: for a failed `eqx.error_if`, only the check's message."""
    text = str(error)
    found = _MARKER.search(text)
    if found:
        return found.group(1).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines) if lines else type(error).__name__
