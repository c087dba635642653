//! Helpers shared by this crate's integration tests: provider configs pointed at a
//! `MockServer`, and the protocol requests the pipeline sends.
#![allow(dead_code)]

use std::sync::Arc;

use larder_providers::mock::MockServer;
use larder_providers::protocol::{evaluation_request, generation_request, GenerationSpec, Rubric};
use larder_providers::{
    build, ChatRequest, ClovaSampling, JsonMode, Limits, Provider, ProviderConfig, ProviderKind,
};

/// Limits that keep tests fast: short backoff, generous concurrency.
pub fn fast_limits() -> Limits {
    Limits {
        concurrency: 64,
        requests_per_minute: 0,
        timeout_ms: 10_000,
        max_retries: 2,
        backoff_base_ms: 10,
        backoff_max_ms: 50,
        ..Limits::default()
    }
}

/// Sets an API-key variable for this test process. Each test uses its own variable name, so
/// parallel tests never race on one.
pub fn set_key(var: &str, value: &str) {
    std::env::set_var(var, value);
}

pub fn openai_config(server: &MockServer, key_env: Option<&str>, limits: Limits) -> ProviderConfig {
    ProviderConfig {
        name: "mock-openai".into(),
        kind: ProviderKind::Openai {
            base_url: server.openai_base_url(),
            model: "gpt-mock".into(),
            api_key_env: key_env.map(str::to_owned),
            json_mode: JsonMode::Schema,
        },
        limits,
    }
}

pub fn openai(server: &MockServer, limits: Limits) -> Arc<dyn Provider> {
    build(&openai_config(server, None, limits)).expect("openai provider")
}

pub fn clova_v1(
    server: &MockServer,
    key_env: &str,
    gateway_env: Option<&str>,
) -> Arc<dyn Provider> {
    build(&ProviderConfig {
        name: "mock-clova-v1".into(),
        kind: ProviderKind::ClovaV1 {
            base_url: server.base_url(),
            model: "HCX-003".into(),
            api_key_env: key_env.into(),
            gateway_key_env: gateway_env.map(str::to_owned),
            sampling: ClovaSampling::default(),
        },
        limits: fast_limits(),
    })
    .expect("clova v1 provider")
}

pub fn clova_v3(server: &MockServer, key_env: &str) -> Arc<dyn Provider> {
    build(&ProviderConfig {
        name: "mock-clova-v3".into(),
        kind: ProviderKind::ClovaV3 {
            base_url: server.base_url(),
            model: "HCX-005".into(),
            api_key_env: key_env.into(),
            sampling: ClovaSampling::default(),
        },
        limits: fast_limits(),
    })
    .expect("clova v3 provider")
}

pub fn korean_generation(count: usize) -> ChatRequest {
    generation_request(
        &GenerationSpec {
            category: "이사 준비".into(),
            description: Some("원룸에서 투룸으로".into()),
            locale: "ko".into(),
            count,
            max_chars: 30,
        },
        None,
    )
}

pub fn english_generation(category: &str, count: usize) -> ChatRequest {
    generation_request(
        &GenerationSpec {
            category: category.into(),
            description: None,
            locale: "en".into(),
            count,
            max_chars: 60,
        },
        None,
    )
}

pub fn score_request(locale: &str, items: &[String]) -> ChatRequest {
    let pairs: Vec<(String, String)> = items
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("item-{i}"), t.clone()))
        .collect();
    evaluation_request("이사 준비", locale, &pairs, &Rubric::Score)
}

pub fn pick_request(locale: &str, items: &[String], k: usize) -> ChatRequest {
    let pairs: Vec<(String, String)> = items
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("item-{i}"), t.clone()))
        .collect();
    evaluation_request("이사 준비", locale, &pairs, &Rubric::PickBest { k })
}
