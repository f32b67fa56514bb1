"""gRPC status codes as pRPC carries them (the `X-Prpc-Grpc-Code` header) and as Go prints them."""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @property
    def go_name(self) -> str:
        """The name Go's status errors print: "rpc error: code = NotFound desc = ..."."""
        if self is Code.CANCELLED:
            return "Canceled"
        return "".join(part.capitalize() for part in self.name.split("_"))

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self]

    @classmethod
    def parse(cls, value: str | int) -> Code:
        """A code from its number or its name ("UNAVAILABLE", "Unavailable", 14)."""
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(value)
        if isinstance(value, str):
            text = value.strip()
            if text.isdigit():
                return cls(int(text))
            for code in cls:
                if text.upper() == code.name or text == code.go_name:
                    return code
        raise ValueError(f"unknown gRPC code {value!r}")


_HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}

# LUCI's grpcutil.IsTransientCode plus DEADLINE_EXCEEDED (as the scheduler adds it) and
# RESOURCE_EXHAUSTED (rate limiting passes).
TRANSIENT = frozenset(
    {Code.UNKNOWN, Code.INTERNAL, Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.RESOURCE_EXHAUSTED}
)


class RpcError(Exception):
    """A failed pRPC call, printed as Go's status errors are."""

    def __init__(self, code: Code, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # For a refused caller: who called and which permission the call needs, on one line.
        self.hint = hint

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT

    def __str__(self) -> str:
        return f"rpc error: code = {self.code.go_name} desc = {self.message}"
