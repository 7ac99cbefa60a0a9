// Shared helpers for the k6 scripts in this directory (see loadtest/README.md, section k6).
//
// Core k6 has no SSE client: a streaming chat completion is one `http.post` whose body arrives
// whole when the stream ends. So `http_req_waiting` is the time to first byte (the gateway's
// response headers, sent as soon as the upstream answers) and `http_req_duration` the whole
// stream. The custom Trends `ttfb` and `stream_duration` hold the same two times for good
// streams only (status 200, ending with `data: [DONE]`, no error event), so failures that end
// fast do not flatter the latency figures.
//
// Environment (all optional):
//   BASE_URL       gateway address, default http://127.0.0.1:8080 (the demo, `cargo run --release`)
//   API_KEY        sent as `Authorization: Bearer <API_KEY>`
//   MODEL          default mock-1
//   MAX_TOKENS     sent as `max_tokens` (bounds the cost against a real upstream)
//   MOCK_CHUNKS    sent as `x-mock-chunks` (content chunks per stream; mock default 24); when
//                  set, each stream must carry exactly MOCK_CHUNKS + 3 data events (role chunk,
//                  content chunks, finish chunk, [DONE])
//   MOCK_DELAY_MS  sent as `x-mock-chunk-delay-ms` (pause before each content chunk; mock
//                  default 40). The demo forwards `x-mock-*` to its mock; against a real
//                  upstream leave both unset.
//   TIMEOUT        per-request timeout, default 120s (also the VUs' graceful stop)

import http from 'k6/http';
import { check } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
export const MODEL = __ENV.MODEL || 'mock-1';
export const TIMEOUT = __ENV.TIMEOUT || '120s';
export const MOCK_CHUNKS = optionalInt('MOCK_CHUNKS');
export const MOCK_DELAY_MS = optionalInt('MOCK_DELAY_MS');
const MAX_TOKENS = optionalInt('MAX_TOKENS');

/** `data:` events received, in all streams. */
export const sseEvents = new Counter('sse_events');
/** `data:` events per stream. */
export const sseEventsPerStream = new Trend('sse_events_per_stream');
/** Time to first byte of good streams (http_req_waiting). */
export const ttfb = new Trend('ttfb', true);
/** Whole-stream time of good streams (http_req_duration). */
export const streamDuration = new Trend('stream_duration', true);
/** Share of streams that failed any check. */
export const streamErrors = new Rate('stream_errors');

/** An integer environment variable, or `fallback` when unset; anything else stops the test. */
export function envInt(name, fallback) {
  const value = optionalInt(name);
  return value === undefined ? fallback : value;
}

function optionalInt(name) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return undefined;
  if (!/^\d+$/.test(raw)) throw new Error(`${name} must be a non-negative integer, got "${raw}"`);
  return parseInt(raw, 10);
}

/**
 * Default p95 limit (ms) for a whole stream: the mock's own pacing (chunks x delay, with its
 * defaults 24 x 40 ms when MOCK_* are unset) plus one second. Against a real upstream set P95_MS.
 */
export function defaultStreamP95Ms() {
  const chunks = MOCK_CHUNKS === undefined ? 24 : MOCK_CHUNKS;
  const delay = MOCK_DELAY_MS === undefined ? 40 : MOCK_DELAY_MS;
  return chunks * delay + 1000;
}

const CHAT_URL = `${BASE_URL}/v1/chat/completions`;
const BODY = JSON.stringify(
  Object.assign(
    {
      model: MODEL,
      stream: true,
      messages: [{ role: 'user', content: 'Say hello in a few words.' }],
    },
    MAX_TOKENS === undefined ? {} : { max_tokens: MAX_TOKENS },
  ),
);
const HEADERS = { 'Content-Type': 'application/json', Accept: 'text/event-stream' };
if (__ENV.API_KEY) HEADERS.Authorization = `Bearer ${__ENV.API_KEY}`;
if (MOCK_CHUNKS !== undefined) HEADERS['x-mock-chunks'] = String(MOCK_CHUNKS);
if (MOCK_DELAY_MS !== undefined) HEADERS['x-mock-chunk-delay-ms'] = String(MOCK_DELAY_MS);

/** Posts one streaming chat completion; `tags` are added to the request's metrics. */
export function postStream(tags) {
  return http.post(CHAT_URL, BODY, {
    headers: HEADERS,
    timeout: TIMEOUT,
    tags: Object.assign({ name: 'chat_stream' }, tags || {}),
  });
}

/**
 * The `data` of every complete event in an SSE body (WHATWG rules, enough for our purposes:
 * `data:` lines joined by newlines, comments and other fields ignored, an event without its
 * closing blank line at the end of the body is dropped).
 */
export function sseData(body) {
  const events = [];
  let data = null;
  for (const line of body.split(/\r\n|\r|\n/)) {
    if (line === '') {
      if (data !== null) events.push(data);
      data = null;
    } else if (line.startsWith('data:')) {
      const value = line.charAt(5) === ' ' ? line.slice(6) : line.slice(5);
      data = data === null ? value : `${data}\n${value}`;
    }
  }
  return events;
}

const ERROR_EVENT = /^\s*\{\s*"error"\s*:/;

/**
 * Checks a streamed response: status 200, `text/event-stream`, no error event, last event
 * `[DONE]` (and the exact event count when MOCK_CHUNKS is set). Records the custom metrics
 * with `tags`. Returns whether every check passed.
 */
export function checkStream(res, tags) {
  const events = res.status === 200 && typeof res.body === 'string' ? sseData(res.body) : [];
  const checks = {
    'status is 200': (r) => r.status === 200,
    'content-type is text/event-stream': (r) =>
      (r.headers['Content-Type'] || '').startsWith('text/event-stream'),
    'no error event': () => !events.some((d) => ERROR_EVENT.test(d)),
    'last event is [DONE]': () => events.length > 0 && events[events.length - 1] === '[DONE]',
  };
  if (MOCK_CHUNKS !== undefined) {
    checks[`MOCK_CHUNKS + 3 data events`] = () => events.length === MOCK_CHUNKS + 3;
  }
  const ok = check(res, checks, tags);
  sseEvents.add(events.length, tags);
  sseEventsPerStream.add(events.length, tags);
  streamErrors.add(!ok, tags);
  if (ok) {
    ttfb.add(res.timings.waiting, tags);
    streamDuration.add(res.timings.duration, tags);
  }
  return ok;
}
