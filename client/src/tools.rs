//! Client-provided tools (docs/PROTOCOL.md §10.6): tools this client answers itself for
//! one job, each an async closure, declared with
//! [`Client::execute_with_tools`](crate::Client::execute_with_tools).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use enclave_proto::v1::{self, RecordKind, SubmitToolResult, ToolInfo, tool_result};
use futures::future::BoxFuture;
use prost::Message;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::connection::Session;

type Handler = Arc<dyn Fn(Value) -> BoxFuture<'static, Result<Value, String>> + Send + Sync>;

/// The tools a job's script may call that this client answers: name, description,
/// argument schema, and the closure that answers. The broker checks the arguments
/// against the schema before the call reaches the closure.
///
/// ```no_run
/// # async fn example(client: enclave_client::Client) {
/// use enclave_client::ClientTools;
/// use serde_json::json;
/// let tools = ClientTools::new().tool(
///     "orders:count",
///     "How many orders a customer has.",
///     json!({"type": "object", "properties": {"customer": {"type": "string"}}, "required": ["customer"]}),
///     |args| async move {
///         let customer = args["customer"].as_str().unwrap_or_default().to_owned();
///         Ok(json!(customer.len()))
///     },
/// );
/// let events = client.execute_with_tools(
///     enclave_client::Job { code: "return await callTool('orders:count', {customer: 'ada'})".into(), ..Default::default() },
///     tools,
/// );
/// # drop(events); }
/// ```
#[derive(Clone, Default)]
pub struct ClientTools {
    tools: BTreeMap<String, (ToolInfo, Handler)>,
}

impl std::fmt::Debug for ClientTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tools.keys()).finish()
    }
}

impl ClientTools {
    pub fn new() -> ClientTools {
        ClientTools::default()
    }

    /// Adds a tool. `handler` gets the script's arguments and answers the value the
    /// script's promise resolves with, or the message of the `Error` it rejects with.
    pub fn tool<F, Fut>(
        mut self,
        name: impl Into<String>,
        description: impl Into<String>,
        input_schema: Value,
        handler: F,
    ) -> ClientTools
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, String>> + Send + 'static,
    {
        let name = name.into();
        let info = ToolInfo {
            name: name.clone(),
            description: description.into(),
            input_schema_json: input_schema.to_string(),
        };
        let handler: Handler = Arc::new(move |args| Box::pin(handler(args)));
        self.tools.insert(name, (info, handler));
        self
    }

    pub(crate) fn declared(&self) -> Vec<ToolInfo> {
        self.tools.values().map(|(info, _)| info.clone()).collect()
    }
}

/// Answers the job's calls of the client's tools, on the job's own call. Dropping it
/// (with the event stream) stops the closures still running: they hold the call's
/// sending side open, and the call must end for the broker to see the client gone.
pub(crate) struct Answerer {
    pub(crate) tools: ClientTools,
    pub(crate) session: Arc<Session>,
    pub(crate) stream_seq: u64,
    pub(crate) answers: mpsc::Sender<v1::SealedRecord>,
    pub(crate) running: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

impl Answerer {
    /// Starts answering `call` if it is one of the client's tools. The answer goes out
    /// when the closure finishes; other events keep flowing meanwhile.
    pub(crate) fn on_tool_call(&self, call_id: u64, name: &str, args_json: &str) {
        let Some((_, handler)) = self.tools.tools.get(name) else {
            return;
        };
        let args = serde_json::from_str(args_json).unwrap_or(Value::Null);
        let answer = handler(args);
        let session = self.session.clone();
        let answers = self.answers.clone();
        let stream_seq = self.stream_seq;
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Finished answers leave the set as they finish, not only at the end.
        while running.try_join_next().is_some() {}
        running.spawn(async move {
            let outcome = match answer.await {
                Ok(value) => tool_result::Outcome::ResultJson(value.to_string()),
                Err(message) => tool_result::Outcome::Error(message),
            };
            let submitted = SubmitToolResult {
                stream_seq,
                result: Some(v1::ToolResult {
                    call_id,
                    outcome: Some(outcome),
                }),
            };
            match session.seal(RecordKind::ToolResult, &submitted.encode_to_vec()) {
                // The job may be over (the call timed out at the broker): nothing to do.
                Ok(record) => {
                    let _ = answers.send(record).await;
                }
                Err(e) => tracing::warn!("sealing a tool answer: {e}"),
            }
        });
    }
}
