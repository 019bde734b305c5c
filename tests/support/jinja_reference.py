"""The reference renderer for tests/templates.rs: Python's jinja2 set up as Hugging Face
transformers sets it up for chat templates (sandboxed ImmutableSandboxedEnvironment,
trim_blocks, lstrip_blocks, the loopcontrols extension, transformers' {% generation %} tag,
tojson as json.dumps without ASCII escaping, raise_exception, strftime_now), called as a
transformers caller calls it: tool-call arguments given as JSON strings (OpenAI form) are
parsed into objects first, and variables the caller does not give stay undefined.

stdin:  {"now": unix seconds, "templates": {name: source},
         "contexts": [{"messages", "tools"?, "add_generation_prompt", "bos_token", "eos_token"}]}
stdout: {name: [{"text": rendered} | {"error": message}, one per context]}
"""
import json
import sys
from datetime import datetime, timezone

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class AssistantTracker(Extension):
    """transformers' {% generation %}: renders its body (the real one also records where)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        call = self.call_method("_render", [])
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def environment(now):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[AssistantTracker, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    fixed = datetime.fromtimestamp(now, tz=timezone.utc)
    env.globals["strftime_now"] = lambda fmt: fixed.strftime(fmt)
    return env


def caller_messages(messages):
    out = []
    for m in messages:
        m = dict(m)
        if "tool_calls" in m:
            calls = []
            for c in m["tool_calls"]:
                c = json.loads(json.dumps(c))
                args = c["function"].get("arguments")
                if isinstance(args, str):
                    try:
                        c["function"]["arguments"] = json.loads(args)
                    except ValueError:
                        pass
                calls.append(c)
            m["tool_calls"] = calls
        out.append(m)
    return out


def main():
    request = json.load(sys.stdin)
    env = environment(request["now"])
    results = {}
    for name, source in request["templates"].items():
        outcomes = []
        try:
            template = env.from_string(source)
        except Exception as e:  # noqa: BLE001 - any failure is the answer
            results[name] = [{"error": f"compile: {e}"} for _ in request["contexts"]]
            continue
        for ctx in request["contexts"]:
            variables = dict(ctx)
            variables["messages"] = caller_messages(ctx["messages"])
            try:
                outcomes.append({"text": template.render(**variables)})
            except Exception as e:  # noqa: BLE001
                outcomes.append({"error": f"{type(e).__name__}: {e}"})
        results[name] = outcomes
    json.dump(results, sys.stdout, ensure_ascii=False)


main()
