//! LLM providers behind one trait, and the mock provider server.
//!
//! # Layout
//!
//! - [`protocol`]: the prompts the pipeline sends (generation and evaluation) and the JSON
//!   shapes it expects back. Every user message ends with a ```` ```json ```` parameter block.
//! - [`mock`]: the mock provider HTTP server (`larder mock-llm`, and the tests): OpenAI,
//!   CLOVA v1 and CLOVA v3 chat routes and OpenAI embeddings, with latency and fault injection.
//! - `config`: the `[[providers]]` TOML entry ([`ProviderConfig`], [`Limits`], …).
//! - `openai`, `clova`: the wire clients; `http`: what they share (secrets, status →
//!   error mapping, `Retry-After`).
//! - [`embedding`]: the deterministic hashed n-gram embedding ([`hashed_embedding`]) the
//!   simulated provider and the mock's `POST /v1/embeddings` answer with.
//! - `simulated`: the in-process provider; `brain`: the fake LLM content it shares with the
//!   mock server.
//! - `limited`: the limits layer every [`build`]-made provider goes through, for chat and
//!   embed calls alike (concurrency, requests per minute, daily budget, timeout, retries,
//!   metrics).
//! - `error`: [`ProviderError`]; `metrics`: every metric name this crate emits.

mod brain;
pub mod budget;
mod clova;
mod config;
pub mod embedding;
mod error;
mod http;
mod limited;
pub mod metrics;
pub mod mock;
mod openai;
pub mod protocol;
mod simulated;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use config::{ClovaSampling, JsonMode, Latency, Limits, ProviderConfig, ProviderKind};
pub use embedding::{hashed_embedding, DEFAULT_EMBEDDING_DIM};
pub use error::ProviderError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        schema: serde_json::Value,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub response: ResponseFormat,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub content: String,
    pub usage: Usage,
}

/// The answer to [`Provider::embed`]: one vector per input text, in input order, all of one
/// length.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedResponse {
    pub vectors: Vec<Vec<f32>>,
    /// `prompt_tokens` only; embeddings have no completion.
    pub usage: Usage,
}

#[async_trait::async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The configured name, e.g. "gpt-4o-main".
    fn name(&self) -> &str;
    /// "openai" | "clova-v1" | "clova-v3" | "simulated"
    fn kind(&self) -> &'static str;
    fn model(&self) -> &str;
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError>;

    /// One vector per text, in input order (`vectors[i]` embeds `texts[i]`). No texts: no
    /// vectors, and no call to the server.
    ///
    /// The default fails with [`ProviderError::Config`]: chat-only providers (CLOVA Studio's
    /// native chat APIs) cannot embed. OpenAI-compatible and simulated providers can.
    async fn embed(&self, texts: &[String]) -> Result<EmbedResponse, ProviderError> {
        let _ = texts;
        Err(ProviderError::Config(format!(
            "provider {:?} ({}) cannot embed",
            self.name(),
            self.kind()
        )))
    }

    /// What `Debug` for `dyn Provider` prints. Implementations holding secrets print them
    /// redacted; the default shows name, kind and model only, so other implementors need
    /// not write anything.
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name())
            .field("kind", &self.kind())
            .field("model", &self.model())
            .finish()
    }
}

impl fmt::Debug for dyn Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.describe(f)
    }
}

/// Build a provider: the wire client wrapped in the limits layer (concurrency semaphore,
/// governor requests-per-minute limiter, per-attempt timeout, retries with exponential
/// backoff + full jitter that honour `Retry-After` on 429/5xx, metrics).
///
/// API keys are read from the named environment variables here, once; a missing variable is
/// a [`ProviderError::Config`] naming it.
pub fn build(config: &ProviderConfig) -> Result<Arc<dyn Provider>, ProviderError> {
    build_with(config, &budget::MemoryLedger::shared())
}

/// [`build`], with the daily budget counted in `ledger`: give every provider of a deployment
/// one ledger on the shared main DB and the budget caps them all together.
pub fn build_with(
    config: &ProviderConfig,
    ledger: &Arc<dyn budget::Ledger>,
) -> Result<Arc<dyn Provider>, ProviderError> {
    config.validate()?;
    let name = config.name.as_str();
    let limits = config.limits.clone();
    let provider: Arc<dyn Provider> = match &config.kind {
        ProviderKind::Openai {
            base_url,
            model,
            api_key_env,
            json_mode,
        } => {
            let key = api_key_env
                .as_deref()
                .map(|var| http::Secret::from_env(var, name))
                .transpose()?;
            let client = http::client(limits.concurrency)?;
            let inner = openai::OpenAi::new(name, base_url, model, key, *json_mode, client);
            Arc::new(limited::Limited::with_ledger(inner, limits, ledger.clone()))
        }
        ProviderKind::ClovaV1 {
            base_url,
            model,
            api_key_env,
            gateway_key_env,
            sampling,
        } => {
            let key = http::Secret::from_env(api_key_env, name)?;
            let gateway_key = gateway_key_env
                .as_deref()
                .map(|var| http::Secret::from_env(var, name))
                .transpose()?;
            let client = http::client(limits.concurrency)?;
            let version = clova::Version::V1 { gateway_key };
            let inner = clova::Clova::new(
                name,
                base_url,
                model,
                key,
                version,
                sampling.clone(),
                client,
            );
            Arc::new(limited::Limited::with_ledger(inner, limits, ledger.clone()))
        }
        ProviderKind::ClovaV3 {
            base_url,
            model,
            api_key_env,
            sampling,
        } => {
            let key = http::Secret::from_env(api_key_env, name)?;
            let client = http::client(limits.concurrency)?;
            let inner = clova::Clova::new(
                name,
                base_url,
                model,
                key,
                clova::Version::V3,
                sampling.clone(),
                client,
            );
            Arc::new(limited::Limited::with_ledger(inner, limits, ledger.clone()))
        }
        ProviderKind::Simulated {
            seed,
            model,
            latency,
        } => {
            let inner = simulated::Simulated::new(name, *seed, model.clone(), latency.clone());
            Arc::new(limited::Limited::with_ledger(inner, limits, ledger.clone()))
        }
    };
    tracing::info!(
        provider = name,
        kind = provider.kind(),
        model = provider.model(),
        "provider built"
    );
    Ok(provider)
}
