"""`fluxlora` subcommands, one module each with `register(subparsers)`; engine.cli lists them."""


class CommandError(Exception):
    """A failure with a message for the user; exit status 1."""
