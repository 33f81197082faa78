"""The one exception type for mistakes a user can cause."""


class UserError(Exception):
    """A problem with the user's input (file, shape, option).

    The CLI prints it as a single ``error: ...`` line and exits with status 2.
    The message should name the offending file or value.
    """
