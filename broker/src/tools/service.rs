//! gRPC tool services: the integrator's `enclave.v1.ToolService`, in any language.
//!
//! The broker lists the service's tools in the background ([`super::source`]) and
//! calls `Call` with the call's deadline as the gRPC deadline. As for webhooks, what
//! reaches the script on failure names the service, never its address.

use std::sync::Arc;
use std::time::Duration;

use enclave_proto::v1::tool_call_response::Outcome;
use enclave_proto::v1::tool_service_client::ToolServiceClient;
use enclave_proto::v1::{ToolCallRequest, ToolServiceListRequest};
use serde_json::Value;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use super::source::{ListFuture, Listed, Lister};
use super::webhook::MAX_ERROR_CHARS;
use super::{Tool, ToolContext, ToolError, ToolFuture, ToolSpec, ToolsError, shorten, unix_ms};
use crate::config::ToolServiceConfig;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a `List` answer may weigh: descriptions and schemas of many tools.
const MAX_LIST_BYTES: usize = 4 << 20;

struct Inner {
    service: String,
    channel: Channel,
    reveal: Vec<String>,
    max_answer_bytes: usize,
}

/// The service: lists its tools and is each of them.
pub(crate) struct GrpcService(Arc<Inner>);

impl GrpcService {
    pub(crate) fn new(
        service: &str,
        url: &str,
        config: &ToolServiceConfig,
        reveal: Vec<String>,
    ) -> Result<GrpcService, ToolsError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| ToolsError::Service {
                service: service.to_owned(),
                message: format!("grpc: {e}"),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        Ok(GrpcService(Arc::new(Inner {
            service: service.to_owned(),
            // Connects on first use and reconnects after a failure by itself.
            channel: endpoint.connect_lazy(),
            reveal,
            max_answer_bytes: config.max_result_bytes as usize + 1024,
        })))
    }
}

impl Inner {
    fn client(&self, max_bytes: usize) -> ToolServiceClient<Channel> {
        ToolServiceClient::new(self.channel.clone()).max_decoding_message_size(max_bytes)
    }

    fn fail(&self, message: impl std::fmt::Display) -> ToolError {
        ToolError::failed(format!("tool service `{}` {message}", self.service))
    }

    async fn call(&self, cx: &ToolContext<'_>, args: Value) -> Result<Value, ToolError> {
        let args_json = cx.secrets.reveal_in_json(&args.to_string(), &self.reveal);
        let left = cx.deadline.saturating_duration_since(Instant::now());
        let mut request = tonic::Request::new(ToolCallRequest {
            name: cx.name.to_owned(),
            args_json: args_json.to_string(),
            job_id: cx.job_id.to_owned(),
            deadline_unix_ms: unix_ms(cx.deadline),
        });
        request.set_timeout(left);
        let answer = self
            .client(self.max_answer_bytes)
            .call(request)
            .await
            .map_err(|status| {
                tracing::warn!(service = %self.service, code = ?status.code(), message = status.message(), "tool service call failed");
                match status.code() {
                    tonic::Code::Unavailable => self.fail("is unreachable"),
                    tonic::Code::DeadlineExceeded => self.fail("did not answer in time"),
                    tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
                        self.fail("answered more than its max_result_bytes")
                    }
                    code => self.fail(format_args!("failed the call ({code:?})")),
                }
            })?
            .into_inner();
        match answer.outcome {
            Some(Outcome::ResultJson(json)) => serde_json::from_str(&json)
                .map_err(|_| self.fail("answered a result that is not JSON")),
            Some(Outcome::Error(message)) => {
                Err(ToolError::failed(shorten(&message, MAX_ERROR_CHARS)))
            }
            None => Err(self.fail("answered neither a result nor an error")),
        }
    }
}

impl Lister for GrpcService {
    fn list(&self) -> ListFuture<'_> {
        Box::pin(async move {
            let listed = self
                .0
                .client(MAX_LIST_BYTES)
                .list(ToolServiceListRequest {})
                .await
                .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?
                .into_inner();
            let service = &self.0.service;
            Ok(listed
                .tools
                .into_iter()
                .filter_map(|tool| {
                    let schema = if tool.input_schema_json.trim().is_empty() {
                        Value::Object(Default::default())
                    } else {
                        match serde_json::from_str(&tool.input_schema_json) {
                            Ok(schema) => schema,
                            Err(e) => {
                                tracing::warn!(%service, tool = %tool.name, error = %e, "ignoring a listed tool whose schema is not JSON");
                                return None;
                            }
                        }
                    };
                    Some(Listed {
                        name: tool.name,
                        spec: ToolSpec::new(tool.description, schema),
                        tool: Arc::new(GrpcTool(self.0.clone())) as Arc<dyn Tool>,
                    })
                })
                .collect())
        })
    }
}

/// One listed tool: calls go to its service under the name the script used.
struct GrpcTool(Arc<Inner>);

impl Tool for GrpcTool {
    fn call<'a>(&'a self, cx: &'a ToolContext<'a>, args: Value) -> ToolFuture<'a> {
        Box::pin(self.0.call(cx, args))
    }
}
