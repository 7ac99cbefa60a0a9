// The tidegate demo page. It streams a chat completion (or a response, with the Responses API)
// with fetch() and reads the body with a
// ReadableStream reader, parsing the Server-Sent Events itself (EventSource can only GET). Each
// event of a resumable stream carries `id: <n>`; when the connection is cut, the page asks for
// the same stream again from the last id it saw (GET /v1/streams/{id}) and carries on.
// Model text only ever reaches the page as text (a Text node), never as HTML.
"use strict";

// A cut that keeps happening without a single event getting through is given up after this
// many resumes in a row, and the page waits a little longer before each (doubling, capped).
const MAX_RESUMES_IN_A_ROW = 5;
const FIRST_RETRY_DELAY_MS = 250;
const MAX_RETRY_DELAY_MS = 4000;
// The hard cap on connections for one answer, however many events each delivered.
const MAX_CONNECTIONS = 1000;
// An event larger than this is not from the gateway (its own limit is far below).
const MAX_EVENT_CHARS = 4 * 1024 * 1024;

const $ = (id) => document.getElementById(id);
const form = $("chat");
const sendButton = $("send");
const cutButton = $("cut");
const answer = $("answer");
const statusLine = $("status");
const notes = $("notes");

// The connection being read, so "Cut the connection" can abort it.
let connection = null;

/** Incremental parser of an event stream (WHATWG HTML, "Server-sent events"): feed it decoded
 * text as it arrives; it calls `onEvent({ id, event, data })` for each complete event. */
class EventStreamParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.pending = "";
    this.data = [];
    this.eventType = "";
    this.lastEventId = null;
  }

  push(text) {
    this.pending += text;
    let start = 0;
    // Each turn takes one whole line off the text; bounded by its length.
    while (start < this.pending.length) {
      const cr = this.pending.indexOf("\r", start);
      const lf = this.pending.indexOf("\n", start);
      const end = cr === -1 ? lf : lf === -1 ? cr : Math.min(cr, lf);
      if (end === -1) break;
      // A CR at the very end may be the first half of a CRLF that the next read completes.
      if (end === cr && end === this.pending.length - 1) break;
      const next = end === cr && this.pending[end + 1] === "\n" ? end + 2 : end + 1;
      this.line(this.pending.slice(start, end));
      start = next;
    }
    this.pending = this.pending.slice(start);
    if (this.pending.length > MAX_EVENT_CHARS) {
      throw new Error("an event larger than 4 MiB: not an event stream from the gateway");
    }
  }

  line(line) {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.startsWith(":")) return; // a comment: the gateway's heartbeat
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.eventType = value;
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
  }

  dispatch() {
    if (this.data.length > 0) {
      this.onEvent({
        id: this.lastEventId,
        event: this.eventType || "message",
        data: this.data.join("\n"),
      });
    }
    this.data = [];
    this.eventType = "";
  }
}

/** Reads `body` to its end (or until `run` is over), handing each event to `onEvent`. */
async function readEvents(body, run, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const parser = new EventStreamParser(onEvent);
  // Bounded by the stream: it ends, fails, or is cut; the gateway caps its duration.
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    parser.push(decoder.decode(value, { stream: true }));
    if (run.over) {
      await reader.cancel();
      return;
    }
  }
  parser.push(decoder.decode());
}

function setState(state, message) {
  document.body.dataset.state = state;
  answer.setAttribute("aria-busy", String(state === "streaming" || state === "resuming"));
  statusLine.textContent = message;
}

function addNote(message) {
  const item = document.createElement("li");
  item.textContent = message;
  notes.append(item);
}

function showStats(run) {
  $("count").textContent = String(run.tokens);
  if (run.firstTokenAt === null) return;
  $("ttft").textContent = `${Math.round(run.firstTokenAt - run.sentAt)} ms`;
  const seconds = (performance.now() - run.firstTokenAt) / 1000;
  if (run.tokens > 1 && seconds > 0) {
    $("rate").textContent = ((run.tokens - 1) / seconds).toFixed(1);
  }
}

/** What one event means in each API's stream: text to render, the end, or a final error. */
const GRAMMARS = {
  // Chat completions: chunks with `choices[0].delta.content`, then `data: [DONE]`; an error is
  // a chunk with an `error` object.
  chat(event, chunk) {
    if (event.data === "[DONE]") return { done: true };
    if (chunk?.error) return { error: chunk.error.message ?? "unknown" };
    return { text: chunk?.choices?.[0]?.delta?.content };
  },
  // The Responses API: typed events; the text is in `response.output_text.delta`, the end is a
  // terminal event, and an error is `event: error` (its message at the top, and in `error`).
  responses(event, chunk) {
    const type = chunk?.type ?? event.event;
    if (type === "response.output_text.delta") return { text: chunk.delta };
    if (type === "response.completed" || type === "response.incomplete") return { done: true };
    if (type === "response.failed") {
      return { error: chunk?.response?.error?.message ?? "the response failed" };
    }
    if (type === "error") return { error: chunk?.message ?? chunk?.error?.message ?? "unknown" };
    return {};
  },
};

/** One event of the stream: text to render, the end, or a final error. */
function onEvent(run, event) {
  if (event.id !== null) run.lastEventId = event.id;
  run.eventsSinceCut += 1;
  let chunk = null;
  try {
    chunk = JSON.parse(event.data);
  } catch {
    // not JSON ([DONE], or nothing to render)
  }
  const meaning = GRAMMARS[run.api](event, chunk);
  if (meaning.done) {
    run.over = true;
    setState("done", "Done.");
    return;
  }
  if (meaning.error !== undefined) {
    run.over = true;
    setState("failed", `The stream ended with an error: ${meaning.error}`);
    return;
  }
  const content = meaning.text;
  if (typeof content !== "string" || content === "") return;
  if (run.firstTokenAt === null) run.firstTokenAt = performance.now();
  run.tokens += 1;
  run.text.appendData(content);
  showStats(run);
}

/** The message of an OpenAI-shaped error answer, or its status. */
async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body?.error?.message) return `${response.status}: ${body.error.message}`;
  } catch {
    // not JSON: the status says enough
  }
  return `${response.status} ${response.statusText}`;
}

/** Opens one connection with `connect` and reads it. Returns "over" (done or failed) or "cut". */
async function follow(run, connect) {
  const controller = new AbortController();
  connection = controller;
  cutButton.disabled = false;
  try {
    const response = await connect(controller.signal);
    if (!response.ok) {
      run.over = true;
      setState("failed", `The gateway answered ${await errorMessage(response)}`);
      return "over";
    }
    if (!(response.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
      run.over = true;
      setState("failed", "The gateway answered without an event stream.");
      return "over";
    }
    run.streamId ??= response.headers.get("x-tidegate-stream-id");
    run.token ??= response.headers.get("x-tidegate-resume-token");
    $("stream-id").textContent = run.streamId ?? "–";
    if (run.resumedAfter !== null) {
      addNote(`Resumed after event ${run.resumedAfter}.`);
      run.resumedAfter = null;
    }
    setState("streaming", "Streaming…");
    await readEvents(response.body, run, (event) => onEvent(run, event));
    return run.over ? "over" : "cut";
  } catch (error) {
    // An abort (the button) or a network error (TypeError): the connection is gone.
    if (error.name === "AbortError" || error instanceof TypeError) {
      if (run.streamId === null) {
        // No answer yet: there is no stream to resume.
        run.over = true;
        setState("failed", error.name === "AbortError"
          ? "Cut before the gateway answered: there is no stream to resume."
          : `Could not reach the gateway: ${error.message}`);
        return "over";
      }
      return "cut";
    }
    throw error;
  } finally {
    connection = null;
    cutButton.disabled = true;
  }
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Sends the prompt and follows the answer to its end, resuming it after every cut. */
async function converse({ prompt, model, api, tokens, delay }) {
  const text = document.createTextNode("");
  answer.replaceChildren(text);
  notes.replaceChildren();
  for (const id of ["ttft", "rate", "stream-id"]) $(id).textContent = "–";
  const run = {
    api,
    text,
    sentAt: performance.now(),
    firstTokenAt: null,
    tokens: 0,
    streamId: null,
    token: null,
    lastEventId: null,
    resumedAfter: null,
    eventsSinceCut: 0,
    connections: 0,
    over: false,
  };
  showStats(run);
  const headers = { "content-type": "application/json" };
  // The built-in mock's pacing; the gateway forwards these to the mock in the demo only.
  if (tokens !== "") headers["x-mock-chunks"] = tokens;
  if (delay !== "") headers["x-mock-chunk-delay-ms"] = delay;
  const [path, body] = api === "responses"
    ? ["/v1/responses", JSON.stringify({ model, stream: true, input: prompt })]
    : ["/v1/chat/completions",
      JSON.stringify({ model, stream: true, messages: [{ role: "user", content: prompt }] })];
  let connect = (signal) => fetch(path, { method: "POST", headers, body, signal });
  setState("streaming", "Waiting for the first token…");

  let cutsInARow = 0;
  while (run.connections < MAX_CONNECTIONS) {
    run.connections += 1;
    run.eventsSinceCut = 0;
    if ((await follow(run, connect)) === "over") return;
    cutsInARow = run.eventsSinceCut > 0 ? 1 : cutsInARow + 1;
    if (run.streamId === null || run.token === null) {
      setState("failed", "The connection was cut, and this gateway does not resume streams " +
        "([resume] enabled = false).");
      return;
    }
    if (cutsInARow > MAX_RESUMES_IN_A_ROW) {
      setState("failed", `The connection was cut ${cutsInARow} times in a row; giving up.`);
      return;
    }
    // Ids start at 1, so 0 asks for every event.
    const after = run.lastEventId ?? "0";
    setState("resuming", `Connection cut after event ${after}; resuming…`);
    if (cutsInARow > 1) {
      await pause(Math.min(FIRST_RETRY_DELAY_MS * 2 ** (cutsInARow - 2), MAX_RETRY_DELAY_MS));
    }
    run.resumedAfter = after;
    const streamUrl = `/v1/streams/${encodeURIComponent(run.streamId)}`;
    const resumeHeaders = { "x-tidegate-resume-token": run.token, "last-event-id": after };
    connect = (signal) => fetch(streamUrl, { headers: resumeHeaders, signal });
  }
  setState("failed", `Gave up after ${MAX_CONNECTIONS} connections.`);
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!form.reportValidity()) return;
  sendButton.disabled = true;
  try {
    await converse({
      prompt: $("prompt").value,
      model: $("model").value.trim(),
      api: $("api").value === "responses" ? "responses" : "chat",
      tokens: $("tokens").value.trim(),
      delay: $("delay").value.trim(),
    });
  } catch (error) {
    setState("failed", `Something went wrong: ${error.message}`);
  } finally {
    sendButton.disabled = false;
  }
});

cutButton.addEventListener("click", () => {
  if (connection !== null) connection.abort();
});
