"""py_tools: a dora node (Python) that serves tools to MoFA agents, as mofa-tools does.

At start it publishes its catalog on `catalog` (kind `control`, content `catalog`, payload
`{"tools": [...]}` with each tool's JSON Schema). Each `tool_call` envelope arriving on an input
is answered on the output of the same name: a `tool_result` (content = the result as JSON) or,
for an unknown tool, bad arguments or a failing tool, an `error` envelope (also sent on
`error`). A batch that is not envelopes is reported on `error`; the node goes on.
"""

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mofa_envelope as env  # noqa: E402

NAME = "py_tools"


def word_count(text: str) -> dict:
    return {"words": len(text.split()), "characters": len(text)}


def slugify(text: str) -> dict:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return {"slug": slug}


TOOLS = {
    "word_count": (
        "Count the words and characters of a text.",
        {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        word_count,
    ),
    "slugify": (
        "Turn a title into a URL slug.",
        {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        slugify,
    ),
}


def catalog() -> dict:
    tools = [{"name": n, "description": d, "parameters": p} for n, (d, p, _) in TOOLS.items()]
    return env.envelope("control", NAME, "system", "catalog", payload={"tools": tools})


class CallError(Exception):
    pass


def check_args(schema: dict, args) -> None:
    if not isinstance(args, dict):
        raise CallError("invalid arguments: expected an object")
    for key in schema.get("required", []):
        if key not in args:
            raise CallError(f"invalid arguments: missing `{key}`")
    for key, value in args.items():
        want = schema["properties"].get(key)
        if want is None:
            raise CallError(f"invalid arguments: unknown parameter `{key}`")
        if want["type"] == "string" and not isinstance(value, str):
            raise CallError(f"invalid arguments: `{key}` must be a string")


def handle(call: dict) -> dict:
    """The answer to one tool call envelope (a tool_result, or an error envelope), or the
    catalog again to an agent that asks for it (its first copy can be lost between machines)."""
    if call["kind"] == "control" and call["content"] == "catalog":
        return catalog()
    if call["kind"] != "tool_call":
        return env.error_reply(call, NAME, f"a `{call['kind']}` envelope is not a tool call")
    name = call["content"] or "tool"
    try:
        p = env.payload(call) or {}
        name = p.get("name") or name
        args = p.get("arguments", {})
        if isinstance(args, str):
            args = json.loads(args or "{}")
        if name not in TOOLS:
            raise CallError(f"unknown tool `{name}`; available: {', '.join(TOOLS)}")
        _, schema, run = TOOLS[name]
        check_args(schema, args)
        result = run(**args)
    except (CallError, ValueError) as e:
        return env.error_reply(call, NAME, f"{name}: {e}")
    except Exception as e:  # a failing tool answers its call; the node goes on
        return env.error_reply(call, NAME, f"{name} failed: {e}")
    call_id = p.get("id", call["id"])
    return env.reply(call, "tool_result", NAME, "tool", json.dumps(result, separators=(",", ":")),
                     {"id": call_id, "name": name, "result": result})


def main(node=None) -> None:
    if node is None:
        from dora import Node

        node = Node()
    node.send_output("catalog", env.to_arrow([catalog()]), env.METADATA)
    for event in node:
        if event["type"] != "INPUT":
            continue
        input_id = event["id"]
        try:
            batch = env.from_arrow(event["value"], sender=input_id)
        except env.EnvelopeError as e:
            err = env.bad_input_error(NAME, input_id, e)
            node.send_output("error", env.to_arrow([err]), env.METADATA)
            continue
        for call in batch:
            answer = handle(call)
            node.send_output(input_id, env.to_arrow([answer]), env.METADATA)
            if answer["kind"] == "error":
                node.send_output("error", env.to_arrow([answer]), env.METADATA)


if __name__ == "__main__":
    main()
