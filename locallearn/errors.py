"""Errors that the command line reports as one clear line instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: an unknown name, an impossible split, a malformed file."""

    exit_code = 2


class Interrupted(UserError):
    """Ctrl-C or SIGTERM: the state after the last finished step is saved before exiting.
    The exit code is the shell's 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, signal_number: int = 2):
        super().__init__(message)
        self.exit_code = 128 + signal_number


class NonFiniteLoss(RuntimeError):
    """A local loss or the parameters became NaN or infinite; training stops. Nothing non-finite
    is ever written to a checkpoint, and `kept` says what is on disk."""

    exit_code = 3

    def __init__(self, what: str, step: int, kept: str):
        self.what, self.step, self.kept = what, step, kept
        super().__init__(f"{what} at step {step}; training stopped. {kept}")
