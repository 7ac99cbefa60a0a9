//! The attempts of one request: pick an upstream of its route, send, and retry while no byte of
//! the answer has reached the client.
//!
//! Retried: connect errors, a connection lost before the answer, first-byte timeouts, and
//! 408, 429, 500, 502, 503, 504 — at most `retry.max_attempts` requests in all, each retry taken
//! from the retry budget (so an outage is not multiplied by us), after a backoff with full
//! jitter or the upstream's `retry-after` (up to `retry.max_retry_after`; an upstream asking for
//! longer is not retried and its answer is relayed, so the client's SDK waits). A retry goes to
//! another upstream of the route when one is healthy, without waiting for the first one's
//! `retry-after`. Never retried: other statuses, and anything once the stream has started (an
//! early answer's heartbeat included: the attempt then in flight is the last).

use std::future::{poll_fn, Future};
use std::task::Poll;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use super::stream::PendingResponse;
use super::Relay;
use crate::error::GatewayError;
use crate::registry::StreamHandle;
use crate::resilience::backoff::{delay_for, is_retryable_status, retry_after, RetryDelay};
use crate::upstream::backends::Member;
use crate::upstream::body::UpstreamBody;

/// One request as it goes upstream.
pub struct Outgoing<'a> {
    pub method: &'a Method,
    /// Path below the upstream's base URL.
    pub suffix: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub request_id: &'a HeaderValue,
    pub body: Bytes,
}

/// How the attempts ended.
pub enum Answered {
    /// An upstream's answer to relay, whatever its status: the retries are over.
    Response {
        response: Response<UpstreamBody>,
        upstream: usize,
    },
    /// The stream must start before the upstream answers (a heartbeat is due, or the stream is
    /// being ended): the attempt in flight goes on inside the relay, and is the last.
    Early {
        pending: PendingResponse<UpstreamBody>,
        upstream: usize,
    },
    /// Nothing to relay.
    Failed {
        error: GatewayError,
        upstream: Option<usize>,
    },
}

/// Whether an upstream's answer counts against its circuit breaker: it is failing (5xx, 408).
/// A 429 is the upstream protecting itself, not failing: it is neither success nor failure.
/// Connect errors and first-byte timeouts count as failures too (in [`send`]).
fn is_breaker_failure(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT
}

/// Transport errors before the answer: worth another try (on another connection or upstream).
fn is_retryable_error(error: &GatewayError) -> bool {
    matches!(
        error,
        GatewayError::UpstreamUnreachable(_)
            | GatewayError::UpstreamFailed(_)
            | GatewayError::UpstreamTimeout(_)
    )
}

/// Sends `out` to the upstreams of `members` until one answers for good. `stream` is the
/// registry handle of a streaming request: its signals (heartbeat due, end) stop the waiting.
pub async fn send(
    relay: &Relay,
    out: Outgoing<'_>,
    members: &[Member],
    stream: Option<&StreamHandle>,
) -> Answered {
    let backends = &relay.backends;
    let policy = &backends.retry;
    backends.budget.record_request(Instant::now());
    let mut tried: Vec<usize> = Vec::with_capacity(policy.max_attempts as usize);
    let mut last: Option<Answered> = None;
    // When an attempt lost its connection: the next one takes a connection opened since.
    let mut connection_lost: Option<Instant> = None;
    let mut rng = fastrand::Rng::new();
    // Bounded: at most `max_attempts` passes, each sends at most one request.
    for attempt in 1..=policy.max_attempts {
        let Some(index) = backends.pick(members, &tried, Instant::now()) else {
            break;
        };
        let (Some(backend), Some(client), Some(member)) = (
            backends.get(index),
            relay.upstreams.get(index),
            members.iter().find(|m| m.index == index),
        ) else {
            break;
        };
        tried.push(index);
        let Some(permit) = backend.breaker.try_acquire(Instant::now()) else {
            continue; // Its probe went to another request a moment ago.
        };
        let Some(in_flight) = backends.admit(index) else {
            continue; // It reached `max_streams` since it was picked.
        };
        if let Some(stream) = stream {
            stream.set_upstream(index, attempt);
        }
        let body = match &member.rename {
            Some(model) => match rename_model(&out.body, model) {
                Ok(body) => body,
                Err(error) => {
                    return Answered::Failed {
                        error,
                        upstream: Some(index),
                    }
                }
            },
            None => out.body.clone(),
        };
        let sent = client.send(
            connection_lost,
            out.method.clone(),
            out.suffix,
            out.query,
            out.headers,
            out.request_id,
            body,
        );
        // A lost connection says little about the upstream the first time (it may be a GOAWAY
        // after a burst of client cancellations); lost again on a fresh connection, it does.
        let on_fresh_connection = connection_lost.is_some();
        let metrics = relay.metrics.clone();
        let named = backends.clone();
        let sent_at = Instant::now();
        let mut pending: PendingResponse<UpstreamBody> = Box::pin(async move {
            let result = sent.await;
            let now = Instant::now();
            if let Some(backend) = named.get(index) {
                metrics.upstream_attempt(
                    &backend.name,
                    result.as_ref().ok().map(|r| r.status()),
                    now.saturating_duration_since(sent_at),
                    attempt > 1,
                );
            }
            match &result {
                Ok(r) if is_breaker_failure(r.status()) => permit.failure(now),
                Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => drop(permit),
                Ok(_) => permit.success(now),
                // The connection was lost under a sent request (e.g. the upstream's GOAWAY after
                // a burst of client cancellations): not by itself a sign of the upstream's
                // health, so only a loss on the fresh connection of a retry counts (as does a
                // fresh connection that cannot connect).
                Err(GatewayError::UpstreamFailed(_)) if !on_fresh_connection => drop(permit),
                Err(_) => permit.failure(now),
            }
            result.map(|mut response| {
                response.body_mut().hold(in_flight);
                response
            })
        });

        let result = match stream {
            None => pending.await,
            Some(handle) => {
                let answered = poll_fn(|cx| {
                    if let Poll::Ready(result) = pending.as_mut().poll(cx) {
                        return Poll::Ready(Some(result));
                    }
                    handle.on_poll(cx);
                    if handle.has_signal() {
                        Poll::Ready(None)
                    } else {
                        Poll::Pending
                    }
                })
                .await;
                match answered {
                    Some(result) => result,
                    None => {
                        return Answered::Early {
                            pending,
                            upstream: index,
                        }
                    }
                }
            }
        };

        if let Err(GatewayError::UpstreamFailed(_)) = &result {
            connection_lost = Some(Instant::now());
        }
        let retryable = match &result {
            Ok(response) => is_retryable_status(response.status()),
            Err(error) => is_retryable_error(error),
        };
        let answered = match result {
            Ok(response) => Answered::Response {
                response,
                upstream: index,
            },
            Err(error) => Answered::Failed {
                error,
                upstream: Some(index),
            },
        };
        if !retryable || attempt >= policy.max_attempts {
            return answered;
        }
        // Another healthy upstream need not wait for this one's `retry-after`.
        let elsewhere = backends
            .pick(members, &tried, Instant::now())
            .is_some_and(|next| !tried.contains(&next));
        let advised = match &answered {
            Answered::Response { response, .. } if !elsewhere => {
                retry_after(response.headers(), SystemTime::now())
            }
            _ => None,
        };
        let delay = match delay_for(attempt - 1, advised, &policy.backoff, &mut rng) {
            RetryDelay::After(delay) => delay,
            RetryDelay::TooLong(asked) => {
                tracing::debug!(
                    asked_ms = asked.as_millis() as u64,
                    "the upstream asks to wait longer than retry.max_retry_after: not retried"
                );
                return answered;
            }
        };
        if !backends.budget.try_withdraw(Instant::now()) {
            tracing::debug!("retry budget spent: the upstream's answer is relayed");
            return answered;
        }
        tracing::debug!(
            upstream = &*backend.name,
            attempt,
            delay_ms = delay.as_millis() as u64,
            "retrying"
        );
        last = Some(answered);
        if !sleep_unless_signalled(delay, stream).await {
            break; // A heartbeat is due or the stream is ending: answer with what we have.
        }
    }
    last.unwrap_or_else(|| Answered::Failed {
        error: GatewayError::NoUpstreamAvailable {
            retry_after: backends.retry_hint(),
        },
        upstream: None,
    })
}

/// Sleeps `delay`; false if the stream was signalled first.
async fn sleep_unless_signalled(delay: std::time::Duration, stream: Option<&StreamHandle>) -> bool {
    let Some(handle) = stream else {
        tokio::time::sleep(delay).await;
        return true;
    };
    let mut sleep = std::pin::pin!(tokio::time::sleep(delay));
    poll_fn(|cx| {
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(true);
        }
        handle.on_poll(cx);
        if handle.has_signal() {
            Poll::Ready(false)
        } else {
            Poll::Pending
        }
    })
    .await
}

/// The request body with its top-level `model` replaced (`routes.rename`). Every other member
/// keeps its exact bytes and order; only the JSON between members may change (whitespace).
pub fn rename_model(body: &[u8], model: &str) -> Result<Bytes, GatewayError> {
    use serde::de::{MapAccess, Visitor};
    use serde_json::value::RawValue;

    struct Members<'a>(Vec<(std::borrow::Cow<'a, str>, &'a RawValue)>);
    impl<'de> serde::Deserialize<'de> for Members<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Members<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut members = Vec::new();
                    // Bounded: by the body size limit.
                    while let Some(entry) = map.next_entry()? {
                        members.push(entry);
                    }
                    Ok(Members(members))
                }
            }
            d.deserialize_map(V)
        }
    }

    let invalid = |e: serde_json::Error| GatewayError::InvalidJson(e.to_string());
    let Members(members) = serde_json::from_slice(body).map_err(invalid)?;
    let renamed = serde_json::to_string(model).map_err(invalid)?;
    let mut out = Vec::with_capacity(body.len() + model.len());
    out.push(b'{');
    for (i, (key, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(serde_json::to_string(key).map_err(invalid)?.as_bytes());
        out.push(b':');
        if key == "model" {
            out.extend_from_slice(renamed.as_bytes());
        } else {
            out.extend_from_slice(value.get().as_bytes());
        }
    }
    out.push(b'}');
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_keeps_every_other_member_as_it_was() {
        let body = br#"{"model":"llama","messages":[{"role":"user","content":"h\u00e9 \"x\""}],"temperature":0.10000000000000001,"stream":true}"#;
        let out = rename_model(body, "meta/Llama-3").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"meta/Llama-3","messages":[{"role":"user","content":"h\u00e9 \"x\""}],"temperature":0.10000000000000001,"stream":true}"#
        );
        assert!(rename_model(b"[1]", "m").is_err());
        assert!(rename_model(b"{", "m").is_err());
    }

    #[test]
    fn only_failing_answers_count_against_the_breaker() {
        assert!(is_breaker_failure(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(is_breaker_failure(StatusCode::SERVICE_UNAVAILABLE));
        assert!(is_breaker_failure(StatusCode::REQUEST_TIMEOUT));
        assert!(!is_breaker_failure(StatusCode::TOO_MANY_REQUESTS));
        assert!(!is_breaker_failure(StatusCode::BAD_REQUEST));
        assert!(!is_breaker_failure(StatusCode::OK));
    }
}
