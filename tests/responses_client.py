"""Drives a running sluice server's /v1/responses with the official openai client, as a
user would; any failed check raises. Run by tests/dialogue.rs:

    python responses_client.py BASE_URL MODEL
"""
import json
import sys

import urllib.error
import urllib.request
import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused")

# A plain answer: one message item whose text is output_text, usage as OpenAI counts it.
r = client.responses.create(model=model, input="Say hello.", instructions="Be brief.", max_output_tokens=8, temperature=0)
assert r.object == "response" and r.status == "incomplete", r
assert r.id.startswith("resp_"), r.id
assert r.incomplete_details.reason == "max_output_tokens", r
assert r.output[0].type == "message" and r.output[0].role == "assistant", r.output
assert r.output_text and r.output_text == r.output[0].content[0].text, r
assert r.usage.output_tokens == 8 and r.usage.total_tokens == r.usage.input_tokens + 8, r.usage
assert r.instructions == "Be brief." and r.max_output_tokens == 8, r

# The same request streamed: OpenAI's events, in order, adding up to the same text.
events = list(client.responses.create(model=model, input="Say hello.", instructions="Be brief.", max_output_tokens=8,
                                      temperature=0, stream=True))
types = [e.type for e in events]
assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"], types
assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.incomplete"], types
deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
assert len(deltas) >= 2 and "".join(deltas) == r.output_text, (deltas, r.output_text)
assert [e.sequence_number for e in events] == list(range(len(events))), events
assert events[-1].response.output_text == r.output_text

# Stored: GET gives it back, previous_response_id continues the conversation.
got = client.responses.retrieve(r.id)
assert got.id == r.id and got.output_text == r.output_text
follow = client.responses.create(model=model, input="Again.", previous_response_id=r.id, max_output_tokens=4, temperature=0)
assert follow.previous_response_id == r.id
assert follow.usage.input_tokens > r.usage.input_tokens + r.usage.output_tokens, (follow.usage, r.usage)

# text.format json_schema constrains the answer.
schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
j = client.responses.create(model=model, input="Is Paris in France? Answer as JSON.", max_output_tokens=30, temperature=0,
                            text={"format": {"type": "json_schema", "name": "yes", "schema": schema, "strict": True}})
assert j.status == "completed" and isinstance(json.loads(j.output_text)["ok"], bool), j.output_text

# A function tool: the (forced) call comes back as a function_call item.
tools = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
call_text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
regex = "".join("\\" + c if c in "\\.^$|?*+()[]{}/" else c for c in call_text)
c = client.responses.create(model=model, input="Weather in Paris?", tools=tools, max_output_tokens=60, temperature=0,
                            extra_body={"structured_outputs": {"regex": regex}})
calls = [o for o in c.output if o.type == "function_call"]
assert len(calls) == 1 and calls[0].name == "get_weather", c.output
assert json.loads(calls[0].arguments) == {"city": "Paris"}, calls[0].arguments
# Its output goes back as a function_call_output item.
back = client.responses.create(model=model, previous_response_id=c.id, max_output_tokens=4, temperature=0,
                               input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}])
assert back.status in ("completed", "incomplete"), back

# Streamed calls: the item is added, its arguments stream, then it is done.
events = list(client.responses.create(model=model, input="Weather in Paris?", tools=tools, max_output_tokens=60, temperature=0,
                                      stream=True, extra_body={"structured_outputs": {"regex": regex}}))
types = [e.type for e in events]
assert "response.function_call_arguments.delta" in types and "response.function_call_arguments.done" in types, types
args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
assert json.loads(args) == {"city": "Paris"}, args
assert types[-1] == "response.completed", types

# Unknown or lost ids are 404s in OpenAI's shape; DELETE removes a stored response.
for call in (lambda: client.responses.retrieve("resp_nope"),
             lambda: client.responses.create(model=model, input="x", previous_response_id="resp_nope")):
    try:
        call()
        raise AssertionError("a 404 was expected")
    except openai.NotFoundError as e:
        assert "resp_nope" in e.body["message"] and e.body["param"] in ("response_id", "previous_response_id"), e.body
# The store holds two (--responses-store-size 2): the first response is gone by now.
try:
    client.responses.retrieve(r.id)
    raise AssertionError("the oldest response should have left the store")
except openai.NotFoundError:
    pass
client.responses.delete(back.id)
try:
    client.responses.retrieve(back.id)
    raise AssertionError("deleted")
except openai.NotFoundError:
    pass

# Bad input: a 400 naming the field.
def post(body):
    req = urllib.request.Request(f"{base}/v1/responses", data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


status, e = post({"model": model, "input": [{"type": "web_search_call", "id": "x"}]})
assert status == 400 and e["error"]["param"] == "input[0].type", e
status, e = post({"model": model, "input": "x", "tools": [{"type": "web_search_preview"}]})
assert status == 400 and e["error"]["param"].startswith("tools"), e

# store: false is not kept.
n = client.responses.create(model=model, input="Hi", max_output_tokens=2, store=False)
try:
    client.responses.retrieve(n.id)
    raise AssertionError("store: false should not be kept")
except openai.NotFoundError:
    pass
print("ok")
