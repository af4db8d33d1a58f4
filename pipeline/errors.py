"""Errors that end a job. Each carries a message meant for the caller."""
from __future__ import annotations


class JobError(Exception):
    """A job failed in a known way; str(err) is safe to return to the client."""

    stage: str = "job"

    def __init__(self, message: str, stage: str | None = None) -> None:
        super().__init__(message)
        if stage is not None:
            self.stage = stage

    @property
    def message(self) -> str:
        return str(self.args[0])

    def describe(self) -> str:
        """One readable line: the stage and the reason."""
        return f"{self.stage}: {self.message}"


class InputError(JobError):
    """A request field is invalid. `field` is its dotted path in `input`, e.g. `views.left.url`."""

    stage = "input"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class StageError(JobError):
    """A stage could not produce its result (no surface found, model failed, ...)."""


class ModelUnavailableError(JobError):
    """Weights for a requested model are missing or cannot run on this machine."""


class StorageError(JobError):
    """The bundle could not be written to, or read from, storage."""

    stage = "upload"


class JobTimeout(JobError):
    """The job ran past MAX_SECONDS."""


class JobCancelled(JobError):
    """The job was cancelled by the client."""
