// The official OpenAI Node SDK's Responses API, unchanged, pointed at tidegate.
//
//     node responses.mjs BASE_URL CHUNKS EXPECTED_TEXT [--direct]
//
// BASE_URL is the gateway's `/v1`; CHUNKS the number of text deltas the mock is asked for (the
// `x-mock-chunks` header, also the answer's output_tokens); EXPECTED_TEXT the text those chunks
// carry (`tidegate::mock::expected_content(CHUNKS)`). `--direct` says BASE_URL is the bare mock,
// not the gateway: the final `error` events the gateway adds to broken streams are then absent,
// and the script checks (and prints) what the SDK does without them instead.
//
// Run by tests/it/openai_sdk.rs (after `npm ci` here). Exits non-zero with a message on the
// first thing that is wrong; prints what it checked as it goes, and OK at the end.
import OpenAI, { APIConnectionError, APIError, NotFoundError, RateLimitError } from 'openai';

const args = process.argv.slice(2).filter((a) => a !== '--direct');
const direct = process.argv.includes('--direct');
if (args.length !== 3) {
  console.error('usage: node responses.mjs BASE_URL CHUNKS EXPECTED_TEXT [--direct]');
  process.exit(2);
}
const [baseURL, chunkArg, expected] = args;
const chunks = Number(chunkArg);

const normalTypes = [
  'response.created',
  'response.in_progress',
  'response.output_item.added',
  'response.content_part.added',
  ...Array(chunks).fill('response.output_text.delta'),
  'response.output_text.done',
  'response.content_part.done',
  'response.output_item.done',
  'response.completed',
];
const terminal = new Set(['response.completed', 'response.failed', 'response.incomplete']);

// The client's key must not matter: the gateway sends its own upstream key. x-mock-* asks the
// mock (through the gateway, which forwards them as in the demo) for fast answers of CHUNKS.
const client = new OpenAI({
  baseURL,
  apiKey: 'sk-client-side',
  maxRetries: 0,
  timeout: 30_000,
  defaultHeaders: { 'x-mock-chunk-delay-ms': '1', 'x-mock-chunks': String(chunks) },
});

function fail(message) {
  console.error(`FAILED: ${message}`);
  process.exit(1);
}

function check(condition, message) {
  if (!condition) fail(message);
}

function checkSequence(events, what, first) {
  const numbers = events.map((e) => e.sequence_number);
  check(numbers.length > 0, `${what}: no events`);
  check(numbers[0] === first, `${what}: first sequence_number ${numbers[0]}, want ${first}`);
  check(
    numbers.every((n, i) => n === first + i),
    `${what}: sequence numbers do not rise by 1: ${numbers}`,
  );
}

function checkUsage(usage, what) {
  check(usage, `${what}: no usage`);
  check(usage.output_tokens === chunks, `${what}: output_tokens ${usage.output_tokens}, want ${chunks}`);
  check(usage.input_tokens > 0, `${what}: input_tokens ${usage.input_tokens}`);
  check(
    usage.total_tokens === usage.input_tokens + usage.output_tokens,
    `${what}: total_tokens ${usage.total_tokens} is not input + output`,
  );
}

const input = 'Hello';

// 1. A streamed response: events in order, sequence numbers 0, 1, 2, ..., the deltas are the
//    answer, the terminal event carries the usage.
{
  const events = [];
  for await (const event of await client.responses.create({ model: 'mock-1', input, stream: true })) {
    events.push(event);
  }
  const types = events.map((e) => e.type);
  check(JSON.stringify(types) === JSON.stringify(normalTypes), `stream: event types ${types}`);
  checkSequence(events, 'stream', 0);
  const text = events
    .filter((e) => e.type === 'response.output_text.delta')
    .map((e) => e.delta)
    .join('');
  check(text === expected, `stream: deltas ${JSON.stringify(text)}, want ${JSON.stringify(expected)}`);
  const completed = events.at(-1).response;
  check(completed.status === 'completed', `stream: final status ${completed.status}`);
  check(completed.id === events[0].response.id, 'stream: the same response id throughout');
  checkUsage(completed.usage, 'stream');
  console.log(`stream: ${events.length} events, ${text.length} characters, usage ${completed.usage.total_tokens} tokens`);
}

// 2. The streaming helper: it assembles the response from the events.
{
  const stream = client.responses.stream({ model: 'mock-1', input });
  const deltas = [];
  stream.on('response.output_text.delta', (event) => deltas.push(event.snapshot));
  const final = await stream.finalResponse();
  check(deltas.length === chunks && deltas.at(-1) === expected, `helper: delta snapshots ${deltas}`);
  check(final.output_text === expected, `helper: output_text ${JSON.stringify(final.output_text)}`);
  check(final.status === 'completed', `helper: status ${final.status}`);
  checkUsage(final.usage, 'helper');
  console.log(`responses.stream(): finalResponse().output_text is the answer (${deltas.length} deltas)`);
}

// 3. Not streamed: the JSON passes through.
{
  const { data: response, response: raw } = await client.responses
    .create({ model: 'mock-1', input })
    .withResponse();
  check(raw.headers.get('x-request-id'), 'create: x-request-id from the gateway');
  check(response.output_text === expected, `create: output_text ${JSON.stringify(response.output_text)}`);
  check(response.status === 'completed', `create: status ${response.status}`);
  checkUsage(response.usage, 'create');
  console.log(`create(): output_text is the answer, id ${response.id}`);
}

// 4. A stream without its terminal event. Through the gateway it ends with one `event: error`
//    (code upstream_incomplete_stream) that the SDK throws as APIError; the helper's
//    finalResponse() rejects with the same. Without the gateway the SDK ends it quietly.
{
  const seen = [];
  let error;
  try {
    for await (const event of await client.responses.create({ model: 'fail-no-done', input, stream: true })) {
      seen.push(event);
    }
  } catch (e) {
    error = e;
  }
  check(!seen.some((e) => terminal.has(e.type)), `fail-no-done: a terminal event in ${seen.map((e) => e.type)}`);
  checkSequence(seen, 'fail-no-done', 0);
  let helperResult;
  try {
    helperResult = await client.responses.stream({ model: 'fail-no-done', input }).finalResponse();
  } catch (e) {
    helperResult = e;
  }
  if (direct) {
    check(error === undefined, `fail-no-done (bare mock): ${error}`);
    check(
      helperResult.status === 'in_progress',
      `fail-no-done (bare mock): helper ${helperResult?.status ?? helperResult}`,
    );
    console.log(
      `fail-no-done (bare mock): the iteration ends quietly after ${seen.at(-1).type}; ` +
        `finalResponse() resolves with status ${helperResult.status}, output_text ${JSON.stringify(helperResult.output_text)}`,
    );
  } else {
    check(error !== undefined, `fail-no-done: the stream ended without an error after ${seen.map((e) => e.type)}`);
    check(error instanceof APIError, `fail-no-done: not an APIError: ${error?.constructor?.name} ${error}`);
    check(!(error instanceof APIConnectionError), `fail-no-done: a connection error: ${error}`);
    check(error.code === 'upstream_incomplete_stream', `fail-no-done: code ${error.code}, ${JSON.stringify(error.error)}`);
    check(
      helperResult instanceof APIError && helperResult.code === 'upstream_incomplete_stream',
      `fail-no-done: helper ${helperResult?.status ?? helperResult}`,
    );
    console.log(`fail-no-done: APIError ${error.code} after ${seen.length} events: ${error.message}`);
  }
}

// 4b. An upstream cut mid-stream. Through the gateway: APIError upstream_reset, both ways.
//     Without it, undici's own TypeError('terminated') escapes the iteration, not an APIError.
{
  const readAll = async () => {
    try {
      for await (const _ of await client.responses.create({ model: 'fail-midstream', input, stream: true }));
    } catch (e) {
      return e;
    }
  };
  const error = await readAll();
  const helperError = await client.responses
    .stream({ model: 'fail-midstream', input })
    .finalResponse()
    .then((r) => r, (e) => e);
  if (direct) {
    check(error instanceof Error && !(error instanceof APIError), `fail-midstream (bare mock): ${error}`);
    console.log(
      `fail-midstream (bare mock): the iteration throws ${error.constructor.name}: ${error.message}; ` +
        `finalResponse() rejects with ${helperError.constructor.name}: ${helperError.message}`,
    );
  } else {
    check(
      error instanceof APIError && error.code === 'upstream_reset',
      `fail-midstream: ${error?.constructor?.name} ${error}`,
    );
    check(
      helperError instanceof APIError && helperError.code === 'upstream_reset',
      `fail-midstream: helper ${helperError?.constructor?.name} ${helperError}`,
    );
    console.log(`fail-midstream: APIError ${error.code}: ${error.message}`);
  }
}

// 5. The upstream's own error event: thrown with its code, by both ways of reading.
{
  let error;
  try {
    for await (const _ of await client.responses.create({ model: 'fail-error-event', input, stream: true }));
  } catch (e) {
    error = e;
  }
  check(error instanceof APIError && error.code === 'server_error', `fail-error-event: ${error}`);
  const helperError = await client.responses
    .stream({ model: 'fail-error-event', input })
    .finalResponse()
    .then((r) => r, (e) => e);
  check(helperError instanceof APIError && helperError.code === 'server_error', `fail-error-event: helper ${helperError}`);
  console.log(`fail-error-event: the upstream's APIError ${error.code}: ${error.message}`);
}

// 6. response.failed: an ordinary last event to the iteration; the helper resolves with it.
{
  const events = [];
  for await (const event of await client.responses.create({ model: 'fail-response-failed', input, stream: true })) {
    events.push(event);
  }
  check(events.at(-1).type === 'response.failed', `fail-response-failed: ${events.map((e) => e.type)}`);
  const failed = events.at(-1).response;
  check(failed.status === 'failed' && failed.error, `fail-response-failed: ${JSON.stringify(failed)}`);
  const final = await client.responses.stream({ model: 'fail-response-failed', input }).finalResponse();
  check(final.status === 'failed', `fail-response-failed: helper status ${final.status}`);
  console.log(
    `fail-response-failed: the stream ends with response.failed (${failed.error.code}); ` +
      `finalResponse() resolves with status ${final.status}, output_text ${JSON.stringify(final.output_text)}`,
  );
}

// 7. A stored response: retrieve it, replay its stream after an event, delete it.
{
  const events = [];
  for await (const event of await client.responses.create({ model: 'mock-1', input, stream: true })) {
    events.push(event);
  }
  const id = events[0].response.id;
  const retrieved = await client.responses.retrieve(id);
  check(retrieved.id === id && retrieved.status === 'completed', `retrieve: ${JSON.stringify(retrieved)}`);
  check(retrieved.output_text === expected, `retrieve: output_text ${JSON.stringify(retrieved.output_text)}`);

  const after = 3;
  const replay = [];
  for await (const event of await client.responses.retrieve(id, { stream: true, starting_after: after })) {
    replay.push(event);
  }
  check(
    JSON.stringify(replay.map((e) => e.type)) === JSON.stringify(normalTypes.slice(after + 1)),
    `replay: ${replay.map((e) => e.type)}`,
  );
  checkSequence(replay, 'replay', after + 1);
  console.log(`retrieve(${id}): completed; with stream and starting_after ${after}: ${replay.length} events`);

  await client.responses.delete(id);
  let error;
  try {
    await client.responses.retrieve(id);
  } catch (e) {
    error = e;
  }
  check(error instanceof NotFoundError && error.status === 404, `retrieve after delete: ${error}`);
  console.log(`delete(${id}), then retrieve: NotFoundError`);
}

// 8. An upstream 429 before the stream is a RateLimitError.
{
  const error = await client.responses
    .create({ model: 'fail-429', input, stream: true })
    .then((r) => r, (e) => e);
  check(error instanceof RateLimitError && error.status === 429, `fail-429: ${error}`);
  console.log('fail-429: RateLimitError');
}

// Last: a client that goes away. Leaving the loop aborts the SDK's request; the gateway
// cancels the upstream request (tests/it/openai_sdk.rs then checks the mock saw it cancelled).
{
  const stream = await client.responses.create(
    { model: 'mock-1', input, stream: true },
    { headers: { 'x-mock-chunks': '1000', 'x-mock-chunk-delay-ms': '50' } },
  );
  let seen = 0;
  for await (const event of stream) {
    seen += 1;
    if (event.type === 'response.output_text.delta') break;
  }
  check(seen >= 5, `went away after ${seen} events`);
  console.log(`went away after ${seen} events, the first delta among them`);
}

console.log('OK');
