"""Strings a client sent: quoted short in messages, parsed into BadInput rather than engine failures.

A message that echoes a request field in full is as large as the request: grpclib encodes a megabyte
status message on the event loop (every call on the backend, Health included, waits) and the client then
refuses the trailer anyway. So messages quote a short prefix and say how long the value was.
"""

from __future__ import annotations

import json
from typing import Any

from localfleet.errors import BadInput

#: the most characters of a client's string that a message quotes
EXCERPT_CHARS = 64


def excerpt(value: str | bytes, limit: int = EXCERPT_CHARS) -> str:
    """`value` quoted (repr) for a message: whole when short, else its first `limit` characters and length."""
    if len(value) <= limit:
        return repr(value)
    unit = "bytes" if isinstance(value, bytes) else "characters"
    return f"{value[:limit]!r}… ({len(value)} {unit})"


def parse_json(text: str, field: str) -> Any:
    """Request field `field` parsed as JSON; anything wrong with it is the client's (BadInput)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{field} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadInput(f"{field} nests arrays or objects too deeply to parse; send flatter JSON") from None
    except ValueError:  # Python refuses to convert integers of thousands of digits
        raise BadInput(f"{field} holds a number too long to convert; send at most 4300 digits") from None
