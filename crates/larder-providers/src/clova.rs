//! CLOVA Studio's native chat completions, v1 (`X-NCP-CLOVASTUDIO-API-KEY`) and
//! v3 (`Authorization: Bearer`). Both answer `{"status":{"code":"20000",…},"result":{…}}`.

use std::fmt;

use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::ClovaSampling;
use crate::http::{self, Secret};
use crate::{ChatRequest, ChatResponse, Provider, ProviderError, Usage};

const API_KEY: HeaderName = HeaderName::from_static("x-ncp-clovastudio-api-key");
const GATEWAY_KEY: HeaderName = HeaderName::from_static("x-ncp-apigw-api-key");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-ncp-clovastudio-request-id");
const OK_CODE: &str = "20000";

pub(crate) enum Version {
    V1 { gateway_key: Option<Secret> },
    V3,
}

pub(crate) struct Clova {
    name: String,
    model: String,
    endpoint: String,
    key: Secret,
    version: Version,
    sampling: ClovaSampling,
    client: reqwest::Client,
}

impl Clova {
    pub(crate) fn new(
        name: &str,
        base_url: &str,
        model: &str,
        key: Secret,
        version: Version,
        sampling: ClovaSampling,
        client: reqwest::Client,
    ) -> Clova {
        let base = base_url.trim_end_matches('/');
        let endpoint = match version {
            Version::V1 { .. } => format!("{base}/testapp/v1/chat-completions/{model}"),
            Version::V3 => format!("{base}/v3/chat-completions/{model}"),
        };
        Clova {
            name: name.to_owned(),
            model: model.to_owned(),
            endpoint,
            key,
            version,
            sampling,
            client,
        }
    }

    fn body(&self, request: &ChatRequest) -> Value {
        let s = &self.sampling;
        // CLOVA documents 0 < temperature <= 1; an evaluator asking for 0.0 (greedy) gets the
        // smallest value CLOVA accepts instead of a 400.
        let temperature = request
            .temperature
            .map_or(s.temperature, f64::from)
            .clamp(0.01, 1.0);
        let penalty_field = match self.version {
            Version::V1 { .. } => "repeatPenalty",
            Version::V3 => "repetitionPenalty",
        };
        let mut body = json!({
            "messages": request.messages,
            "topP": http::two_decimals(s.top_p),
            "topK": s.top_k,
            "temperature": http::two_decimals(temperature),
            "maxTokens": request.max_tokens.unwrap_or(s.max_tokens),
        });
        body[penalty_field] = json!(http::two_decimals(s.repeat_penalty));
        body
    }

    fn secrets(&self) -> Vec<&Secret> {
        let mut secrets = vec![&self.key];
        if let Version::V1 {
            gateway_key: Some(g),
        } = &self.version
        {
            secrets.push(g);
        }
        secrets
    }
}

impl fmt::Debug for Clova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Clova");
        d.field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field("api_key", &self.key);
        if let Version::V1 { gateway_key } = &self.version {
            d.field("gateway_key", gateway_key);
        }
        d.field("sampling", &self.sampling).finish()
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    status: Option<Status>,
    #[serde(default)]
    result: Option<ResultBody>,
}

#[derive(Deserialize)]
struct Status {
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResultBody {
    message: Message,
    #[serde(default)]
    input_length: Option<u64>,
    #[serde(default)]
    output_length: Option<u64>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Message {
    content: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[async_trait::async_trait]
impl Provider for Clova {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        match self.version {
            Version::V1 { .. } => "clova-v1",
            Version::V3 => "clova-v3",
        }
    }

    fn model(&self) -> &str {
        &self.model
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let request_id = http::request_id();
        let mut post = self
            .client
            .post(&self.endpoint)
            .header(
                REQUEST_ID,
                HeaderValue::from_str(&request_id).map_err(|_| {
                    ProviderError::Config("request id is not a valid header value".into())
                })?,
            )
            .json(&self.body(request));
        post = match &self.version {
            Version::V1 { gateway_key } => {
                let mut post = post.header(API_KEY, self.key.header("")?);
                if let Some(g) = gateway_key {
                    post = post.header(GATEWAY_KEY, g.header("")?);
                }
                post
            }
            Version::V3 => post.header(AUTHORIZATION, self.key.header("Bearer ")?),
        };
        let envelope: Envelope = http::send_json(post, &self.secrets()).await?;
        if let Some(status) = &envelope.status {
            if status.code != OK_CODE {
                return Err(ProviderError::BadResponse(format!(
                    "CLOVA status {} ({}), request id {request_id}",
                    status.code, status.message
                )));
            }
        }
        let Some(result) = envelope.result else {
            return Err(ProviderError::BadResponse(format!(
                "CLOVA answer has no result, request id {request_id}"
            )));
        };
        let usage = match (&result.usage, result.input_length, result.output_length) {
            (Some(u), _, _) => Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
            },
            (None, input, output) => Usage {
                prompt_tokens: input.unwrap_or(0),
                completion_tokens: output.unwrap_or(0),
            },
        };
        Ok(ChatResponse {
            content: result.message.content,
            usage,
        })
    }

    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChatMessage, ResponseFormat, Role};

    fn clova(version: Version) -> Clova {
        Clova::new(
            "c",
            "https://clovastudio.example/",
            "HCX-003",
            Secret::new("k".into()),
            version,
            ClovaSampling::default(),
            reqwest::Client::new(),
        )
    }

    #[test]
    fn bodies_and_endpoints_per_version() {
        let request = ChatRequest {
            messages: vec![ChatMessage {
                role: Role::System,
                content: "s".into(),
            }],
            response: ResponseFormat::Text,
            temperature: Some(0.0),
            max_tokens: None,
        };
        let v1 = clova(Version::V1 { gateway_key: None });
        assert_eq!(
            v1.endpoint,
            "https://clovastudio.example/testapp/v1/chat-completions/HCX-003"
        );
        let body = v1.body(&request);
        assert_eq!(body["repeatPenalty"], 1.1);
        assert!(body.get("repetitionPenalty").is_none());
        assert_eq!(body["temperature"], 0.01);
        assert_eq!(body["maxTokens"], 512);
        assert_eq!(body["topP"], 0.8);
        assert_eq!(body["topK"], 0);
        assert_eq!(body["messages"][0]["role"], "system");
        let v3 = clova(Version::V3);
        assert_eq!(
            v3.endpoint,
            "https://clovastudio.example/v3/chat-completions/HCX-003"
        );
        let body = v3.body(&request);
        assert_eq!(body["repetitionPenalty"], 1.1);
        assert!(body.get("repeatPenalty").is_none());
        assert_eq!(v3.kind(), "clova-v3");
        assert_eq!(v1.kind(), "clova-v1");
    }
}
