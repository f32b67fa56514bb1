"""Which Google Cloud API errors mean "not now": the adapters turn them into Unavailable."""

from __future__ import annotations

from google.api_core import exceptions as gexc

TRANSIENT = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.ResourceExhausted,
    gexc.Aborted,
    gexc.Unknown,
    gexc.RetryError,  # the client's own retries ran out
)


def transient_cause(error: BaseException) -> BaseException | None:
    """The transient error behind `error`, if any. The client libraries wrap errors: the
    Firestore transaction helper raises ValueError caused by the abort it gave up on, or with
    the original error as the context of a failed rollback."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, TRANSIENT):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def describe(error: BaseException) -> str:
    message = getattr(error, "message", None) or str(error)
    text = f"{type(error).__name__}: {message}"
    if isinstance(error, gexc.RetryError) and error.cause is not None:
        text += f" (last: {describe(error.cause)})"
    return text
