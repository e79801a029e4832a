//! What a job produces, in types that do not need the protobuf crate to read: console
//! lines, statistics, the value or the failure.
//!
//! Everything here is built from an *opened* (authenticated) record, but the content is
//! still checked: a result that is not JSON or a reply without an outcome is an
//! [`ClientError::InvalidReply`], never a panic or a silent `null`.

use std::fmt;
use std::time::Duration;

use enclave_proto::v1::{self, ErrorCode};
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::error::ClientError;

/// `console.*` method the script called.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleLevel {
    Log,
    Info,
    Warn,
    Error,
    Debug,
}

impl ConsoleLevel {
    /// Unknown or unset levels read as `log`: a newer broker's level must not make an
    /// older client drop the line.
    pub(crate) fn from_wire(level: i32) -> Self {
        match v1::ConsoleLevel::try_from(level) {
            Ok(v1::ConsoleLevel::Info) => ConsoleLevel::Info,
            Ok(v1::ConsoleLevel::Warn) => ConsoleLevel::Warn,
            Ok(v1::ConsoleLevel::Error) => ConsoleLevel::Error,
            Ok(v1::ConsoleLevel::Debug) => ConsoleLevel::Debug,
            _ => ConsoleLevel::Log,
        }
    }

    /// `warn` and `error` are diagnostics (a terminal shows them on stderr).
    pub fn is_diagnostic(self) -> bool {
        matches!(self, ConsoleLevel::Warn | ConsoleLevel::Error)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleLevel::Log => "log",
            ConsoleLevel::Info => "info",
            ConsoleLevel::Warn => "warn",
            ConsoleLevel::Error => "error",
            ConsoleLevel::Debug => "debug",
        }
    }
}

/// One `console.*` call: its arguments formatted and joined by spaces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConsoleLine {
    pub level: ConsoleLevel,
    pub text: String,
}

impl From<v1::ConsoleEvent> for ConsoleLine {
    fn from(event: v1::ConsoleEvent) -> Self {
        ConsoleLine {
            level: ConsoleLevel::from_wire(event.level),
            text: event.text,
        }
    }
}

/// Resource use of a job that ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub duration_us: u64,
    pub tool_calls: u32,
    pub console_bytes: u64,
    /// Peak size of the sandbox's linear memory.
    pub memory_bytes: u64,
}

impl Stats {
    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.duration_us)
    }
}

impl From<v1::JobStats> for Stats {
    fn from(s: v1::JobStats) -> Self {
        Stats {
            duration_us: s.duration_us,
            tool_calls: s.tool_calls,
            console_bytes: s.console_bytes,
            memory_bytes: s.memory_bytes,
        }
    }
}

/// Why a job did not produce a value: its script threw, it hit a limit, or the broker
/// could not run it. Empty proto fields become `None` so that callers need not know
/// proto3's "empty means unset".
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobFailure {
    #[serde(serialize_with = "serialize_code")]
    pub code: ErrorCode,
    pub message: String,
    /// The JavaScript error's name (`TypeError`, ...), for script and syntax errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// 1-based line in the job's own code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
}

impl JobFailure {
    /// The code as the README and the CLI spell it: `TIMEOUT`, `SCRIPT_ERROR`, ...
    pub fn code_name(&self) -> &'static str {
        code_name(self.code)
    }
}

/// `ERROR_CODE_TIMEOUT` -> `TIMEOUT`: the prefix is protobuf's namespacing, not a name
/// a person uses.
pub fn code_name(code: ErrorCode) -> &'static str {
    let full = code.as_str_name();
    full.strip_prefix("ERROR_CODE_").unwrap_or(full)
}

fn serialize_code<S: Serializer>(code: &ErrorCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(code_name(*code))
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<v1::JobError> for JobFailure {
    fn from(e: v1::JobError) -> Self {
        JobFailure {
            // A code this client does not know yet still fails the job; the message says
            // what happened.
            code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
            message: e.message,
            name: non_empty(e.name),
            line: (e.line != 0).then_some(e.line),
            stack: non_empty(e.stack),
        }
    }
}

/// `CODE: Name: message (line N)`, what the CLI prints after `error: `.
impl fmt::Display for JobFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.code_name())?;
        if let Some(name) = &self.name {
            write!(f, "{name}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

/// Parses the job's returned value. proto3 cannot tell an unset string from an empty
/// one, so an empty result reads as `null` (what `undefined` becomes anyway).
pub(crate) fn parse_result(json: &str) -> Result<Value, ClientError> {
    if json.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(json)
        .map_err(|e| ClientError::invalid_reply(format!("the job's result is not JSON: {e}")))
}

/// The end of a job that ran: its value or its script failure, and its statistics.
pub(crate) fn final_outcome(
    event: v1::FinalEvent,
) -> Result<(Result<Value, JobFailure>, Stats), ClientError> {
    let stats = event.stats.map(Stats::from).unwrap_or_default();
    let result = match event.outcome {
        Some(v1::final_event::Outcome::ResultJson(json)) => Ok(parse_result(&json)?),
        Some(v1::final_event::Outcome::Error(e)) => Err(JobFailure::from(e)),
        None => return Err(ClientError::invalid_reply("final event without an outcome")),
    };
    Ok((result, stats))
}

/// Everything [`crate::Client::execute`] learns about one job.
#[derive(Clone, Debug, PartialEq)]
pub struct Execution {
    /// The returned value as JSON, or why there is none.
    pub result: Result<Value, JobFailure>,
    /// Console output, in order.
    pub console: Vec<ConsoleLine>,
    /// `None` when the broker could not run the job at all (no executor, bad limits).
    pub stats: Option<Stats>,
}

impl Execution {
    pub fn is_success(&self) -> bool {
        self.result.is_ok()
    }

    /// The value, with a failed job as [`ClientError::JobFailed`], for callers that
    /// treat any failure alike.
    pub fn into_value(self) -> Result<Value, ClientError> {
        self.result.map_err(ClientError::JobFailed)
    }

    pub(crate) fn from_reply(reply: v1::ExecuteResult) -> Result<Self, ClientError> {
        let console = reply.console.into_iter().map(ConsoleLine::from).collect();
        let (result, stats) = match reply.outcome {
            Some(v1::execute_result::Outcome::Final(event)) => {
                let (result, stats) = final_outcome(event)?;
                (result, Some(stats))
            }
            Some(v1::execute_result::Outcome::Error(e)) => (Err(JobFailure::from(e)), None),
            None => {
                return Err(ClientError::invalid_reply(
                    "execute result without an outcome",
                ));
            }
        };
        Ok(Execution {
            result,
            console,
            stats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_error(code: ErrorCode, line: u32, name: &str) -> v1::JobError {
        v1::JobError {
            code: code as i32,
            message: "boom".into(),
            name: name.into(),
            line,
            stack: String::new(),
        }
    }

    #[test]
    fn failure_display_is_code_name_message_line() {
        let f = JobFailure::from(job_error(ErrorCode::ScriptError, 3, "TypeError"));
        assert_eq!(f.to_string(), "SCRIPT_ERROR: TypeError: boom (line 3)");
        let f = JobFailure::from(job_error(ErrorCode::Timeout, 0, ""));
        assert_eq!(f.to_string(), "TIMEOUT: boom");
        assert_eq!(f.name, None);
        assert_eq!(f.line, None);
        assert_eq!(f.stack, None);
    }

    #[test]
    fn unknown_codes_and_levels_degrade_instead_of_failing() {
        let mut e = job_error(ErrorCode::Internal, 0, "");
        e.code = 999;
        assert_eq!(JobFailure::from(e).code_name(), "UNSPECIFIED");
        assert_eq!(ConsoleLevel::from_wire(42), ConsoleLevel::Log);
        assert_eq!(
            ConsoleLevel::from_wire(v1::ConsoleLevel::Warn as i32),
            ConsoleLevel::Warn
        );
        assert_eq!(code_name(ErrorCode::ExecutorLost), "EXECUTOR_LOST");
    }

    #[test]
    fn execute_result_conversions() {
        let reply = v1::ExecuteResult {
            outcome: Some(v1::execute_result::Outcome::Final(v1::FinalEvent {
                outcome: Some(v1::final_event::Outcome::ResultJson(r#"{"sum":3}"#.into())),
                stats: Some(v1::JobStats {
                    duration_us: 1500,
                    tool_calls: 2,
                    console_bytes: 6,
                    memory_bytes: 1 << 20,
                }),
            })),
            console: vec![v1::ConsoleEvent {
                level: v1::ConsoleLevel::Info as i32,
                text: "hello".into(),
            }],
        };
        let ex = Execution::from_reply(reply).unwrap();
        assert_eq!(ex.result, Ok(serde_json::json!({"sum": 3})));
        assert_eq!(ex.stats.unwrap().tool_calls, 2);
        assert_eq!(ex.stats.unwrap().duration(), Duration::from_micros(1500));
        assert_eq!(ex.console[0].level, ConsoleLevel::Info);
        assert_eq!(ex.clone().into_value().unwrap()["sum"], 3);

        let refused = v1::ExecuteResult {
            outcome: Some(v1::execute_result::Outcome::Error(job_error(
                ErrorCode::Internal,
                0,
                "",
            ))),
            console: vec![],
        };
        let ex = Execution::from_reply(refused).unwrap();
        assert!(!ex.is_success() && ex.stats.is_none());
        assert!(matches!(ex.into_value(), Err(ClientError::JobFailed(_))));
    }

    #[test]
    fn bad_answers_are_errors_not_panics() {
        let no_outcome = v1::ExecuteResult::default();
        assert!(matches!(
            Execution::from_reply(no_outcome),
            Err(ClientError::InvalidReply(_))
        ));
        let not_json = v1::FinalEvent {
            outcome: Some(v1::final_event::Outcome::ResultJson("{nope".into())),
            stats: None,
        };
        assert!(matches!(
            final_outcome(not_json),
            Err(ClientError::InvalidReply(_))
        ));
        let empty = v1::FinalEvent {
            outcome: Some(v1::final_event::Outcome::ResultJson(String::new())),
            stats: None,
        };
        let (value, stats) = final_outcome(empty).unwrap();
        assert_eq!(value, Ok(Value::Null));
        assert_eq!(stats, Stats::default());
    }
}
