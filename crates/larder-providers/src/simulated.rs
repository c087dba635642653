//! The in-process provider: no HTTP, answers from `brain` (chat) and
//! [`hashed_embedding`](crate::embedding::hashed_embedding) (embeddings), deterministic per
//! seed.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Latency;
use crate::embedding::{self, DEFAULT_EMBEDDING_DIM};
use crate::{
    brain, ChatRequest, ChatResponse, EmbedResponse, Provider, ProviderError, ResponseFormat, Usage,
};

const DEFAULT_MODEL: &str = "larder-sim-1";

/// Embedding calls take this fraction of the configured chat latency: no tokens to generate.
const EMBED_LATENCY_DIVISOR: u64 = 10;

pub(crate) struct Simulated {
    name: String,
    model: String,
    seed: u64,
    latency: Latency,
    /// Numbers the calls, so successive generations for one category differ while the
    /// whole sequence stays the same for a seed.
    calls: AtomicU64,
}

impl Simulated {
    pub(crate) fn new(name: &str, seed: u64, model: Option<String>, latency: Latency) -> Simulated {
        Simulated {
            name: name.to_owned(),
            model: model.unwrap_or_else(|| DEFAULT_MODEL.to_owned()),
            seed,
            latency,
            calls: AtomicU64::new(0),
        }
    }
}

impl fmt::Debug for Simulated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulated")
            .field("name", &self.name)
            .field("model", &self.model)
            .field("seed", &self.seed)
            .field("latency", &self.latency)
            .finish()
    }
}

#[async_trait::async_trait]
impl Provider for Simulated {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "simulated"
    }

    fn model(&self) -> &str {
        &self.model
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let delay = {
            let mut rng = brain::rng_for(&[self.seed, call, 0x1a7e]);
            brain::latency(self.latency.mean_ms, self.latency.jitter, &mut rng)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let json = !matches!(request.response, ResponseFormat::Text);
        let content = brain::answer(&request.messages, json, self.seed, call);
        let usage = brain::usage(&request.messages, &content);
        Ok(ChatResponse { content, usage })
    }

    /// [`DEFAULT_EMBEDDING_DIM`]-long hashed embeddings after a tenth of the chat latency.
    /// The delay is drawn from the seed and the texts, not the call counter, so embedding
    /// calls leave the chat answers' sequence alone.
    async fn embed(&self, texts: &[String]) -> Result<EmbedResponse, ProviderError> {
        if texts.is_empty() {
            return Ok(EmbedResponse {
                vectors: Vec::new(),
                usage: Usage::default(),
            });
        }
        let delay = {
            let mut rng = brain::rng_for(&[self.seed, embedding::batch_hash(texts), 0xe3be_dd00]);
            brain::latency(
                self.latency.mean_ms / EMBED_LATENCY_DIVISOR,
                self.latency.jitter,
                &mut rng,
            )
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(embedding::embed_all(texts, DEFAULT_EMBEDDING_DIM))
    }

    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
