"""The one exception type that the CLI turns into a one-line message.

Every check on user input (paths, model names, policies, targets, patterns) raises
:class:`AmcError` with a sentence that names the problem; the CLI prints it as
``amc: error: <message>`` and exits with status 2, without a traceback.
"""


class AmcError(Exception):
    """A problem with the user's input or files, explained in one line."""
