//! Client for the enclave broker: run untrusted JavaScript in the broker's sandbox over an
//! end-to-end encrypted session (protocol v1, docs/PROTOCOL.md).
//!
//! ```no_run
//! # async fn example() -> Result<(), enclave_client::ClientError> {
//! use enclave_client::{Client, Event};
//! use futures::StreamExt;
//!
//! let pin = "sha256:abb7f16a058a5d546d3645a6fc5c38abb1919cbf18efb4b87467bda2e4b56636".parse()?;
//! let client = Client::builder("http://127.0.0.1:7700").pin(pin).connect().await?;
//!
//! let run = client.execute("console.log('hi'); return 1 + 1").await?;
//! assert_eq!(run.into_value()?, 2);
//!
//! let mut events = client.execute_streaming("return await callTool('echo', {n: 1})");
//! while let Some(event) = events.next().await {
//!     match event? {
//!         Event::Console { text, .. } => println!("{text}"),
//!         Event::Final { result, .. } => println!("= {result}"),
//!         Event::Error { failure, .. } => eprintln!("error: {failure}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # What the client guarantees
//! - **The broker is the pinned one.** [`ClientBuilder::pin`] is mandatory; a broker
//!   proving another key is refused with [`ClientError::PinMismatch`] before anything is
//!   sent.
//! - **Nothing is lost silently.** Replies are accepted only as the answer to the call
//!   that is waiting for them; a stream that ends without its final event is
//!   [`ClientError::StreamTruncated`].
//! - **One session, many requests.** A [`Client`] is `Clone + Send + Sync`; requests run
//!   concurrently on one session (sealing and opening take a lock for microseconds, the
//!   RPCs run outside it).
//! - **Retries never run a job twice.** UNAUTHENTICATED (session unknown or expired) leads
//!   to a new handshake and one more attempt; ABORTED (replay window, key epoch) to a
//!   re-sealed attempt. Both statuses mean the broker ran nothing, and no call is
//!   retried once a sealed answer has arrived.
//! - **Every call ends.** Each call has a deadline, [`builder::DEFAULT_REQUEST_TIMEOUT`]
//!   (120 s) unless [`ClientBuilder::request_timeout`] or
//!   [`ClientBuilder::no_request_timeout`] says otherwise: past it a unary call is
//!   DEADLINE_EXCEEDED and a stream [`ClientError::StreamTruncated`], and the call is
//!   cancelled at the broker.
//! - **Calls do not hold each other up.** A stream the caller leaves unread holds its
//!   own HTTP/2 window (2 MiB), never the connection's: other calls go on.
//! - **Keys rotate.** When the [`RekeyPolicy`] says so (records, bytes or age), the next
//!   request first calls the `Rekey` RPC, which moves both directions to new keys.
//!
//! Job failures (script errors, limits, no executor) are results, not errors:
//! [`Execution::result`] and [`Event::Error`]. gRPC statuses are [`ClientError::Status`];
//! the broker uses RESOURCE_EXHAUSTED for its caps and UNAVAILABLE when no executor could
//! start the job.
//!
//! # JSON events (`enclave run --json`)
//! One object per line on stdout, in the job's order; the last is `final` or `error`.
//! [`Event`] serializes to exactly these:
//! ```text
//! {"type":"console","level":"log","text":"fetching 42"}         level: log|info|warn|error|debug
//! {"type":"tool_call","call_id":1,"name":"echo","args":{"n":1}}  args: the JSON arguments
//! {"type":"tool_result","call_id":1,"name":"echo","is_error":false}  never the value (it may hold secrets)
//! {"type":"final","result":{"sum":3},"stats":{"duration_us":812,"tool_calls":2,"console_bytes":11,"memory_bytes":1048576}}
//! {"type":"error","code":"SCRIPT_ERROR","message":"boom","name":"Error","line":3,"stack":"...","stats":{...}}
//! ```
//! In `error`, `code` is one of the README's codes (`TIMEOUT`, `SYNTAX_ERROR`, ...);
//! `name`, `line`, `stack` and `stats` appear only when known (`stats` only when the job
//! ran). Client-side failures (connection, truncated stream) are not events: they go to
//! stderr and `enclave run` exits with status 2.
//!
//! # Layout
//! - [`builder`] (module): [`ClientBuilder`], [`Curve`], defaults.
//! - `client`: [`Client`] and its requests.
//! - `connection`: the session: handshake, sealing under the lock, retries, rekeying.
//! - `stream`: [`EventStream`] and the truncation check.
//! - `event` / `outcome`: [`Event`], [`Execution`], [`JobFailure`], [`Stats`].
//! - `identity`: client keys and external [`Signer`]s.
//! - `retry` / `rekey`: the retry budget and the rekey clock.
//! - [`error`] (module): [`ClientError`].

pub mod builder;
mod client;
mod connection;
pub mod error;
mod event;
mod identity;
mod outcome;
mod rekey;
mod retry;
mod stream;
mod tools;

pub use builder::{ClientBuilder, Curve, DEFAULT_SERVER};
pub use client::Client;
pub use connection::SessionInfo;
pub use error::{BoxError, ClientError};
pub use event::Event;
pub use identity::{BoxFuture, Signer};
pub use outcome::{ConsoleLevel, ConsoleLine, Execution, JobFailure, Stats, code_name};
pub use stream::EventStream;
pub use tools::ClientTools;

pub use enclave_proto::v1::{ErrorCode, Job, Limits, SecurityLevel, ToolInfo};
pub use enclave_proto::{Fingerprint, IdentityKey, PublicIdentity, RekeyPolicy, SessionId};
