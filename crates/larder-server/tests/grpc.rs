//! The gRPC API (`larder.v1.Embeddings`) against a real server, with the generated client:
//! the same data, validation, limits, auth and degraded answers as HTTP, and reflection.

mod common;

use std::net::SocketAddr;

use common::TestServer;
use larder_server::config::{Auth, Config};
use larder_server::grpc::pb::embeddings_client::EmbeddingsClient;
use larder_server::grpc::pb::{LookupRequest, Tensor, UpsertRequest};
use reqwest::StatusCode;
use serde_json::json;
use tonic::transport::Channel;

async fn server() -> (TestServer, EmbeddingsClient<Channel>, SocketAddr) {
    let port = larder_testkit::support::free_port().expect("free port");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let s = TestServer::start(Config {
        ephemeral: true,
        grpc_listen: Some(addr),
        auth: Auth {
            write_tokens: vec!["writer".into()],
            read_tokens: vec!["reader".into()],
        },
        ..Config::default()
    })
    .await;
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = EmbeddingsClient::connect(format!("http://{addr}")).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    (s, client.expect("gRPC server answers"), addr)
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_and_upsert_over_grpc_match_http() {
    let (s, mut grpc, _) = server().await;
    let http = reqwest::Client::new();
    let resp = http
        .put(s.url("/v1/namespaces/emb"))
        .bearer_auth("writer")
        .json(&json!({"fields": {"text": {"dim": 3, "dtype": "f32"}, "q": {"dim": 4, "dtype": "i8"}}}))
        .send()
        .await
        .expect("put namespace");
    assert_eq!(resp.status(), StatusCode::OK);

    // Upsert two entities; the second has no `q` (its present byte is 0).
    let upserted = grpc
        .upsert(with_token(
            UpsertRequest {
                namespace: "emb".into(),
                keys: vec!["a".into(), "b".into()],
                tensors: vec![
                    Tensor {
                        name: "text".into(),
                        dtype: "F32".into(),
                        shape: vec![2, 3],
                        data: f32_bytes(&[0.1, 0.2, 0.3, -1.0, 0.5, 2.0]),
                        ..Tensor::default()
                    },
                    Tensor {
                        name: "q".into(),
                        dtype: "F32".into(),
                        shape: vec![2, 4],
                        data: f32_bytes(&[1.0, -1.0, 0.5, 0.0, 9.0, 9.0, 9.0, 9.0]),
                        present: vec![1, 0],
                        ..Tensor::default()
                    },
                ],
            },
            "writer",
        ))
        .await
        .expect("upsert")
        .into_inner();
    assert_eq!(upserted.upserted, 2);

    let answer = grpc
        .lookup(with_token(
            LookupRequest {
                namespace: "emb".into(),
                keys: vec!["b".into(), "nobody".into(), "a".into()],
                fields: vec!["text".into(), "q".into()],
                dtype: String::new(),
            },
            "reader",
        ))
        .await
        .expect("lookup")
        .into_inner();
    assert!(!answer.degraded);
    assert_eq!(answer.missing, vec!["nobody".to_owned()]);
    let text = &answer.tensors[0];
    assert_eq!((text.name.as_str(), text.dtype.as_str()), ("text", "F32"));
    assert_eq!(text.shape, vec![3, 3]);
    assert_eq!(
        text.data,
        f32_bytes(&[-1.0, 0.5, 2.0, 0.0, 0.0, 0.0, 0.1, 0.2, 0.3])
    );
    assert_eq!(text.present, vec![1, 0, 1]);
    // The same rows as the HTTP JSON answer, value for value.
    let body: serde_json::Value = http
        .post(s.url("/v1/namespaces/emb/lookup"))
        .bearer_auth("reader")
        .json(&json!({"keys": ["b", "nobody", "a"], "fields": ["text", "q"]}))
        .send()
        .await
        .expect("http lookup")
        .json()
        .await
        .expect("json");
    let q = &answer.tensors[1];
    for (row, result) in body["results"].as_array().expect("rows").iter().enumerate() {
        for (field, tensor) in [("text", text), ("q", q)] {
            let dim = tensor.shape[1] as usize;
            let grpc_row: Vec<f32> = tensor.data[row * dim * 4..(row + 1) * dim * 4]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            match result["fields"][field].as_array() {
                Some(values) => {
                    // JSON carries the shortest text that round-trips the f32.
                    let http_row: Vec<f32> = values
                        .iter()
                        .map(|v| v.as_f64().expect("num") as f32)
                        .collect();
                    assert_eq!(grpc_row, http_row, "{field} row {row}");
                }
                None => assert!(grpc_row.iter().all(|v| *v == 0.0), "{field} row {row}"),
            }
        }
    }

    // Stored dtype: i8 bytes and a scale per row.
    let stored = grpc
        .lookup(with_token(
            LookupRequest {
                namespace: "emb".into(),
                keys: vec!["a".into()],
                fields: vec!["q".into()],
                dtype: "stored".into(),
            },
            "reader",
        ))
        .await
        .expect("stored lookup")
        .into_inner();
    let q = &stored.tensors[0];
    assert_eq!((q.dtype.as_str(), q.shape.clone()), ("I8", vec![1, 4]));
    assert_eq!(q.data.len(), 4);
    assert_eq!(q.scale.len(), 4);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_errors_carry_the_contract_codes() {
    let (s, mut grpc, addr) = server().await;
    let lookup = |namespace: &str, keys: Vec<String>| LookupRequest {
        namespace: namespace.into(),
        keys,
        fields: Vec::new(),
        dtype: String::new(),
    };
    let status = grpc
        .lookup(tonic::Request::new(lookup("emb", vec!["a".into()])))
        .await
        .expect_err("no token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().starts_with("unauthorized: "), "{status:?}");

    let status = grpc
        .lookup(with_token(lookup("nothing", vec!["a".into()]), "reader"))
        .await
        .expect_err("unknown namespace");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().starts_with("not_found: "), "{status:?}");

    let keys = (0..1001).map(|i| format!("k{i}")).collect();
    let status = grpc
        .lookup(with_token(lookup("nothing", keys), "reader"))
        .await
        .expect_err("too many keys");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.message().starts_with("too_large: "), "{status:?}");

    let upsert = UpsertRequest {
        namespace: "emb".into(),
        keys: vec!["a".into()],
        tensors: vec![Tensor {
            name: "v".into(),
            dtype: "F32".into(),
            shape: vec![1, 2],
            data: f32_bytes(&[1.0]),
            ..Tensor::default()
        }],
    };
    let status = grpc
        .upsert(with_token(upsert.clone(), "reader"))
        .await
        .expect_err("read token writes");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let status = grpc
        .upsert(with_token(upsert, "writer"))
        .await
        .expect_err("short data");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("dimension_mismatch: "),
        "{status:?}"
    );

    // Reflection lists the service, so generic clients can call it.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection call")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("reflection answer")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "larder.v1.Embeddings"),
        "{list:?}"
    );
    s.stop().await;
}
