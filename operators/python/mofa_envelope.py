"""The MoFA envelope in Python: the kernel's Arrow schema (mofa.envelope/1) <-> plain dicts.

Every agent edge carries a StructArray, one row per message. In Python a message is a dict with
the keys of `FIELDS`; `to_arrow` builds the exact Arrow types the Rust kernel writes, and
`from_arrow` reads a batch back (a plain string array counts as user tasks, as in the kernel).
Send with `METADATA` so Rust nodes know the schema.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Iterable

import pyarrow as pa

SCHEMA = "mofa.envelope/1"
METADATA = {"mofa.schema": SCHEMA}

KINDS = ("task", "message", "result", "tool_call", "tool_result", "token", "vote", "control", "error")
ROLES = ("system", "user", "assistant", "tool")
PRIORITY = {"low": 0, "normal": 1, "high": 2, "critical": 3}

ARROW_TYPE = pa.struct(
    [
        pa.field("id", pa.utf8(), nullable=False),
        pa.field("session", pa.utf8(), nullable=False),
        pa.field("reply_to", pa.utf8(), nullable=True),
        pa.field("kind", pa.utf8(), nullable=False),
        pa.field("sender", pa.utf8(), nullable=False),
        pa.field("role", pa.utf8(), nullable=False),
        pa.field("content", pa.utf8(), nullable=False),
        pa.field("payload", pa.utf8(), nullable=True),
        pa.field("round", pa.uint32(), nullable=False),
        pa.field("priority", pa.uint8(), nullable=False),
        pa.field("ts_ms", pa.int64(), nullable=False),
    ]
)
FIELDS = tuple(f.name for f in ARROW_TYPE)
REQUIRED = ("id", "session", "kind", "content")


class EnvelopeError(ValueError):
    """A batch that is not envelopes; the message says what is wrong."""


def new_id() -> str:
    # The kernel uses time-ordered UUIDv7; uuid7 is not in Python 3.11's stdlib, and ids only
    # need to be unique.
    return str(uuid.uuid4())


def now_ms() -> int:
    return int(time.time() * 1000)


def envelope(kind: str, sender: str, role: str, content: str, *, session: str | None = None,
             reply_to: str | None = None, payload: Any = None, round: int = 0,
             priority: int = 1) -> dict:
    """A new message. `payload` is any JSON value (kept as JSON text) or None."""
    if kind not in KINDS:
        raise EnvelopeError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
    if role not in ROLES:
        raise EnvelopeError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    return {
        "id": new_id(),
        "session": session or new_id(),
        "reply_to": reply_to,
        "kind": kind,
        "sender": sender,
        "role": role,
        "content": content,
        "payload": None if payload is None else json.dumps(payload),
        "round": round,
        "priority": priority,
        "ts_ms": now_ms(),
    }


def task(sender: str, content: str, **kw) -> dict:
    return envelope("task", sender, "user", content, **kw)


def reply(to: dict, kind: str, sender: str, role: str, content: str, payload: Any = None) -> dict:
    """An answer to `to`: same session, round and priority, `reply_to` its id."""
    return envelope(kind, sender, role, content, session=to["session"], reply_to=to["id"],
                    payload=payload, round=to.get("round", 0), priority=to.get("priority", 1))


def error_reply(to: dict, sender: str, message: str, details: dict | None = None) -> dict:
    """An `error` envelope answering `to`, as the kernel's nodes send them."""
    d = dict(details or {})
    d.setdefault("input_kind", to.get("kind", "task"))
    return reply(to, "error", sender, "system", message, d)


def payload(msg: dict) -> Any:
    """The payload as a JSON value (None when there is none)."""
    p = msg.get("payload")
    return None if p is None else json.loads(p)


def to_arrow(batch: Iterable[dict]) -> pa.StructArray:
    """A batch of envelopes as one StructArray with the kernel's exact column types."""
    rows = []
    for i, m in enumerate(batch):
        missing = [k for k in REQUIRED if m.get(k) is None]
        if missing:
            raise EnvelopeError(f"row {i}: missing {', '.join(missing)}")
        rows.append({
            "id": m["id"], "session": m["session"], "reply_to": m.get("reply_to"),
            "kind": m["kind"], "sender": m.get("sender", ""), "role": m.get("role", "user"),
            "content": m["content"], "payload": m.get("payload"),
            "round": int(m.get("round", 0)), "priority": int(m.get("priority", 1)),
            "ts_ms": int(m.get("ts_ms", now_ms())),
        })
    return pa.array(rows, type=ARROW_TYPE)


def from_arrow(array: pa.Array, sender: str = "") -> list[dict]:
    """The envelopes in a batch. A string array is a list of user tasks (new sessions), as the
    kernel reads it. Anything else raises EnvelopeError naming the problem."""
    t = array.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        out = []
        for i, s in enumerate(array.to_pylist()):
            if s is None:
                raise EnvelopeError(f"row {i}: null text")
            out.append(task(sender, s))
        return out
    if not pa.types.is_struct(t):
        raise EnvelopeError(f"expected a StructArray of {SCHEMA} or a string array of tasks, got {t}")
    names = {t.field(i).name for i in range(t.num_fields)}
    missing = [k for k in REQUIRED if k not in names]
    if missing:
        raise EnvelopeError(f"not a {SCHEMA} struct: missing column {missing[0]!r}")
    out = []
    for i, row in enumerate(array.to_pylist()):
        for k in REQUIRED:
            if row.get(k) is None:
                raise EnvelopeError(f"row {i}: column {k!r} is null")
        if row["kind"] not in KINDS:
            raise EnvelopeError(f"row {i}: unknown kind {row['kind']!r}")
        m = {k: row.get(k) for k in FIELDS}
        m["sender"] = m["sender"] or sender
        m["role"] = m["role"] or "user"
        m["round"] = m["round"] or 0
        m["priority"] = 1 if m["priority"] is None else m["priority"]
        m["ts_ms"] = m["ts_ms"] or now_ms()
        out.append(m)
    return out


def bad_input_error(sender: str, input_id: str, err: Exception) -> dict:
    """The error envelope for a batch that could not be read (there is no message to answer)."""
    cause = envelope("control", sender, "system", f"input {input_id}")
    return error_reply(cause, sender, f"bad input on `{input_id}`: {err}", {"input": input_id})
