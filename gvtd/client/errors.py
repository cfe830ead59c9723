"""gvt-client's one error: its own module, so that the subcommands' modules raise the very
class main catches, also when main runs as __main__ (python -m gvtd.client.main)."""


class ClientError(Exception):
    """A failure to report as one line on stderr, exit status 1."""
