//! [`Client`]: the handle applications keep and clone.

use std::sync::Arc;

use enclave_proto::v1::{self, ExecuteRequest, Job, RecordKind, SecurityLevel, ToolInfo};
use prost::Message;

use crate::builder::ClientBuilder;
use crate::connection::{Connection, SessionInfo};
use crate::error::ClientError;
use crate::outcome::Execution;
use crate::stream::EventStream;
use crate::tools::ClientTools;

/// A connection to one broker with one end-to-end encrypted session.
///
/// Cheap to clone (an `Arc`); clones share the session, and any number of requests may
/// run at once. Expired sessions are replaced transparently (see the crate docs).
#[derive(Clone)]
pub struct Client {
    connection: Arc<Connection>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session", &self.connection.info())
            .finish()
    }
}

impl Client {
    pub fn builder(server: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(server)
    }

    pub(crate) fn from_connection(connection: Connection) -> Self {
        Client {
            connection: Arc::new(connection),
        }
    }

    /// Makes sure a session exists, running the handshake if there is none (after
    /// [`Client::close`], or when a previous one failed). Requests do this on their
    /// own; calling it surfaces a wrong pin or a refused client key early.
    pub async fn connect(&self) -> Result<SessionInfo, ClientError> {
        let _session = self.connection.session().await?;
        self.connection
            .info()
            .ok_or_else(|| ClientError::invalid_reply("session closed while connecting"))
    }

    /// Runs `code` at the client's default level and waits for the whole result.
    pub async fn execute(&self, code: impl Into<String>) -> Result<Execution, ClientError> {
        self.execute_job(job(code)).await
    }

    /// Runs a job (level, limit overrides, `input`) and waits for the whole result.
    pub async fn execute_job(&self, job: Job) -> Result<Execution, ClientError> {
        let Some(timeout) = self.connection.request_timeout() else {
            return self.execute_now(job).await;
        };
        tokio::time::timeout(timeout, self.execute_now(job))
            .await
            .unwrap_or_else(|_| Err(ClientError::deadline(timeout)))
    }

    async fn execute_now(&self, job: Job) -> Result<Execution, ClientError> {
        let request = self.request(job);
        let sent = self
            .connection
            .send(
                RecordKind::ExecuteRequest,
                &request,
                |mut grpc, record| async move { Ok(grpc.execute(record).await?.into_inner()) },
            )
            .await?;
        let plaintext =
            sent.session
                .open_reply(sent.seq, RecordKind::ExecuteResult, &sent.answer)?;
        let reply = v1::ExecuteResult::decode(plaintext.as_slice())
            .map_err(|e| ClientError::invalid_reply(format!("ExecuteResult: {e}")))?;
        Execution::from_reply(reply)
    }

    /// Runs `code` and yields its events as they happen.
    pub fn execute_streaming(&self, code: impl Into<String>) -> EventStream {
        self.execute_streaming_job(job(code))
    }

    pub fn execute_streaming_job(&self, job: Job) -> EventStream {
        EventStream::new(self.connection.clone(), self.request(job), None)
    }

    /// Runs a job whose script may also call `tools`, which this client answers itself
    /// (docs/PROTOCOL.md §10.6): their calls arrive as `ToolCall` events and are
    /// answered by their closures while the events go on. Only this job sees them.
    pub fn execute_with_tools(&self, job: Job, tools: ClientTools) -> EventStream {
        let mut request = self.execute_request(job);
        request.client_tools = tools.declared();
        EventStream::new(
            self.connection.clone(),
            request.encode_to_vec(),
            Some(tools),
        )
    }

    /// The tools this session's scripts may call (`ListTools`), sorted by name, each with
    /// its description and the JSON Schema of its arguments: what to tell an agent.
    pub async fn list_tools(&self) -> Result<Vec<ToolInfo>, ClientError> {
        let call = async {
            let sent =
                self.connection
                    .send(
                        RecordKind::ListToolsRequest,
                        &v1::ListToolsRequest {}.encode_to_vec(),
                        |mut grpc, record| async move {
                            Ok(grpc.list_tools(record).await?.into_inner())
                        },
                    )
                    .await?;
            let plaintext =
                sent.session
                    .open_reply(sent.seq, RecordKind::ListToolsResult, &sent.answer)?;
            let reply = v1::ListToolsResponse::decode(plaintext.as_slice())
                .map_err(|e| ClientError::invalid_reply(format!("ListToolsResponse: {e}")))?;
            Ok(reply.tools)
        };
        match self.connection.request_timeout() {
            None => call.await,
            Some(timeout) => tokio::time::timeout(timeout, call)
                .await
                .unwrap_or_else(|_| Err(ClientError::deadline(timeout))),
        }
    }

    /// Moves both directions of the session to new keys now. Automatic rekeying (the
    /// builder's `rekey_policy`) makes calling this unnecessary in normal use.
    pub async fn rekey(&self) -> Result<(), ClientError> {
        self.connection.rekey().await
    }

    /// Ends the session on the broker. The client stays usable: the next request runs a
    /// new handshake. Sessions are not closed on drop (that would need an RPC in
    /// `Drop`); the broker expires idle ones.
    pub async fn close(&self) -> Result<(), ClientError> {
        self.connection.close().await
    }

    /// The current session, if one is established.
    pub fn session(&self) -> Option<SessionInfo> {
        self.connection.info()
    }

    fn request(&self, job: Job) -> Vec<u8> {
        self.execute_request(job).encode_to_vec()
    }

    fn execute_request(&self, mut job: Job) -> ExecuteRequest {
        if job.level == SecurityLevel::Unspecified as i32 {
            job.level = self.connection.default_level() as i32;
        }
        ExecuteRequest {
            job: Some(job),
            ..Default::default()
        }
    }
}

fn job(code: impl Into<String>) -> Job {
    Job {
        code: code.into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_and_stream_can_cross_tasks() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        fn check_stream<T: Send + Unpin + 'static>() {}
        check::<Client>();
        check_stream::<EventStream>();
    }
}
