"""Exceptions the CLI maps to exit codes (DESIGN "CLI contract"): one stderr line, never a traceback."""
from __future__ import annotations


class VarbenchError(Exception):
    """Base class; ``exit_code`` is what ``varbench.cli.main`` exits with."""

    exit_code: int = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(VarbenchError):
    """Bad input: an option value, a depth list, a file that is not what it claims. Exit 2."""

    exit_code = 2


class EnvironmentUnavailable(VarbenchError):
    """The machine cannot do what was asked (CUDA without a GPU, NVML missing when required). Exit 3."""

    exit_code = 3


class RegressionFailed(VarbenchError):
    """A measurement regressed against its baseline, or a measurement failed. Exit 1."""

    exit_code = 1
