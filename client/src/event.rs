//! Events of a streamed job, and their JSON form (one object per line in `enclave run
//! --json`; the shape is documented in the crate docs and fixed by the tests below).

use enclave_proto::v1;
use serde::Serialize;
use serde_json::Value;

use crate::error::ClientError;
use crate::outcome::{ConsoleLevel, ConsoleLine, JobFailure, Stats, final_outcome};

/// One event of [`crate::Client::execute_streaming`], in the order the job produced
/// them. The last is always [`Event::Final`] or [`Event::Error`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Console {
        level: ConsoleLevel,
        text: String,
    },
    /// The script called `await callTool(name, args)`; the broker runs the tool.
    ToolCall {
        call_id: u64,
        name: String,
        /// The arguments as JSON. Should the broker send something that is not JSON (it
        /// may redact arguments), the raw text is kept as a JSON string: these are for
        /// display, and losing the rest of the job over them would be worse.
        args: Value,
    },
    /// A tool call came back. Deliberately without the value: tool results may carry
    /// secrets the script may use but the caller must not see.
    ToolResult {
        call_id: u64,
        /// The tool's name, as in its `ToolCall`; empty from brokers that do not send it.
        #[serde(skip_serializing_if = "String::is_empty")]
        name: String,
        is_error: bool,
    },
    /// The job returned this value.
    Final {
        result: Value,
        stats: Stats,
    },
    /// The job failed (script error, limit) or the broker could not run it; `stats`
    /// only when it ran.
    Error {
        #[serde(flatten)]
        failure: JobFailure,
        #[serde(skip_serializing_if = "Option::is_none")]
        stats: Option<Stats>,
    },
}

impl Event {
    /// Whether this event ends the stream.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Event::Final { .. } | Event::Error { .. })
    }

    /// One line of `--json` output (no trailing newline).
    pub fn to_json_line(&self) -> String {
        // Serializing these types cannot fail (string keys, finite numbers only), but
        // a fallback line keeps the no-panic rule without an unwrap.
        serde_json::to_string(self).unwrap_or_else(|e| {
            serde_json::json!({"type": "error", "code": "INTERNAL", "message": e.to_string()})
                .to_string()
        })
    }
}

impl From<ConsoleLine> for Event {
    fn from(line: ConsoleLine) -> Self {
        Event::Console {
            level: line.level,
            text: line.text,
        }
    }
}

impl TryFrom<v1::StreamEvent> for Event {
    type Error = ClientError;

    fn try_from(event: v1::StreamEvent) -> Result<Self, ClientError> {
        use v1::stream_event::Event as E;
        Ok(match event.event {
            Some(E::Console(c)) => ConsoleLine::from(c).into(),
            Some(E::ToolCall(call)) => Event::ToolCall {
                call_id: call.call_id,
                args: if call.args_json.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(&call.args_json).unwrap_or(Value::String(call.args_json))
                },
                name: call.name,
            },
            Some(E::ToolResult(r)) => Event::ToolResult {
                call_id: r.call_id,
                name: r.name,
                is_error: r.is_error,
            },
            Some(E::Final(f)) => match final_outcome(f)? {
                (Ok(result), stats) => Event::Final { result, stats },
                (Err(failure), stats) => Event::Error {
                    failure,
                    stats: Some(stats),
                },
            },
            Some(E::Error(e)) => Event::Error {
                failure: JobFailure::from(e),
                stats: None,
            },
            // StreamOpener refuses these already; kept as an error rather than a panic.
            None => return Err(ClientError::invalid_reply("stream event without content")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use enclave_proto::v1::ErrorCode;
    use serde_json::json;

    fn parse(event: &Event) -> Value {
        serde_json::from_str(&event.to_json_line()).unwrap()
    }

    #[test]
    fn json_lines_have_the_documented_shape() {
        let console = Event::Console {
            level: ConsoleLevel::Warn,
            text: "careful".into(),
        };
        assert_eq!(
            parse(&console),
            json!({"type": "console", "level": "warn", "text": "careful"})
        );

        let call = Event::ToolCall {
            call_id: 7,
            name: "echo".into(),
            args: json!({"n": 1}),
        };
        assert_eq!(
            parse(&call),
            json!({"type": "tool_call", "call_id": 7, "name": "echo", "args": {"n": 1}})
        );

        let result = Event::ToolResult {
            call_id: 7,
            name: "echo".into(),
            is_error: false,
        };
        assert_eq!(
            parse(&result),
            json!({"type": "tool_result", "call_id": 7, "name": "echo", "is_error": false})
        );
        let unnamed = Event::ToolResult {
            call_id: 7,
            name: String::new(),
            is_error: true,
        };
        assert_eq!(
            parse(&unnamed),
            json!({"type": "tool_result", "call_id": 7, "is_error": true})
        );

        let done = Event::Final {
            result: json!([1, 2]),
            stats: Stats {
                duration_us: 10,
                tool_calls: 1,
                console_bytes: 7,
                memory_bytes: 4096,
            },
        };
        assert_eq!(
            parse(&done),
            json!({"type": "final", "result": [1, 2], "stats": {
                "duration_us": 10, "tool_calls": 1, "console_bytes": 7, "memory_bytes": 4096}})
        );
        assert!(done.is_terminal() && !console.is_terminal());

        let failed = Event::Error {
            failure: JobFailure {
                code: ErrorCode::ScriptError,
                message: "x is not defined".into(),
                name: Some("ReferenceError".into()),
                line: Some(2),
                stack: None,
            },
            stats: None,
        };
        assert_eq!(
            parse(&failed),
            json!({"type": "error", "code": "SCRIPT_ERROR", "message": "x is not defined",
                   "name": "ReferenceError", "line": 2})
        );
        assert!(!failed.to_json_line().contains('\n'));
    }

    #[test]
    fn stream_events_convert() {
        use v1::stream_event::Event as E;
        let ev = |e| v1::StreamEvent { event: Some(e) };

        let call = Event::try_from(ev(E::ToolCall(v1::ToolCall {
            call_id: 1,
            name: "http:get".into(),
            args_json: "not json".into(),
            ..Default::default()
        })))
        .unwrap();
        assert!(
            matches!(call, Event::ToolCall { args: Value::String(ref s), .. } if s == "not json")
        );
        let call = Event::try_from(ev(E::ToolCall(v1::ToolCall::default()))).unwrap();
        assert!(matches!(
            call,
            Event::ToolCall {
                args: Value::Null,
                ..
            }
        ));

        let timeout = Event::try_from(ev(E::Final(v1::FinalEvent {
            outcome: Some(v1::final_event::Outcome::Error(v1::JobError {
                code: ErrorCode::Timeout as i32,
                message: "too slow".into(),
                ..Default::default()
            })),
            stats: Some(v1::JobStats::default()),
        })))
        .unwrap();
        assert_eq!(
            parse(&timeout),
            json!({"type": "error", "code": "TIMEOUT", "message": "too slow", "stats": {
                "duration_us": 0, "tool_calls": 0, "console_bytes": 0, "memory_bytes": 0}})
        );

        assert!(Event::try_from(v1::StreamEvent { event: None }).is_err());
        let bad_final = ev(E::Final(v1::FinalEvent {
            outcome: Some(v1::final_event::Outcome::ResultJson("[".into())),
            stats: None,
        }));
        assert!(matches!(
            Event::try_from(bad_final),
            Err(ClientError::InvalidReply(_))
        ));
    }
}
