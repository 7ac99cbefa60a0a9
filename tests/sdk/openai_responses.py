"""The official OpenAI Python SDK's Responses API, unchanged, pointed at tidegate.

    python3 openai_responses.py BASE_URL CHUNKS EXPECTED_TEXT [--direct]

BASE_URL is the gateway's `/v1`; CHUNKS the number of text deltas the mock is asked for (the
`x-mock-chunks` header, also the answer's output_tokens); EXPECTED_TEXT the text those chunks
carry (`tidegate::mock::expected_content(CHUNKS)`). `--direct` says BASE_URL is the bare mock,
not the gateway: the final `error` events the gateway adds to broken streams are then absent,
and the script checks (and prints) what the SDK does without them instead.

Run by tests/it/openai_sdk.rs. Exits non-zero with a message on the first thing that is wrong;
prints what it checked as it goes, and OK at the end.
"""
import json
import sys
import time

import openai
from openai.types.responses import ResponseCompletedEvent, ResponseCreatedEvent, ResponseTextDeltaEvent

args = [a for a in sys.argv[1:] if a != "--direct"]
direct = "--direct" in sys.argv[1:]
if len(args) != 3:
    sys.exit(__doc__)
base_url, chunks, expected = args[0], int(args[1]), args[2]

# Fast answers of the wanted length; the mock reads these per request (the gateway forwards
# x-mock-* to it as in the demo).
FAST = {"x-mock-chunk-delay-ms": "1", "x-mock-chunks": str(chunks)}
EVENT_CLASSES = {
    "response.created": ResponseCreatedEvent,
    "response.output_text.delta": ResponseTextDeltaEvent,
    "response.completed": ResponseCompletedEvent,
}
TERMINAL = {"response.completed", "response.failed", "response.incomplete"}
NORMAL_TYPES = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * chunks,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]

# The client's key must not matter: the gateway sends its own upstream key.
client = openai.OpenAI(
    base_url=base_url, api_key="sk-client-side", max_retries=0, timeout=30, default_headers=FAST
)


def check(condition, message):
    if not condition:
        sys.exit(f"FAILED: {message}")


def check_sequence(events, what, first=None):
    numbers = [e.sequence_number for e in events]
    check(numbers, f"{what}: no events")
    if first is not None:
        check(numbers[0] == first, f"{what}: first sequence_number {numbers[0]}, want {first}")
    check(
        numbers == list(range(numbers[0], numbers[0] + len(numbers))),
        f"{what}: sequence numbers do not rise by 1: {numbers}",
    )


def check_usage(usage, what):
    check(usage is not None, f"{what}: no usage")
    check(usage.output_tokens == chunks, f"{what}: output_tokens {usage.output_tokens}, want {chunks}")
    check(usage.input_tokens > 0, f"{what}: input_tokens {usage.input_tokens}")
    check(
        usage.total_tokens == usage.input_tokens + usage.output_tokens,
        f"{what}: total_tokens {usage.total_tokens} is not input + output",
    )


def raw_events(model):
    """The stream's SSE events as sent, (event name, data dict), read through the SDK's raw
    response: what the typed iteration hides once it raises."""
    events = []
    with client.responses.with_streaming_response.create(
        model=model, input="Hello", stream=True
    ) as response:
        check(response.status_code == 200, f"{model}: status {response.status_code}")
        name, data = None, []
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line[len("event:"):].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:"):].strip())
            elif line == "" and data:
                events.append((name, json.loads("\n".join(data))))
                name, data = None, []
        if data:
            events.append((name, json.loads("\n".join(data))))
    for name, data in events:
        check(name == data.get("type"), f"{model}: `event: {name}` carries type {data.get('type')!r}")
    return events


def expect_stream_error(model, code):
    """Iterates `model`'s stream with the SDK; it must raise APIError with `code` after the
    first events, and not time out or break as a connection error. Returns the error and the
    events seen before it."""
    seen = []
    try:
        for event in client.responses.create(model=model, input="Hello", stream=True):
            seen.append(event)
        sys.exit(f"FAILED: {model}: the stream ended without an error after {[e.type for e in seen]}")
    except openai.APIConnectionError as e:
        sys.exit(f"FAILED: {model}: a connection error, not the gateway's error event: {e!r}")
    except openai.APIError as e:
        check(e.code == code, f"{model}: APIError code {e.code!r}, want {code!r}; body {e.body!r}")
        check(isinstance(e.body, dict) and e.body.get("message") == e.message, f"{model}: body {e.body!r}")
        check(e.message, f"{model}: APIError without a message")
        check([x.type for x in seen[:2]] == ["response.created", "response.in_progress"], f"{model}: {seen}")
        check(not any(x.type in TERMINAL for x in seen), f"{model}: a terminal event before the error")
        check_sequence(seen, model, first=0)
        return e, seen


# 1. A streamed response: typed events in order, sequence numbers 0, 1, 2, ..., the deltas
#    are the answer, the terminal event carries the usage.
events = list(client.responses.create(model="mock-1", input="Hello", stream=True))
types = [e.type for e in events]
check(types == NORMAL_TYPES, f"stream: event types {types}")
check_sequence(events, "stream", first=0)
for e in events:
    # The SDK's typed event for each type, e.g. ResponseTextDeltaEvent for response.output_text.delta.
    check(type(e) is EVENT_CLASSES.get(e.type, type(e)), f"stream: {e.type} parsed as {type(e).__name__}")
text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
check(text == expected, f"stream: deltas {text!r}, want {expected!r}")
done = next(e for e in events if e.type == "response.output_text.done")
check(done.text == expected, f"stream: output_text.done text {done.text!r}")
completed = events[-1].response
check(completed.status == "completed", f"stream: final status {completed.status!r}")
check(completed.id == events[0].response.id, "stream: the same response id throughout")
check(completed.output_text == expected, f"stream: completed output_text {completed.output_text!r}")
check_usage(completed.usage, "stream")
print(f"stream: {len(events)} events, {len(text)} characters, usage {completed.usage.total_tokens} tokens")

# 2. The streaming helper: it assembles the response from the events.
with client.responses.stream(model="mock-1", input="Hello") as stream:
    snapshots = [e.snapshot for e in stream if e.type == "response.output_text.delta"]
    final = stream.get_final_response()
check(len(snapshots) == chunks and snapshots[-1] == expected, f"helper: delta snapshots {snapshots}")
check(final.output_text == expected, f"helper: output_text {final.output_text!r}")
check(final.status == "completed", f"helper: status {final.status!r}")
check_usage(final.usage, "helper")
with client.responses.stream(model="mock-1", input="Hello") as stream:
    final_again = stream.until_done().get_final_response()
check(final_again.output_text == expected, "helper: until_done() then get_final_response()")
print(f"responses.stream(): get_final_response().output_text is the answer ({len(snapshots)} deltas)")

# 3. Not streamed: the JSON passes through.
response = client.responses.with_raw_response.create(model="mock-1", input="Hello")
check(response.headers.get("x-request-id"), "create: x-request-id from the gateway")
response = response.parse()
check(response.output_text == expected, f"create: output_text {response.output_text!r}")
check(response.status == "completed", f"create: status {response.status!r}")
check_usage(response.usage, "create")
print(f"create(): output_text is the answer, id {response.id}")

# 4. An upstream 429 before the stream is a RateLimitError.
try:
    client.responses.create(model="fail-429", input="Hello", stream=True)
    sys.exit("FAILED: fail-429: expected RateLimitError")
except openai.RateLimitError as e:
    check(e.status_code == 429, f"fail-429: status {e.status_code}")
    print("fail-429: RateLimitError")

# 5. Broken streams. Through the gateway each ends with exactly one `event: error`, which the
#    SDK raises as APIError carrying the code; the bare mock's show what the SDK does alone.
if direct:
    events = list(client.responses.create(model="fail-no-done", input="Hello", stream=True))
    check(events[-1].type == "response.output_item.done", f"fail-no-done: {[e.type for e in events]}")
    print(f"fail-no-done (bare mock): the SDK ends the iteration quietly after {events[-1].type}")
    try:
        for _ in client.responses.create(model="fail-midstream", input="Hello", stream=True):
            pass
        sys.exit("FAILED: fail-midstream (bare mock): the SDK took a cut stream for a whole one")
    except openai.APIConnectionError as e:
        print(f"fail-midstream (bare mock): {type(e).__name__}: {e}")
else:
    for model, code in [("fail-no-done", "upstream_incomplete_stream"), ("fail-midstream", "upstream_reset")]:
        error, seen = expect_stream_error(model, code)
        raw = raw_events(model)
        errors = [data for name, data in raw if name == "error"]
        check(len(errors) == 1 and raw[-1][0] == "error", f"{model}: one final error event, got {raw}")
        last = raw[-1][1]
        check(last["sequence_number"] == raw[-2][1]["sequence_number"] + 1, f"{model}: error event {last}")
        check(last["code"] == code and last["error"]["code"] == code, f"{model}: error event {last}")
        check(last["message"] == last["error"]["message"] and last["param"] is None, f"{model}: {last}")
        print(f"{model}: APIError {error.code!r} after {len(seen)} events: {error.message}")
        #  The helper raises the same APIError (from its iteration or get_final_response()).
        try:
            with client.responses.stream(model=model, input="Hello") as stream:
                stream.get_final_response()
            sys.exit(f"FAILED: {model}: responses.stream() assembled a broken stream")
        except openai.APIError as e:
            check(e.code == code and not isinstance(e, openai.APIConnectionError), f"{model}: helper {e!r}")

#    The upstream's own error event is the only one: the gateway adds none.
error, seen = expect_stream_error("fail-error-event", "server_error")
if not direct:
    raw = raw_events("fail-error-event")
    check([n for n, _ in raw].count("error") == 1 and raw[-1][0] == "error", f"fail-error-event: {raw}")
print(f"fail-error-event: the upstream's APIError {error.code!r}: {error.message}")

# 6. `response.failed` is an ordinary event to the SDK: the iteration ends with it, no raise.
events = list(client.responses.create(model="fail-response-failed", input="Hello", stream=True))
check(events[-1].type == "response.failed", f"fail-response-failed: {[e.type for e in events]}")
check_sequence(events, "fail-response-failed", first=0)
failed = events[-1].response
check(failed.status == "failed" and failed.error is not None, f"fail-response-failed: {failed!r}")
print(f"fail-response-failed: the stream ends with response.failed ({failed.error.code}: {failed.error.message})")
#    The helper yields it too; get_final_response() wants response.completed and raises a
#    RuntimeError (not an APIError).
with client.responses.stream(model="fail-response-failed", input="Hello") as stream:
    helper_events = list(stream)
    check(helper_events[-1].type == "response.failed", f"helper: {[e.type for e in helper_events]}")
    partial = helper_events[-1].response.output_text
    try:
        stream.get_final_response()
        sys.exit("FAILED: helper: get_final_response() returned for a failed response")
    except RuntimeError as e:
        print(f"fail-response-failed: helper yields response.failed (output_text {partial!r}); "
              f"get_final_response() raises RuntimeError: {e}")

# 7. Stored responses through the retrieval routes.
stream_events = list(client.responses.create(model="mock-1", input="Hello from retrieval", stream=True))
response_id = stream_events[0].response.id
retrieved = client.responses.retrieve(response_id)
check(retrieved.id == response_id and retrieved.status == "completed", f"retrieve: {retrieved!r}")
check(retrieved.output_text == expected, f"retrieve: output_text {retrieved.output_text!r}")
print(f"retrieve({response_id}): completed, output_text is the answer")

after = 3
replay = list(client.responses.retrieve(response_id, stream=True, starting_after=after))
check(
    [e.type for e in replay] == NORMAL_TYPES[after + 1:],
    f"retrieve(stream, starting_after={after}): {[e.type for e in replay]}",
)
check_sequence(replay, "replay", first=after + 1)
replayed_text = "".join(e.delta for e in replay if e.type == "response.output_text.delta")
check(replayed_text == expected, f"replay: deltas {replayed_text!r}")
print(f"retrieve(stream=True, starting_after={after}): {len(replay)} events from {replay[0].sequence_number}")

#    The helper replays from the start (it needs response.created) and filters locally.
with client.responses.stream(response_id=response_id, starting_after=after) as stream:
    helper_replay = list(stream)
    final = stream.get_final_response()
check(helper_replay[0].sequence_number == after + 1, f"helper replay: {helper_replay[0]}")
check(final.output_text == expected, f"helper replay: output_text {final.output_text!r}")
print("responses.stream(response_id=..., starting_after=...): the same answer")

items = client.responses.input_items.list(response_id)
check(len(items.data) == 1, f"input_items: {items.data!r}")
item = items.data[0]
check(item.type == "message" and item.role == "user", f"input_items: {item!r}")
check(item.content[0].text == "Hello from retrieval", f"input_items: {item.content!r}")
print(f"input_items.list(): the input message {item.id}")

#    Cancelling: a background response can be (the mock answers it at once, completed, and
#    marks it cancelled when asked); an ordinary one cannot.
background = client.responses.create(model="mock-1", input="Hello", background=True)
check(background.background is True, f"background: {background!r}")
cancelled = client.responses.cancel(background.id)
check(cancelled.id == background.id and cancelled.status == "cancelled", f"cancel: {cancelled!r}")
check(client.responses.retrieve(background.id).status == "cancelled", "cancel: retrieved afterwards")
print(f"cancel({background.id}): cancelled (was {background.status})")
try:
    client.responses.cancel(response_id)
    sys.exit("FAILED: cancel of a response not in the background: expected BadRequestError")
except openai.BadRequestError as e:
    print(f"cancel({response_id}) (not background): BadRequestError: {e.message}")

check(client.responses.delete(response_id) is None, "delete returns None")
try:
    client.responses.retrieve(response_id)
    sys.exit("FAILED: retrieve after delete: expected NotFoundError")
except openai.NotFoundError as e:
    check(e.status_code == 404, f"retrieve after delete: {e.status_code}")
    print(f"delete({response_id}), then retrieve: NotFoundError")

# Last: a client that goes away. The SDK closes its connection when the stream is closed
# mid-way; the gateway cancels the upstream request (tests/it/openai_sdk.rs then checks the
# mock saw its stream cancelled).
slow = {"x-mock-chunks": "1000", "x-mock-chunk-delay-ms": "50"}
with client.responses.create(model="mock-1", input="Hello", stream=True, extra_headers=slow) as stream:
    seen = 0
    for event in stream:
        seen += 1
        if event.type == "response.output_text.delta":
            break
check(seen >= 5, f"went away after {seen} events")
print(f"went away after {seen} events, the first delta among them")
print("OK")
