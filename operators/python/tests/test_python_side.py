"""Unit tests of the Python side without a daemon (dora.testing.MockNode for the node).
Run: .venv/bin/python -m unittest discover operators/python/tests"""

import json
import os
import sys
import unittest

import pyarrow as pa

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import guard  # noqa: E402
import mofa_envelope as env  # noqa: E402
import py_tools  # noqa: E402
from dora.testing import MockNode  # noqa: E402


class EnvelopeTest(unittest.TestCase):
    def test_a_batch_survives_arrow_with_the_kernels_types(self):
        t = env.task("me", "hello", priority=3)
        r = env.reply(t, "result", "you", "assistant", "hi", {"n": 1})
        arr = env.to_arrow([t, r])
        self.assertEqual(arr.type, env.ARROW_TYPE)
        self.assertEqual(arr.type.field("round").type, pa.uint32())
        back = env.from_arrow(arr)
        self.assertEqual(back, [t, r])
        self.assertEqual(back[1]["reply_to"], t["id"])
        self.assertEqual(env.payload(back[1]), {"n": 1})

    def test_plain_strings_are_tasks_and_bad_batches_say_why(self):
        tasks = env.from_arrow(pa.array(["a", "b"]), sender="hub")
        self.assertEqual([(m["kind"], m["content"], m["sender"]) for m in tasks],
                         [("task", "a", "hub"), ("task", "b", "hub")])
        with self.assertRaisesRegex(env.EnvelopeError, "got int64"):
            env.from_arrow(pa.array([1, 2]))
        with self.assertRaisesRegex(env.EnvelopeError, "missing column 'session'"):
            env.from_arrow(pa.array([{"id": "1", "kind": "task", "content": "x"}]))
        with self.assertRaisesRegex(env.EnvelopeError, "unknown kind 'shout'"):
            env.from_arrow(pa.array([{"id": "1", "session": "s", "kind": "shout", "content": "x"}]))
        with self.assertRaisesRegex(env.EnvelopeError, "row 0: missing"):
            env.to_arrow([{"id": "1"}])


class GuardTest(unittest.TestCase):
    def run_guard(self, value, block="wire money"):
        os.environ["MOFA_GUARD_BLOCK"] = block
        sent = []
        op = guard.Operator()
        op.on_event({"type": "INPUT", "id": "in", "value": value, "metadata": {}},
                    lambda out, arr, meta: sent.append((out, env.from_arrow(arr), meta)))
        return sent

    def test_personal_data_is_redacted_and_the_message_goes_on(self):
        t = env.task("src", "Mail ada@example.org or call +44 20 7946 0958 about otters")
        [(out, [m], meta)] = self.run_guard(env.to_arrow([t]))
        self.assertEqual(out, "out")
        self.assertEqual(m["content"], "Mail [email] or call [phone] about otters")
        self.assertEqual((m["id"], m["session"]), (t["id"], t["session"]))
        self.assertEqual(meta, env.METADATA)

    def test_a_blocked_phrase_is_answered_on_blocked(self):
        t = env.task("src", "Please WIRE MONEY to me")
        [(out, [m], _)] = self.run_guard(env.to_arrow([t]))
        self.assertEqual(out, "blocked")
        self.assertEqual((m["kind"], m["reply_to"]), ("result", t["id"]))
        self.assertIn("wire money", m["content"])

    def test_a_bad_batch_is_an_error_envelope(self):
        [(out, [m], _)] = self.run_guard(pa.array([1.5]))
        self.assertEqual((out, m["kind"]), ("error", "error"))
        self.assertIn("bad input on `in`", m["content"])


class PyToolsTest(unittest.TestCase):
    def call(self, name, args):
        t = env.task("src", "q")
        return env.reply(t, "tool_call", "agent", "assistant", name,
                         {"id": "call_1", "name": name, "arguments": json.dumps(args)})

    def test_catalog_then_answers_on_the_input_they_came_in_on(self):
        good = self.call("word_count", {"text": "sea otters hold hands"})
        unknown = self.call("teleport", {})
        bad = self.call("slugify", {"text": 3})
        node = MockNode([("agent", env.to_arrow([good, unknown])),
                         ("agent", pa.array([7])),
                         ("agent", env.to_arrow([bad]))])
        py_tools.main(node)
        [catalog] = env.from_arrow(node.outputs["catalog"][0])
        self.assertEqual([t["name"] for t in env.payload(catalog)["tools"]],
                         ["word_count", "slugify"])
        answers = [m for a in node.outputs["agent"] for m in env.from_arrow(a)]
        self.assertEqual([a["reply_to"] for a in answers], [good["id"], unknown["id"], bad["id"]])
        self.assertEqual(answers[0]["kind"], "tool_result")
        self.assertEqual(env.payload(answers[0])["result"], {"words": 4, "characters": 21})
        self.assertIn("unknown tool `teleport`", answers[1]["content"])
        self.assertIn("`text` must be a string", answers[2]["content"])
        errors = [m for a in node.outputs["error"] for m in env.from_arrow(a)]
        self.assertEqual(len(errors), 3, errors)  # the two failed calls and the bad batch
        self.assertTrue(any("bad input on `agent`" in e["content"] for e in errors))

    def test_an_agent_asking_for_the_catalog_gets_it_on_its_input(self):
        ask = env.envelope("control", "agent", "system", "catalog")
        node = MockNode([("agent", env.to_arrow([ask]))])
        py_tools.main(node)
        [again] = [m for a in node.outputs["agent"] for m in env.from_arrow(a)]
        self.assertEqual((again["kind"], again["content"]), ("control", "catalog"))
        self.assertEqual(len(env.payload(again)["tools"]), 2)
        self.assertNotIn("error", node.outputs)


if __name__ == "__main__":
    unittest.main()
