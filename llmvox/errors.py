"""One exception type for problems a user can fix (bad paths, bad files, bad input).

The CLI prints these as a single line; the server turns them into 4xx JSON errors.
"""


class LLMVoXError(Exception):
    """A user-facing error: the message says what is wrong and what to change."""
