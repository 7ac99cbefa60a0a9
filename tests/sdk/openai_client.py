"""The official OpenAI Python SDK, unchanged, pointed at tidegate (base_url = argv[1]).

With an https base_url, argv[2] is the PEM file of the test CA the SDK's HTTP client is to
trust (as a user's would trust their own CA): the SDK's default client, only its `verify` set.

Run by tests/it/openai_sdk.rs. Exits non-zero with a message on the first thing that is wrong.
"""
import ssl
import sys

import openai

base_url = sys.argv[1]
messages = [{"role": "user", "content": "Hello"}]
http_client = None
if base_url.startswith("https://"):
    trusted = ssl.create_default_context(cafile=sys.argv[2])
    http_client = openai.DefaultHttpxClient(verify=trusted)
# The client's key must not matter: the gateway sends its own upstream key.
client = openai.OpenAI(
    base_url=base_url, api_key="sk-client-side", max_retries=0, timeout=30, http_client=http_client
)

# 1. A streamed completion, with the usage chunk.
stream = client.chat.completions.create(
    model="mock-1",
    messages=messages,
    stream=True,
    stream_options={"include_usage": True},
    extra_headers={"x-mock-chunk-delay-ms": "1"},
)
text, usage, finish = "", None, None
for chunk in stream:
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = chunk.usage
assert text.strip(), "streamed some text"
assert finish == "stop", f"finish_reason stop, got {finish!r}"
assert usage is not None and usage.completion_tokens > 0, f"usage chunk, got {usage!r}"
print(f"streamed {len(text)} characters, usage {usage.total_tokens} tokens")

# 2. A non-streaming completion; the request id the SDK exposes is the gateway's.
completion = client.chat.completions.with_raw_response.create(model="mock-1", messages=messages)
assert completion.headers.get("x-request-id"), "x-request-id returned"
assert completion.parse().choices[0].message.content, "non-streaming content"

# 3. An upstream 429 arrives as RateLimitError, with the retry advice intact.
try:
    client.chat.completions.create(model="fail-429", messages=messages, stream=True)
    sys.exit("expected RateLimitError")
except openai.RateLimitError as e:
    assert e.status_code == 429
    assert e.response.headers.get("retry-after") == "1", dict(e.response.headers)
    assert e.response.headers.get("retry-after-ms") == "1000"
    print(f"RateLimitError as expected: {e.message}")

# 4. A failure mid-stream is raised by the SDK, not swallowed as a short answer.
try:
    for _ in client.chat.completions.create(
        model="fail-midstream", messages=messages, stream=True,
        extra_headers={"x-mock-chunk-delay-ms": "1"},
    ):
        pass
    sys.exit("expected an APIError mid-stream")
except openai.APIError as e:
    assert "upstream" in str(e).lower(), str(e)
    print(f"mid-stream APIError as expected: {e}")

# 5. A bad request is a BadRequestError with the parameter named.
try:
    client.chat.completions.create(model="mock-1", messages="not a list")
    sys.exit("expected BadRequestError")
except openai.BadRequestError as e:
    assert e.status_code == 400
    assert e.param == "messages", e.body

# 6. A slow upstream (no headers for 1.5 s, then a slow first token): the gateway answers early
#    and sends `: ping` heartbeats; the SDK ignores them and gets the same completion.
stream = client.chat.completions.create(
    model="mock-1",
    messages=messages,
    stream=True,
    extra_headers={
        "x-mock-headers-delay-ms": "1500",
        "x-mock-first-delay-ms": "1000",
        "x-mock-chunks": "3",
        "x-mock-chunk-delay-ms": "1",
    },
)
with stream:
    assert stream.response.headers.get("x-tidegate-stream-id"), "answered by the gateway early"
    chunks = [c for c in stream]
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text.strip(), "streamed some text after heartbeats"
assert chunks[-1].choices[0].finish_reason == "stop"
print(f"slow upstream with heartbeats: {len(chunks)} chunks")

# 7. An upstream error after the early answer is raised as an APIError carrying the
#    upstream's own message.
try:
    for _ in client.chat.completions.create(
        model="fail-429", messages=messages, stream=True,
        extra_headers={"x-mock-headers-delay-ms": "1500"},
    ):
        pass
    sys.exit("expected an APIError after the early answer")
except openai.APIError as e:
    assert "Rate limit reached" in str(e), str(e)
    print(f"APIError after the early answer as expected: {e}")

print("OK")
