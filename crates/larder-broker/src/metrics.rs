//! Every metric this crate records, named in one place. All are counters labelled `stage`.

/// Messages appended to a stage's queue.
pub const PUBLISHED: &str = "larder_broker_published_total";
/// Messages handed to a consumer (first deliveries and reclaimed ones).
pub const DELIVERED: &str = "larder_broker_delivered_total";
/// Messages taken over from a consumer that stayed idle longer than `claim_idle`.
pub const RECLAIMED: &str = "larder_broker_reclaimed_total";
/// Messages moved to the dead-letter stream after `max_deliveries`.
pub const DEAD_LETTERED: &str = "larder_broker_dead_lettered_total";
/// Acknowledgements that settled a message (a repeated ack is not counted).
pub const ACKED: &str = "larder_broker_acked_total";

pub(crate) fn count(name: &'static str, stage: &str) {
    metrics::counter!(name, "stage" => stage.to_owned()).increment(1);
}
