//! OpenAI-compatible chat completions (OpenAI, Ollama, vLLM, CLOVA Studio's OpenAI endpoint).

use std::fmt;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::JsonMode;
use crate::http::{self, Secret};
use crate::{ChatRequest, ChatResponse, Provider, ProviderError, ResponseFormat, Usage};

pub(crate) struct OpenAi {
    name: String,
    model: String,
    endpoint: String,
    key: Option<Secret>,
    json_mode: JsonMode,
    client: reqwest::Client,
}

impl OpenAi {
    pub(crate) fn new(
        name: &str,
        base_url: &str,
        model: &str,
        key: Option<Secret>,
        json_mode: JsonMode,
        client: reqwest::Client,
    ) -> OpenAi {
        OpenAi {
            name: name.to_owned(),
            model: model.to_owned(),
            endpoint: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            key,
            json_mode,
            client,
        }
    }

    fn body(&self, request: &ChatRequest) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), json!(self.model));
        body.insert("messages".into(), json!(request.messages));
        if let Some(t) = request.temperature {
            body.insert(
                "temperature".into(),
                json!(http::two_decimals(f64::from(t))),
            );
        }
        if let Some(m) = request.max_tokens {
            body.insert("max_tokens".into(), json!(m));
        }
        let format = match (&request.response, self.json_mode) {
            (ResponseFormat::Text, _) | (_, JsonMode::Off) => None,
            (ResponseFormat::JsonObject, _)
            | (ResponseFormat::JsonSchema { .. }, JsonMode::Object) => {
                Some(json!({"type": "json_object"}))
            }
            (ResponseFormat::JsonSchema { name, schema }, JsonMode::Schema) => Some(json!({
                "type": "json_schema",
                "json_schema": {"name": name, "schema": schema, "strict": true}
            })),
        };
        if let Some(format) = format {
            body.insert("response_format".into(), format);
        }
        Value::Object(body)
    }
}

impl fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAi")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field("api_key", &self.key)
            .field("json_mode", &self.json_mode)
            .finish()
    }
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[async_trait::async_trait]
impl Provider for OpenAi {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "openai"
    }

    fn model(&self) -> &str {
        &self.model
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let mut post = self.client.post(&self.endpoint).json(&self.body(request));
        if let Some(key) = &self.key {
            post = post.header(reqwest::header::AUTHORIZATION, key.header("Bearer ")?);
        }
        let secrets: Vec<&Secret> = self.key.iter().collect();
        let completion: Completion = http::send_json(post, &secrets).await?;
        let Some(choice) = completion.choices.into_iter().next() else {
            return Err(ProviderError::BadResponse(
                "no choices in completion".into(),
            ));
        };
        let content = match (choice.message.content, choice.message.refusal) {
            (Some(content), _) => content,
            (None, Some(refusal)) => {
                return Err(ProviderError::BadResponse(format!(
                    "model refused: {refusal}"
                )))
            }
            (None, None) => return Err(ProviderError::BadResponse("choice has no content".into())),
        };
        let usage = completion.usage.map_or(Usage::default(), |u| Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        });
        Ok(ChatResponse { content, usage })
    }

    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChatMessage, Role};

    fn provider(json_mode: JsonMode) -> OpenAi {
        OpenAi::new(
            "t",
            "http://127.0.0.1:1/v1/",
            "gpt-test",
            None,
            json_mode,
            reqwest::Client::new(),
        )
    }

    fn request(response: ResponseFormat) -> ChatRequest {
        ChatRequest {
            messages: vec![ChatMessage {
                role: Role::User,
                content: "hi".into(),
            }],
            response,
            temperature: Some(0.9),
            max_tokens: Some(100),
        }
    }

    #[test]
    fn body_follows_json_mode() {
        let schema = ResponseFormat::JsonSchema {
            name: "items".into(),
            schema: json!({"type": "object"}),
        };
        let body = provider(JsonMode::Schema).body(&request(schema.clone()));
        assert_eq!(body["model"], "gpt-test");
        assert_eq!(body["messages"][0]["role"], "user");
        assert_eq!(body["temperature"], 0.9);
        assert_eq!(body["max_tokens"], 100);
        assert_eq!(body["response_format"]["type"], "json_schema");
        assert_eq!(body["response_format"]["json_schema"]["name"], "items");
        assert_eq!(body["response_format"]["json_schema"]["strict"], true);
        let body = provider(JsonMode::Object).body(&request(schema.clone()));
        assert_eq!(body["response_format"], json!({"type": "json_object"}));
        let body = provider(JsonMode::Off).body(&request(schema));
        assert!(body.get("response_format").is_none());
        let body = provider(JsonMode::Schema).body(&request(ResponseFormat::Text));
        assert!(body.get("response_format").is_none());
        assert_eq!(
            provider(JsonMode::Off).endpoint,
            "http://127.0.0.1:1/v1/chat/completions"
        );
    }
}
