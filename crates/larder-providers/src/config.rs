//! The `[[providers]]` section of Larder's TOML config.

use serde::{Deserialize, Serialize};

use crate::ProviderError;

/// One `[[providers]]` entry of Larder's TOML config:
///
/// ```toml
/// [[providers]]
/// name = "gpt-4o-main"
/// kind = "openai"
/// base_url = "https://api.openai.com/v1"
/// model = "gpt-4o-mini"
/// api_key_env = "OPENAI_API_KEY"
/// limits = { concurrency = 4, requests_per_minute = 500 }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderConfig {
    pub name: String,
    #[serde(flatten)]
    pub kind: ProviderKind,
    #[serde(default)]
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ProviderKind {
    /// OpenAI-compatible chat completions: OpenAI, Ollama, vLLM, CLOVA Studio's
    /// OpenAI-compatible endpoint.
    Openai {
        base_url: String,
        model: String,
        #[serde(default)]
        api_key_env: Option<String>,
        #[serde(default)]
        json_mode: JsonMode,
    },
    /// CLOVA Studio native v1: `POST {base_url}/testapp/v1/chat-completions/{model}`.
    ClovaV1 {
        base_url: String,
        model: String,
        api_key_env: String,
        #[serde(default)]
        gateway_key_env: Option<String>,
        #[serde(default)]
        sampling: ClovaSampling,
    },
    /// CLOVA Studio native v3: `POST {base_url}/v3/chat-completions/{model}`,
    /// `Authorization: Bearer`.
    ClovaV3 {
        base_url: String,
        model: String,
        api_key_env: String,
        #[serde(default)]
        sampling: ClovaSampling,
    },
    /// In-process, deterministic per seed.
    Simulated {
        #[serde(default)]
        seed: u64,
        #[serde(default)]
        model: Option<String>,
        #[serde(default)]
        latency: Latency,
    },
}

/// How an OpenAI-compatible server is asked for JSON. Servers differ: OpenAI and vLLM take
/// `json_schema`, older Ollama builds only `json_object`, some proxies neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonMode {
    /// Send no `response_format`; the prompt alone asks for JSON.
    Off,
    /// Send `{"type":"json_object"}` even when a schema is available.
    Object,
    /// Send the schema when the request has one (`{"type":"json_schema",…}`).
    #[default]
    Schema,
}

/// CLOVA Studio sampling parameters. A request's own `temperature`/`max_tokens` win over
/// these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClovaSampling {
    pub top_p: f64,
    pub top_k: u32,
    pub temperature: f64,
    pub max_tokens: u32,
    /// Sent as `repeatPenalty` (v1) or `repetitionPenalty` (v3).
    pub repeat_penalty: f64,
}

impl Default for ClovaSampling {
    fn default() -> Self {
        ClovaSampling {
            top_p: 0.8,
            top_k: 0,
            temperature: 0.5,
            max_tokens: 512,
            repeat_penalty: 1.1,
        }
    }
}

/// Simulated latency: log-normal with the given mean; `jitter` is the log-space sigma.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Latency {
    /// 0 = answer at once.
    pub mean_ms: u64,
    /// 0 = always exactly `mean_ms`.
    pub jitter: f64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            mean_ms: 0,
            jitter: 0.25,
        }
    }
}

/// The limits layer every built provider goes through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Requests in flight at once (per provider).
    pub concurrency: usize,
    /// 0 = unlimited. Requests are spaced evenly (no burst), so 120 means one every 500 ms.
    pub requests_per_minute: u32,
    /// Per attempt; 0 = no timeout.
    pub timeout_ms: u64,
    /// Attempts after the first.
    pub max_retries: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Prompt plus completion tokens per UTC day; 0 = unlimited. Once spent, calls fail at
    /// once (no HTTP) until midnight UTC. A call in flight may pass it by its own tokens.
    pub tokens_per_day: u64,
    /// HTTP attempts (retries included) per UTC day; 0 = unlimited.
    pub requests_per_day: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            concurrency: 8,
            requests_per_minute: 0,
            timeout_ms: 30_000,
            max_retries: 4,
            backoff_base_ms: 200,
            backoff_max_ms: 20_000,
            tokens_per_day: 0,
            requests_per_day: 0,
        }
    }
}

impl ProviderConfig {
    /// Checks what serde cannot: non-empty names, usable URLs, sane limits.
    pub fn validate(&self) -> Result<(), ProviderError> {
        let bad = |what: String| {
            Err(ProviderError::Config(format!(
                "provider {:?}: {what}",
                self.name
            )))
        };
        if self.name.trim().is_empty() {
            return Err(ProviderError::Config(
                "provider name must not be empty".into(),
            ));
        }
        if self.limits.concurrency == 0 {
            return bad("limits.concurrency must be at least 1".into());
        }
        if self.limits.backoff_base_ms > self.limits.backoff_max_ms {
            return bad("limits.backoff_base_ms must not exceed limits.backoff_max_ms".into());
        }
        match &self.kind {
            ProviderKind::Openai {
                base_url, model, ..
            }
            | ProviderKind::ClovaV1 {
                base_url, model, ..
            }
            | ProviderKind::ClovaV3 {
                base_url, model, ..
            } => {
                if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                    return bad(format!(
                        "base_url must start with http:// or https://, got {base_url:?}"
                    ));
                }
                if model.trim().is_empty() {
                    return bad("model must not be empty".into());
                }
            }
            ProviderKind::Simulated { latency, .. } => {
                if !latency.jitter.is_finite() || latency.jitter < 0.0 {
                    return bad("latency.jitter must be a finite number >= 0".into());
                }
            }
        }
        if let ProviderKind::ClovaV1 { sampling, .. } | ProviderKind::ClovaV3 { sampling, .. } =
            &self.kind
        {
            let finite = [
                sampling.top_p,
                sampling.temperature,
                sampling.repeat_penalty,
            ]
            .iter()
            .all(|v| v.is_finite());
            if !finite {
                return bad("sampling values must be finite numbers".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_entry_with_defaults() {
        let config: ProviderConfig = serde_json::from_value(serde_json::json!({
            "name": "local", "kind": "openai",
            "base_url": "http://127.0.0.1:11434/v1", "model": "llama3"
        }))
        .expect("valid entry");
        assert_eq!(config.limits, Limits::default());
        assert_eq!(
            config.kind,
            ProviderKind::Openai {
                base_url: "http://127.0.0.1:11434/v1".into(),
                model: "llama3".into(),
                api_key_env: None,
                json_mode: JsonMode::Schema,
            }
        );
        config.validate().expect("valid");
    }

    #[test]
    fn clova_entry_with_partial_sampling_and_limits() {
        let config: ProviderConfig = serde_json::from_value(serde_json::json!({
            "name": "hcx", "kind": "clova-v3",
            "base_url": "https://clovastudio.stream.ntruss.com", "model": "HCX-005",
            "api_key_env": "CLOVA_KEY",
            "sampling": {"temperature": 0.3},
            "limits": {"concurrency": 2, "requests_per_minute": 60}
        }))
        .expect("valid entry");
        let ProviderKind::ClovaV3 { sampling, .. } = &config.kind else {
            panic!("wrong kind: {:?}", config.kind);
        };
        assert_eq!(sampling.temperature, 0.3);
        assert_eq!(sampling.top_p, 0.8);
        assert_eq!(sampling.max_tokens, 512);
        assert_eq!(config.limits.concurrency, 2);
        assert_eq!(config.limits.timeout_ms, 30_000);
        let back: ProviderConfig =
            serde_json::from_value(serde_json::to_value(&config).expect("serialize"))
                .expect("round trip");
        assert_eq!(back, config);
    }

    #[test]
    fn simulated_and_kind_names() {
        let config: ProviderConfig = serde_json::from_str(
            r#"{"name":"sim","kind":"simulated","seed":7,"latency":{"mean_ms":5}}"#,
        )
        .expect("valid entry");
        assert_eq!(
            config.kind,
            ProviderKind::Simulated {
                seed: 7,
                model: None,
                latency: Latency {
                    mean_ms: 5,
                    jitter: 0.25
                }
            }
        );
        let v1: Result<ProviderConfig, _> = serde_json::from_str(
            r#"{"name":"a","kind":"clova-v1","base_url":"https://x","model":"HCX-003","api_key_env":"K"}"#,
        );
        assert!(v1.is_ok(), "{v1:?}");
        let unknown: Result<ProviderConfig, _> =
            serde_json::from_str(r#"{"name":"a","kind":"gemini"}"#);
        assert!(unknown.is_err());
    }

    #[test]
    fn validation_rejects_bad_values() {
        let mut config = ProviderConfig {
            name: "x".into(),
            kind: ProviderKind::Openai {
                base_url: "api.openai.com".into(),
                model: "m".into(),
                api_key_env: None,
                json_mode: JsonMode::Off,
            },
            limits: Limits::default(),
        };
        assert!(
            matches!(config.validate(), Err(ProviderError::Config(m)) if m.contains("base_url"))
        );
        config.kind = ProviderKind::Simulated {
            seed: 0,
            model: None,
            latency: Latency::default(),
        };
        config.limits.concurrency = 0;
        assert!(
            matches!(config.validate(), Err(ProviderError::Config(m)) if m.contains("concurrency"))
        );
    }
}
