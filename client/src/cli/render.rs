//! How `enclave run` shows a job: console text live (stdout for log/info/debug, stderr
//! for warn/error) and the result as pretty JSON, or one JSON object per event.

use std::io::{self, Write};

use enclave_client::Event;

use super::{EXIT_JOB_FAILED, EXIT_OK};

pub struct Renderer<O, E> {
    json: bool,
    out: O,
    err: E,
    exit: Option<u8>,
}

impl<O: Write, E: Write> Renderer<O, E> {
    pub fn new(json: bool, out: O, err: E) -> Self {
        Renderer {
            json,
            out,
            err,
            exit: None,
        }
    }

    /// Shows one event, flushed at once: output is "live" only if each line leaves
    /// the process when it arrives, also when stdout is a pipe.
    pub fn event(&mut self, event: &Event) -> io::Result<()> {
        match event {
            Event::Final { .. } => self.exit = Some(EXIT_OK),
            Event::Error { .. } => self.exit = Some(EXIT_JOB_FAILED),
            _ => {}
        }
        if self.json {
            writeln!(self.out, "{}", event.to_json_line())?;
            return self.out.flush();
        }
        match event {
            Event::Console { level, text } if level.is_diagnostic() => {
                writeln!(self.err, "{text}")?;
                self.err.flush()
            }
            Event::Console { text, .. } => {
                writeln!(self.out, "{text}")?;
                self.out.flush()
            }
            // Tool traffic is the broker's business; `--json` shows it for those who
            // want it.
            Event::ToolCall { .. } | Event::ToolResult { .. } => Ok(()),
            Event::Final { result, .. } => {
                let pretty =
                    serde_json::to_string_pretty(result).unwrap_or_else(|_| result.to_string());
                writeln!(self.out, "{pretty}")?;
                self.out.flush()
            }
            Event::Error { failure, .. } => {
                writeln!(self.err, "error: {failure}")?;
                self.err.flush()
            }
        }
    }

    /// The exit status once the terminal event was shown; `None` before.
    pub fn exit_code(&self) -> Option<u8> {
        self.exit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use enclave_client::{ConsoleLevel, ErrorCode, JobFailure, Stats};
    use serde_json::json;

    fn console(level: ConsoleLevel, text: &str) -> Event {
        Event::Console {
            level,
            text: text.into(),
        }
    }

    fn render(json: bool, events: &[Event]) -> (String, String, Option<u8>) {
        let mut r = Renderer::new(json, Vec::new(), Vec::new());
        for e in events {
            r.event(e).unwrap();
        }
        let code = r.exit_code();
        (
            String::from_utf8(r.out).unwrap(),
            String::from_utf8(r.err).unwrap(),
            code,
        )
    }

    fn failure() -> Event {
        Event::Error {
            failure: JobFailure {
                code: ErrorCode::ScriptError,
                message: "boom".into(),
                name: Some("Error".into()),
                line: Some(4),
                stack: None,
            },
            stats: Some(Stats::default()),
        }
    }

    #[test]
    fn human_output_splits_streams_and_pretty_prints_the_result() {
        let events = [
            console(ConsoleLevel::Log, "one"),
            console(ConsoleLevel::Warn, "careful"),
            Event::ToolCall {
                call_id: 1,
                name: "echo".into(),
                args: json!(1),
            },
            console(ConsoleLevel::Debug, "two"),
            console(ConsoleLevel::Error, "bad"),
            Event::Final {
                result: json!({"a": [1]}),
                stats: Stats::default(),
            },
        ];
        let (out, err, code) = render(false, &events);
        assert_eq!(out, "one\ntwo\n{\n  \"a\": [\n    1\n  ]\n}\n");
        assert_eq!(err, "careful\nbad\n");
        assert_eq!(code, Some(EXIT_OK));
    }

    #[test]
    fn a_failed_job_prints_code_message_and_line() {
        let (out, err, code) = render(false, &[console(ConsoleLevel::Info, "x"), failure()]);
        assert_eq!(out, "x\n");
        assert_eq!(err, "error: SCRIPT_ERROR: Error: boom (line 4)\n");
        assert_eq!(code, Some(EXIT_JOB_FAILED));
    }

    #[test]
    fn json_output_is_one_object_per_line_on_stdout() {
        let (out, err, code) = render(true, &[console(ConsoleLevel::Error, "bad"), failure()]);
        assert!(err.is_empty());
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            json!({"type": "console", "level": "error", "text": "bad"})
        );
        assert_eq!(lines[1]["type"], "error");
        assert_eq!(lines[1]["code"], "SCRIPT_ERROR");
        assert_eq!(lines[1]["line"], 4);
        assert_eq!(code, Some(EXIT_JOB_FAILED));
        assert_eq!(render(true, &[]).2, None);
    }
}
