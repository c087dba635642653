//! OpenAI-compatible chat completions and embeddings (OpenAI, Ollama, vLLM, CLOVA Studio's
//! OpenAI endpoint).

use std::fmt;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::JsonMode;
use crate::http::{self, Secret};
use crate::{
    ChatRequest, ChatResponse, EmbedResponse, Provider, ProviderError, ResponseFormat, Usage,
};

pub(crate) struct OpenAi {
    name: String,
    model: String,
    endpoint: String,
    /// `{base_url}/embeddings`
    embeddings: String,
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
        let base = base_url.trim_end_matches('/');
        OpenAi {
            name: name.to_owned(),
            model: model.to_owned(),
            endpoint: format!("{base}/chat/completions"),
            embeddings: format!("{base}/embeddings"),
            key,
            json_mode,
            client,
        }
    }

    /// POSTs `body` to `url` with the key, if any, and decodes the 2xx answer.
    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        body: &Value,
    ) -> Result<T, ProviderError> {
        let mut post = self.client.post(url).json(body);
        if let Some(key) = &self.key {
            post = post.header(reqwest::header::AUTHORIZATION, key.header("Bearer ")?);
        }
        let secrets: Vec<&Secret> = self.key.iter().collect();
        http::send_json(post, &secrets).await
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
            .field("embeddings", &self.embeddings)
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

#[derive(Deserialize)]
struct Embeddings {
    data: Vec<Embedding>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Embedding {
    /// OpenAI always sends it; a server that leaves it out is taken to answer in order.
    #[serde(default)]
    index: Option<usize>,
    embedding: Vec<f32>,
}

/// The vectors of an embeddings answer in input order, checked: one per input, each
/// non-empty, all of one length, every value finite.
fn ordered_vectors(data: Vec<Embedding>, inputs: usize) -> Result<Vec<Vec<f32>>, ProviderError> {
    let bad = |what: String| Err(ProviderError::BadResponse(what));
    if data.len() != inputs {
        return bad(format!("{} embeddings for {inputs} inputs", data.len()));
    }
    let mut slots: Vec<Option<Vec<f32>>> = vec![None; inputs];
    for (position, item) in data.into_iter().enumerate() {
        let index = item.index.unwrap_or(position);
        match slots.get_mut(index) {
            Some(slot @ None) => *slot = Some(item.embedding),
            Some(Some(_)) => return bad(format!("embedding index {index} given twice")),
            None => return bad(format!("embedding index {index} for {inputs} inputs")),
        }
    }
    // Every slot is filled: as many items as slots, none twice.
    let vectors: Vec<Vec<f32>> = slots.into_iter().flatten().collect();
    let dim = vectors.first().map_or(0, Vec::len);
    for (i, vector) in vectors.iter().enumerate() {
        if vector.is_empty() {
            return bad(format!("embedding {i} is empty"));
        }
        if vector.len() != dim {
            return bad(format!(
                "embedding {i} has {} dimensions, embedding 0 has {dim}",
                vector.len()
            ));
        }
        if let Some(at) = vector.iter().position(|v| !v.is_finite()) {
            return bad(format!(
                "embedding {i} has a non-finite value at {at} ({})",
                vector[at]
            ));
        }
    }
    Ok(vectors)
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
        let completion: Completion = self.post(&self.endpoint, &self.body(request)).await?;
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

    async fn embed(&self, texts: &[String]) -> Result<EmbedResponse, ProviderError> {
        if texts.is_empty() {
            return Ok(EmbedResponse {
                vectors: Vec::new(),
                usage: Usage::default(),
            });
        }
        let body = json!({"model": self.model, "input": texts});
        let answer: Embeddings = self.post(&self.embeddings, &body).await?;
        let vectors = ordered_vectors(answer.data, texts.len())?;
        let usage = answer.usage.map_or(Usage::default(), |u| Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        });
        Ok(EmbedResponse { vectors, usage })
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
        assert_eq!(
            provider(JsonMode::Off).embeddings,
            "http://127.0.0.1:1/v1/embeddings"
        );
    }

    fn data(json: Value) -> Vec<Embedding> {
        serde_json::from_value::<Embeddings>(json!({ "data": json }))
            .expect("embeddings shape")
            .data
    }

    #[test]
    fn embeddings_are_put_in_input_order() {
        let answer = data(json!([
            {"index": 2, "embedding": [0.0, 3.0]},
            {"index": 0, "embedding": [1.0, 0.0]},
            {"index": 1, "embedding": [0.0, 2.0]},
        ]));
        assert_eq!(
            ordered_vectors(answer, 3).expect("valid"),
            vec![vec![1.0, 0.0], vec![0.0, 2.0], vec![0.0, 3.0]]
        );
        let no_index = data(json!([{"embedding": [1.0]}, {"embedding": [2.0]}]));
        assert_eq!(
            ordered_vectors(no_index, 2).expect("valid"),
            vec![vec![1.0], vec![2.0]]
        );
    }

    #[test]
    fn bad_embeddings_are_bad_responses() {
        let cases = [
            (
                json!([{"index": 0, "embedding": [1.0]}]),
                "1 embeddings for 2 inputs",
            ),
            (
                json!([{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]),
                "index 0 given twice",
            ),
            (
                json!([{"index": 0, "embedding": [1.0]}, {"index": 5, "embedding": [1.0]}]),
                "index 5 for 2 inputs",
            ),
            (
                json!([{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": []}]),
                "embedding 1 is empty",
            ),
            (
                json!([{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [1.0, 2.0]}]),
                "embedding 1 has 2 dimensions",
            ),
            // Too big for an f32: decodes as infinity.
            (
                json!([{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [1e39]}]),
                "non-finite value at 0",
            ),
        ];
        for (json, expected) in cases {
            match ordered_vectors(data(json.clone()), 2) {
                Err(ProviderError::BadResponse(message)) => {
                    assert!(message.contains(expected), "{json}: {message}")
                }
                other => panic!("{json}: {other:?}"),
            }
        }
    }
}
