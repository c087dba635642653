//! Metric names of the pipeline, in one place.

/// Jobs a stage finished, by `stage` and `outcome` (`ok` | `error` | `undecodable`).
pub const STAGE_JOBS: &str = "larder_pipeline_jobs_total";
/// Seconds a stage spent on one job, by `stage`.
pub const STAGE_SECONDS: &str = "larder_pipeline_job_seconds";
/// Jobs being worked on now, by `stage`.
pub const STAGE_IN_FLIGHT: &str = "larder_pipeline_in_flight";
/// Generator answers the generate stage got, by `provider`.
pub const GENERATIONS: &str = "larder_pipeline_generations_total";
/// Items the filter let through.
pub const FILTER_ACCEPTED: &str = "larder_filter_accepted_total";
/// Items or answers the filter dropped, by `reason`.
pub const FILTER_REJECTED: &str = "larder_filter_rejected_total";
/// Evaluations stored, by `evaluator`.
pub const EVALUATIONS: &str = "larder_evaluate_scores_total";
/// Evaluator answers that could not be used, by `evaluator`.
pub const EVALUATE_INVALID: &str = "larder_evaluate_invalid_total";
/// Serving views written.
pub const VIEWS_WRITTEN: &str = "larder_rank_views_total";
/// Generations queued by the rank stage's refill, by `reason` (`low_pool`).
pub const REFILLS: &str = "larder_rank_refills_total";
/// Items retired, by `reason` (lost to feedback, or a near duplicate of a better item).
pub const RETIRED: &str = "larder_rank_retired_total";
/// Counter: item vectors the embed stage wrote.
pub const ITEMS_EMBEDDED: &str = "larder_embed_items_total";
