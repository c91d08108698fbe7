"""The one exception type that the CLI turns into a one-line message, and the one warning category.

Every check on user input (paths, model names, policies, targets, patterns) raises
:class:`AmcError` with a sentence that names the problem; the CLI prints it as
``amc: error: <message>`` and exits with status 2, without a traceback.
"""


class AmcError(Exception):
    """A problem with the user's input or files, explained in one line."""


class AmcWarning(UserWarning):
    """Something legal but probably unintended (e.g. searching a model without trained weights); issued
    with :func:`warnings.warn`, shown by the CLI as one ``amc: warning: <message>`` line."""
