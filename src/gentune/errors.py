"""The one exception type for errors a user can cause.

The CLI catches it, prints ``error: <message>`` on stderr and exits with status 2. Library callers get a
normal exception whose message already names the file, line or key at fault.
"""


class GentuneError(Exception):
    """A user-caused error: bad file, bad row, unknown name, incompatible checkpoint."""
