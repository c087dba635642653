//! Every metric name this crate emits. All carry the labels `provider` and `model`.

/// Counter, label `outcome` = ok | error | retry (one increment per HTTP attempt).
pub const REQUESTS: &str = "larder_provider_requests_total";
/// Counter, label `kind` = `ProviderError::kind()` (one increment per failed attempt).
pub const ERRORS: &str = "larder_provider_errors_total";
/// Counter, label `direction` = prompt | completion.
pub const TOKENS: &str = "larder_provider_tokens_total";
/// Histogram of one attempt's duration in seconds.
pub const REQUEST_SECONDS: &str = "larder_provider_request_seconds";
/// What is left of a provider's daily budget, by `resource` (`tokens` | `requests`); only for
/// providers with `limits.tokens_per_day` or `limits.requests_per_day` set.
pub const BUDGET_REMAINING: &str = "larder_provider_budget_remaining";
