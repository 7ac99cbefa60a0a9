"""The official OpenAI Python SDK against the gateway's own per-address rate limit
(base_url = argv[1]; the gateway allows 1 request a second, burst 1).

Run by tests/it/openai_sdk.rs. The SDK must see a RateLimitError with the gateway's advice, and
its own retry must wait as long as advised (retry-after-ms) and then succeed on the first retry.
"""
import sys
import time

import openai

base_url = sys.argv[1]
messages = [{"role": "user", "content": "Hello"}]
strict = openai.OpenAI(base_url=base_url, api_key="sk-client-side", max_retries=0, timeout=30)
patient = openai.OpenAI(base_url=base_url, api_key="sk-client-side", max_retries=3, timeout=30)

# 1. The one request of the burst.
strict.chat.completions.create(model="mock-1", messages=messages)

# 2. At once again: refused, with the advice the SDK reads.
try:
    strict.chat.completions.create(model="mock-1", messages=messages)
    sys.exit("the second request within the second was not refused")
except openai.RateLimitError as e:
    assert e.status_code == 429, e.status_code
    assert e.code == "rate_limit_exceeded", e.code
    wait_ms = int(e.response.headers["retry-after-ms"])
    assert 0 < wait_ms <= 1000, wait_ms
    print(f"refused: retry after {wait_ms} ms")

# 3. The SDK's own retry waits as advised, so its first retry succeeds.
started = time.monotonic()
raw = patient.chat.completions.with_raw_response.create(model="mock-1", messages=messages)
elapsed = time.monotonic() - started
assert raw.parse().choices[0].message.content, "content after the retry"
assert raw.retries_taken == 1, f"one retry, not {raw.retries_taken}"
print(f"answered after {raw.retries_taken} retry in {elapsed:.3f} s")
print("OK")
