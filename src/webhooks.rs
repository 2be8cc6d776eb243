//! Webhooks: when a run with a `notify_url` ends, its body is POSTed there, signed, and retried
//! with backoff until it is taken or `webhooks.give_up_after` has passed since the run ended.
//! The body is the API's own run body ([`RunBody`]); nothing here serves HTTP.
//!
//! The database queues each delivery in the same transaction that records the run's end, so a
//! delivery is never lost to a crash, and is made at least once: a receiver may get one twice
//! (after a restart in the middle of a POST) and tells them apart by `X-Precheck-Delivery`.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use time::OffsetDateTime;

use crate::api::RunBody;
use crate::config::Config;
use crate::db::{Db, Delivery};
use crate::queue::Queue;

/// How long one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two tries of one delivery.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often the queue of deliveries is looked at when nothing wakes the sender.
const IDLE_CHECK: Duration = Duration::from_secs(30);

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Payload<'a> {
    /// Always `run.finished` (a run's end, whatever its status).
    event: &'static str,
    delivery: i64,
    run: &'a RunBody,
}

/// `sha256=<hex HMAC-SHA256 of body>`: the `X-Precheck-Signature-256` header.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(body);
    format!("sha256={:x}", mac.finalize().into_bytes())
}

/// What the sender works with.
struct Sender {
    config: Arc<Config>,
    db: Db,
}

/// Sends the webhooks that are due, until the server shuts down. Wakes when a run ends, when
/// the next retry is due, and every 30 s.
pub fn start(config: Arc<Config>, db: Db, queue: Queue) {
    let Some(secret) = config.webhooks.secret.clone() else {
        return;
    };
    let state = Sender { config, db };
    tokio::spawn(async move {
        let client = match reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(POST_TIMEOUT)
            .build()
        {
            Ok(client) => client,
            Err(e) => {
                tracing::error!("cannot start the webhook sender: {e}");
                return;
            }
        };
        let mut events = queue.subscribe();
        loop {
            let now = OffsetDateTime::now_utc();
            match state.db.due_deliveries(now, 16).await {
                Ok(due) => {
                    for delivery in due {
                        deliver(&state, &client, &secret, delivery).await;
                    }
                }
                Err(e) => tracing::error!("cannot read the webhook queue: {e:#}"),
            }
            let next = state.db.next_delivery().await.ok().flatten();
            let now = OffsetDateTime::now_utc();
            let sleep = match next {
                Some(t) if t <= now => continue,
                Some(t) => Duration::try_from(t - now)
                    .unwrap_or(IDLE_CHECK)
                    .min(IDLE_CHECK),
                None => IDLE_CHECK,
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                // A run ended: its webhook, if any, is due now.
                _ = events.recv() => {}
                _ = queue.stopping() => return,
            }
        }
    });
}

async fn deliver(state: &Sender, client: &reqwest::Client, secret: &str, d: Delivery) {
    let now = OffsetDateTime::now_utc();
    let result = match state.db.run(d.run_id).await {
        Ok(Some(run)) => post(client, secret, &d, &RunBody::from(&run)).await,
        Ok(None) => Err(Fatal::GiveUp("the run was deleted".into())),
        Err(e) => Err(Fatal::Retry(format!("{e:#}"))),
    };
    let hooks = &state.config.webhooks;
    let (error, retry) = match result {
        Ok(()) => (None, None),
        Err(Fatal::GiveUp(e)) => (Some(e), None),
        Err(Fatal::Retry(e)) => {
            let backoff = hooks
                .first_retry_after
                .saturating_mul(1u32 << d.attempts.min(20))
                .min(MAX_BACKOFF);
            let deadline = d.created + hooks.give_up_after;
            let next = now + backoff;
            (Some(e), (next <= deadline).then_some(next))
        }
    };
    match (&error, retry) {
        (None, _) => tracing::info!(run_id = %d.run_id, delivery = d.seq, "webhook delivered"),
        (Some(e), Some(t)) => {
            tracing::warn!(run_id = %d.run_id, delivery = d.seq, "webhook failed ({e}); retrying at {t}")
        }
        (Some(e), None) => {
            tracing::warn!(run_id = %d.run_id, delivery = d.seq, "webhook failed ({e}); giving up")
        }
    }
    if let Err(e) = state.db.delivery_attempted(d.seq, error, retry, now).await {
        tracing::error!("cannot record a webhook attempt: {e:#}");
    }
}

enum Fatal {
    Retry(String),
    GiveUp(String),
}

async fn post(
    client: &reqwest::Client,
    secret: &str,
    d: &Delivery,
    run: &RunBody,
) -> Result<(), Fatal> {
    let body = serde_json::to_vec(&Payload {
        event: "run.finished",
        delivery: d.seq,
        run,
    })
    .map_err(|e| Fatal::GiveUp(e.to_string()))?;
    let sent = client
        .post(&d.url)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("precheck-server/", env!("CARGO_PKG_VERSION")),
        )
        .header("x-precheck-event", "run.finished")
        .header("x-precheck-delivery", d.seq.to_string())
        .header("x-precheck-signature-256", signature(secret, &body))
        .body(body)
        .send()
        .await
        .map_err(|e| Fatal::Retry(format!("{e}")))?;
    let status = sent.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(Fatal::Retry(format!("the receiver answered {status}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
