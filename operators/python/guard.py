"""guard: a dora operator (Python) in front of the agents.

Every message on `in` either goes on to `out` with personal data redacted (e-mail addresses
and phone numbers become [email] and [phone]), or, when it contains a blocked phrase, is
answered on `blocked` with a `result` envelope saying why and goes no further. A batch that is
not envelopes becomes an `error` envelope; the operator goes on.

Env: MOFA_GUARD_BLOCK (comma-separated phrases, matched case-insensitively).
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dora import DoraStatus  # noqa: E402

import mofa_envelope as env  # noqa: E402

NAME = "guard"
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
PHONE = re.compile(r"\+?\d[\d ()-]{7,}\d")


def blocked_phrases() -> list:
    raw = os.environ.get("MOFA_GUARD_BLOCK", "")
    return [p.strip().lower() for p in raw.split(",") if p.strip()]


def redact(text: str) -> tuple:
    """The text with personal data replaced, and how many replacements were made."""
    text, emails = EMAIL.subn("[email]", text)
    text, phones = PHONE.subn("[phone]", text)
    return text, emails + phones


def check(msg: dict, phrases: list) -> tuple:
    """(output, envelope) for one message."""
    lowered = msg["content"].lower()
    for phrase in phrases:
        if phrase in lowered:
            answer = env.reply(msg, "result", NAME, "assistant",
                               f"blocked: the message contains “{phrase}”",
                               {"blocked": phrase})
            return "blocked", answer
    content, n = redact(msg["content"])
    if n:
        msg = dict(msg, content=content)
    return "out", msg


class Operator:
    def __init__(self):
        self.phrases = blocked_phrases()

    def on_event(self, dora_event, send_output):
        if dora_event["type"] != "INPUT":
            return DoraStatus.CONTINUE
        try:
            batch = env.from_arrow(dora_event["value"], sender="source")
        except env.EnvelopeError as e:
            err = env.bad_input_error(NAME, dora_event["id"], e)
            send_output("error", env.to_arrow([err]), env.METADATA)
            return DoraStatus.CONTINUE
        for msg in batch:
            try:
                output, out = check(msg, self.phrases)
            except Exception as e:  # a fault in the guard answers the message, never kills it
                output, out = "error", env.error_reply(msg, NAME, f"guard failed: {e}")
            send_output(output, env.to_arrow([out]), env.METADATA)
        return DoraStatus.CONTINUE
