//! `ExecuteStream` as a `Stream` of typed events, with the protocol's truncation check.
//!
//! Each record is opened in order (the `StreamOpener` refuses gaps, reordering and
//! records of other streams). The stream always ends with `Final` or `Error`, or with
//! a [`ClientError`]: a gRPC stream that stops before the STREAM_FINAL record, cleanly or
//! with a status, is [`ClientError::StreamTruncated`], never a quietly shorter job.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use enclave_proto::v1::{self, RecordKind, SealedRecord};
use enclave_proto::{Error as ProtoError, StreamOpener};
use futures::Stream;
use tonic::Streaming;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::connection::{Connection, Sent, Session};
use crate::tools::{Answerer, ClientTools};

/// Answers to client tools waiting to go out on the job's call.
const ANSWERS_IN_FLIGHT: usize = 16;
use crate::error::ClientError;
use crate::event::Event;

/// The events of one streamed job. `Unpin` and `Send`, so it can be stored and moved
/// between tasks; dropping it cancels the call (the broker then stops the job).
pub struct EventStream {
    inner: Pin<Box<dyn Stream<Item = Result<Event, ClientError>> + Send>>,
}

impl Stream for EventStream {
    type Item = Result<Event, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStream")
    }
}

struct Open {
    session: Arc<Session>,
    opener: StreamOpener,
    records: Streaming<SealedRecord>,
    /// Read to decide whether a status at the start may be retried; opened first.
    first: Option<SealedRecord>,
    /// With client tools: answers their calls on the job's own call.
    answerer: Option<Answerer>,
}

enum State {
    Start {
        connection: Arc<Connection>,
        request: Vec<u8>,
        tools: Option<ClientTools>,
    },
    Open(Box<Open>),
    /// The final event was delivered; what follows must be the end of the stream.
    Finished(Streaming<SealedRecord>),
    Done,
}

impl EventStream {
    /// `tools`: the client's own tools, answered on the job's call (`ExecuteWithTools`);
    /// `None` streams over `ExecuteStream`.
    pub(crate) fn new(
        connection: Arc<Connection>,
        request: Vec<u8>,
        tools: Option<ClientTools>,
    ) -> Self {
        let deadline = connection
            .request_timeout()
            .map(|t| (tokio::time::Instant::now() + t, t));
        let stream = futures::stream::unfold(
            State::Start {
                connection,
                request,
                tools,
            },
            move |state| step_until(deadline, state),
        );
        EventStream {
            inner: Box::pin(stream),
        }
    }
}

/// [`step`] under the client's request timeout: past it the call is dropped (which
/// cancels it at the broker) and the stream ends with DEADLINE_EXCEEDED.
async fn step_until(
    deadline: Option<(tokio::time::Instant, std::time::Duration)>,
    state: State,
) -> Option<(Result<Event, ClientError>, State)> {
    let Some((at, timeout)) = deadline else {
        return step(state).await;
    };
    let started = matches!(state, State::Open(_));
    let finished = matches!(state, State::Finished(_));
    match tokio::time::timeout_at(at, step(state)).await {
        Ok(next) => next,
        // The final event was delivered: the outcome stands.
        Err(_) if finished => None,
        Err(_) if started => Some((
            Err(ClientError::StreamTruncated {
                status: Some((
                    tonic::Code::DeadlineExceeded,
                    format!("no final event within the request timeout of {timeout:?}"),
                )),
            }),
            State::Done,
        )),
        Err(_) => Some((Err(ClientError::deadline(timeout)), State::Done)),
    }
}

async fn step(state: State) -> Option<(Result<Event, ClientError>, State)> {
    match state {
        State::Start {
            connection,
            request,
            tools,
        } => match start(&connection, &request, tools).await {
            Ok(open) => next_event(open).await,
            Err(e) => Some((Err(e), State::Done)),
        },
        State::Open(open) => next_event(*open).await,
        State::Finished(mut records) => match records.message().await {
            // PROTOCOL.md 10.2 rule 3: nothing may follow STREAM_FINAL.
            Ok(Some(_)) => Some((
                Err(ClientError::Protocol(ProtoError::StreamFinished)),
                State::Done,
            )),
            // The job's outcome was already delivered and authenticated; how the
            // transport closes afterwards changes nothing.
            Ok(None) | Err(_) => None,
        },
        State::Done => None,
    }
}

/// Sends the request and waits for the first record, so that a status the broker gives
/// instead of a stream (unknown session, replay) takes the same retry path as a unary
/// call: no record has been opened, so nothing ran.
async fn start(
    connection: &Connection,
    request: &[u8],
    tools: Option<ClientTools>,
) -> Result<Open, ClientError> {
    let Some(tools) = tools else {
        let Sent {
            session,
            seq,
            answer: (records, first),
        } = connection
            .send(
                RecordKind::StreamRequest,
                request,
                |mut grpc, record| async move {
                    let mut records = grpc.execute_stream(record).await?.into_inner();
                    let first = records.message().await?;
                    Ok((records, first))
                },
            )
            .await?;
        return Ok(Open {
            session,
            opener: StreamOpener::new(seq),
            records,
            first,
            answerer: None,
        });
    };
    // ExecuteWithTools: the request first, the answers after it on the same call.
    let Sent {
        session,
        seq,
        answer: (records, first, answers),
    } = connection
        .send(
            RecordKind::StreamRequest,
            request,
            |mut grpc, record| async move {
                let (answers, outgoing) = mpsc::channel(ANSWERS_IN_FLIGHT);
                // Cannot fail: the receiver is right here, and the channel is empty.
                let _ = answers.send(record).await;
                let mut records = grpc
                    .execute_with_tools(ReceiverStream::new(outgoing))
                    .await?
                    .into_inner();
                let first = records.message().await?;
                Ok((records, first, answers))
            },
        )
        .await?;
    Ok(Open {
        answerer: Some(Answerer {
            tools,
            session: session.clone(),
            stream_seq: seq,
            answers,
            running: Default::default(),
        }),
        session,
        opener: StreamOpener::new(seq),
        records,
        first,
    })
}

async fn next_event(mut open: Open) -> Option<(Result<Event, ClientError>, State)> {
    let received = match open.first.take() {
        Some(record) => Ok(Some(record)),
        None => open.records.message().await,
    };
    let record = match received {
        Ok(Some(record)) => record,
        Ok(None) => {
            // A finished opener moved to `State::Finished` already, so `finish` fails
            // here; the fallback only keeps this free of an unwrap.
            let error = match open.opener.finish() {
                Err(e) => e.into(),
                Ok(()) => ClientError::invalid_reply("stream state out of step"),
            };
            return Some((Err(error), State::Done));
        }
        Err(status) => {
            return Some((
                Err(ClientError::StreamTruncated {
                    status: Some((status.code(), status.message().to_owned())),
                }),
                State::Done,
            ));
        }
    };
    let opened = open.session.open_stream_event(&mut open.opener, &record);
    // Calls the broker marks as the client's to answer (their arguments passed the
    // declared schema) go to their closures; the event is shown either way.
    if let (
        Ok(v1::StreamEvent {
            event: Some(v1::stream_event::Event::ToolCall(call)),
        }),
        Some(answerer),
    ) = (&opened, &open.answerer)
        && call.client_answers
    {
        answerer.on_tool_call(call.call_id, &call.name, &call.args_json);
    }
    let event = opened.and_then(Event::try_from);
    match event {
        Ok(event) if open.opener.is_finished() => Some((Ok(event), State::Finished(open.records))),
        Ok(event) => Some((Ok(event), State::Open(Box::new(open)))),
        Err(e) => Some((Err(e), State::Done)),
    }
}
