//! The operator page (`GET /ui`, one embedded HTML file with its CSS and JS, no build step)
//! and the event stream it follows (`GET /v1/events`, Server-Sent Events of the pipeline
//! stages: `stage`, `filtered`, `view`, `embedded`; this process's, and with a Redis broker
//! every other process's, relayed in by `larder_pipeline::events::relay_in`).

use std::convert::Infallible;

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures::Stream;
use larder_pipeline::events;
use tokio::sync::broadcast::error::RecvError;

use crate::state::AppState;

const PAGE: &str = include_str!("../ui/index.html");

pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

/// Every pipeline event from now on, until the client goes away or the server stops. A client
/// that falls behind gets a `lagged` event with the number of events it missed.
pub async fn events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = events::subscribe();
    let stream = futures::stream::unfold(
        (receiver, state.stopping.clone()),
        |(mut receiver, mut stopping)| async move {
            loop {
                let next = tokio::select! {
                    next = receiver.recv() => next,
                    _ = stopping.wait_for(|stop| *stop) => return None,
                };
                let event = match next {
                    Ok(event) => match Event::default().event(event.name()).json_data(&event) {
                        Ok(sse) => sse,
                        Err(error) => {
                            tracing::warn!(%error, "cannot encode a pipeline event");
                            continue;
                        }
                    },
                    Err(RecvError::Lagged(missed)) => {
                        Event::default().event("lagged").data(missed.to_string())
                    }
                    Err(RecvError::Closed) => return None,
                };
                return Some((Ok(event), (receiver, stopping)));
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}
