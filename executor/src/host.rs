//! Per-job host state and the `enclave` imports the guest calls.
//!
//! Every limit a script must not be able to bypass is enforced here, on the host side
//! of the boundary: the import returns an error (a [`Breach`]), wasmtime unwinds the
//! guest, and the instance is thrown away. Nothing the script does can catch it.

use std::collections::HashSet;
use std::fmt;
use std::time::Instant;

use enclave_abi::{MODULE, Outcome, ToolAnswer, import};
use enclave_proto::v1::{
    ConsoleEvent, ConsoleLevel, ErrorCode, JobError, ToolCall, ToolResult, final_event,
    run_event::Event, tool_result::Outcome as ToolOutcome,
};
use tokio::sync::mpsc;
use wasmtime::{Caller, Linker, Memory, ResourceLimiter};

use crate::json::{MAX_DEPTH, make_well_formed};
use crate::limits::Limits;

/// The longest tool name a script may call, in bytes: names are identifiers
/// (`http:fetch`, `db:query`), and every byte of one travels in an event.
pub const MAX_TOOL_NAME_BYTES: usize = 256;

/// What one console line costs against `max_console_bytes` beyond its text: a line is a
/// sealed event of its own (16 bytes of tag alone), so a flood of empty lines is output
/// too.
pub const CONSOLE_LINE_OVERHEAD: u64 = 16;

/// The longest error name a job reports, in bytes; the message and stack share the
/// rest of the job's result limit (see [`bound_error`]).
const MAX_ERROR_NAME_BYTES: usize = 256;

/// Why the host ended a job early. Carried through wasmtime as the trap's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breach {
    pub code: ErrorCode,
    pub message: String,
}

impl Breach {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Breach {
        Breach {
            code,
            message: message.into(),
        }
    }
    pub fn internal(message: impl Into<String>) -> Breach {
        Breach::new(ErrorCode::Internal, message)
    }
    pub fn memory_limit(limit_bytes: u64) -> Breach {
        Breach::new(
            ErrorCode::MemoryLimit,
            format!("the job exceeded its memory limit of {limit_bytes} bytes"),
        )
    }
    pub fn timeout(limits: &Limits) -> Breach {
        Breach::new(
            ErrorCode::Timeout,
            format!(
                "the job exceeded its time limit of {} ms",
                limits.timeout.as_millis()
            ),
        )
    }
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Breach {}

/// A protocol error by whoever drives the job (not the script): the stream is refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CallerFault(pub String);

/// What the guest reported through `finish`.
#[derive(Debug)]
pub enum GuestOutcome {
    Result(String),
    /// How the script failed, and the error's JSON description (or the engine's
    /// message, for [`Outcome::Internal`]).
    Error(Outcome, String),
}

/// Caps the sandbox's linear memory: growth past the cap traps with MEMORY_LIMIT, and the
/// peak is kept for the job's stats.
#[derive(Debug, Default)]
pub struct MemoryCap {
    /// The job's limit, as the error message states it.
    pub limit_bytes: u64,
    /// The linear memory's cap: the engine's baseline plus the job's limit.
    pub max_bytes: usize,
    pub peak_bytes: usize,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            // A trap, not a refused `memory.grow`: the engine would turn a refusal into
            // an exception the script can catch, or into a misleading error of its own.
            return Err(Breach::memory_limit(self.limit_bytes).into());
        }
        self.peak_bytes = self.peak_bytes.max(desired).max(current);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

pub struct JobState {
    pub limits: Limits,
    pub started: Instant,
    pub deadline: Instant,
    pub memory_cap: MemoryCap,
    pub memory: Option<Memory>,
    events: mpsc::Sender<Event>,
    tool_results: mpsc::Receiver<ToolResult>,
    next_call_id: u32,
    pending_calls: HashSet<u32>,
    /// Payload announced by the last `tool_wait`, copied out by `tool_take`.
    taken: Vec<u8>,
    /// The job's code and input; `job_take` copies them into the guest.
    pub job: (Vec<u8>, Vec<u8>),
    pub tool_calls: u32,
    pub console_bytes: u64,
    pub console_lines: u64,
    pub outcome: Option<GuestOutcome>,
    /// Set when the caller broke the protocol; ends the job without a final event.
    pub caller_fault: Option<String>,
}

impl JobState {
    pub fn new(
        limits: Limits,
        memory_baseline: usize,
        events: mpsc::Sender<Event>,
        tool_results: mpsc::Receiver<ToolResult>,
        job: (Vec<u8>, Vec<u8>),
    ) -> JobState {
        let started = Instant::now();
        let max_bytes = memory_baseline.saturating_add(limits.memory_bytes as usize);
        JobState {
            deadline: started + limits.timeout,
            started,
            memory_cap: MemoryCap {
                limit_bytes: limits.memory_bytes,
                max_bytes,
                peak_bytes: 0,
            },
            memory: None,
            limits,
            events,
            tool_results,
            next_call_id: 1,
            pending_calls: HashSet::new(),
            taken: Vec::new(),
            job,
            tool_calls: 0,
            console_bytes: 0,
            console_lines: 0,
            outcome: None,
            caller_fault: None,
        }
    }

    async fn emit(&self, event: Event) -> Result<(), Breach> {
        match tokio::time::timeout_at(self.deadline.into(), self.events.send(event)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Breach::new(ErrorCode::Cancelled, "the caller went away")),
            Err(_) => Err(Breach::timeout(&self.limits)),
        }
    }
}

fn guest_bytes(caller: &Caller<'_, JobState>, ptr: i32, len: i32) -> Result<Vec<u8>, Breach> {
    let memory = caller
        .data()
        .memory
        .ok_or_else(|| Breach::internal("guest memory missing"))?;
    let start = ptr as u32 as usize;
    memory
        .data(caller)
        .get(start..start.saturating_add(len as u32 as usize))
        .map(<[u8]>::to_vec)
        .ok_or_else(|| Breach::internal("guest passed a buffer outside its memory"))
}

fn console_level(level: i32) -> ConsoleLevel {
    ConsoleLevel::try_from(level).unwrap_or(ConsoleLevel::Log)
}

pub fn add_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    linker.func_wrap_async(
        MODULE,
        import::CONSOLE,
        |caller: Caller<'_, JobState>, (level, ptr, len): (i32, i32, i32)| {
            Box::new(async move {
                console(caller, level, ptr, len)
                    .await
                    .map_err(wasmtime::Error::new)
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        import::TOOL_START,
        |caller: Caller<'_, JobState>,
         (name_ptr, name_len, args_ptr, args_len): (i32, i32, i32, i32)| {
            Box::new(async move {
                tool_start(caller, name_ptr, name_len, args_ptr, args_len)
                    .await
                    .map_err(wasmtime::Error::new)
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        import::TOOL_WAIT,
        |caller: Caller<'_, JobState>, (): ()| Box::new(async move { tool_wait(caller).await }),
    )?;
    linker.func_wrap(
        MODULE,
        import::TOOL_TAKE,
        |mut caller: Caller<'_, JobState>, ptr: i32| -> wasmtime::Result<()> {
            let payload = std::mem::take(&mut caller.data_mut().taken);
            let memory = caller
                .data()
                .memory
                .ok_or_else(|| Breach::internal("guest memory missing"))?;
            memory
                .write(&mut caller, ptr as u32 as usize, &payload)
                .map_err(|_| Breach::internal("guest passed a buffer outside its memory"))?;
            Ok(())
        },
    )?;
    linker.func_wrap(
        MODULE,
        import::JOB_TAKE,
        |mut caller: Caller<'_, JobState>, code_ptr: i32, input_ptr: i32| -> wasmtime::Result<()> {
            let memory = caller
                .data()
                .memory
                .ok_or_else(|| Breach::internal("guest memory missing"))?;
            let (data, state) = memory.data_and_store_mut(&mut caller);
            for (ptr, bytes) in [(code_ptr, &state.job.0), (input_ptr, &state.job.1)] {
                let start = ptr as u32 as usize;
                data.get_mut(start..start.saturating_add(bytes.len()))
                    .ok_or_else(|| Breach::internal("guest passed a buffer outside its memory"))?
                    .copy_from_slice(bytes);
            }
            Ok(())
        },
    )?;
    linker.func_wrap(
        MODULE,
        import::OUT_OF_MEMORY,
        |caller: Caller<'_, JobState>| -> wasmtime::Result<()> {
            Err(Breach::memory_limit(caller.data().memory_cap.limit_bytes).into())
        },
    )?;
    linker.func_wrap(
        MODULE,
        import::FINISH,
        |mut caller: Caller<'_, JobState>, kind: i32, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let outcome = Outcome::from_kind(kind);
            let limit = caller.data().limits.max_result_bytes;
            let too_large = |bytes: usize| {
                Breach::new(
                    ErrorCode::ResultTooLarge,
                    format!("the result is {bytes} bytes of JSON; the limit is {limit}"),
                )
            };
            // Before copying it out, and again once it is valid UTF-8 (which can only
            // grow it, and only when the guest is not the engine we built).
            if outcome == Outcome::Ok && len as u32 as u64 > limit {
                return Err(too_large(len as u32 as usize).into());
            }
            let bytes = guest_bytes(&caller, ptr, len)?;
            let (text, depth) = make_well_formed(String::from_utf8_lossy(&bytes).into_owned());
            if outcome == Outcome::Ok && text.len() as u64 > limit {
                return Err(too_large(text.len()).into());
            }
            caller.data_mut().outcome = Some(if outcome == Outcome::Ok {
                if depth > MAX_DEPTH {
                    return Err(Breach::new(
                        ErrorCode::ResultTooLarge,
                        format!(
                            "the result is nested {depth} levels deep; the limit is {MAX_DEPTH}"
                        ),
                    )
                    .into());
                }
                GuestOutcome::Result(text)
            } else {
                GuestOutcome::Error(outcome, text)
            });
            Ok(())
        },
    )?;
    Ok(())
}

async fn console(
    caller: Caller<'_, JobState>,
    level: i32,
    ptr: i32,
    len: i32,
) -> Result<(), Breach> {
    let state = caller.data();
    let total = state.console_bytes.saturating_add(len as u32 as u64);
    let lines = state.console_lines + 1;
    if total.saturating_add(lines * CONSOLE_LINE_OVERHEAD) > state.limits.max_console_bytes {
        return Err(Breach::new(
            ErrorCode::OutputLimit,
            format!(
                "console output exceeded its limit of {} bytes (each line counts \
                 {CONSOLE_LINE_OVERHEAD} bytes more than its text)",
                state.limits.max_console_bytes
            ),
        ));
    }
    let bytes = guest_bytes(&caller, ptr, len)?;
    let mut caller = caller;
    caller.data_mut().console_bytes = total;
    caller.data_mut().console_lines = lines;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let event = Event::Console(ConsoleEvent {
        level: console_level(level) as i32,
        text,
    });
    caller.data().emit(event).await
}

async fn tool_start(
    mut caller: Caller<'_, JobState>,
    name_ptr: i32,
    name_len: i32,
    args_ptr: i32,
    args_len: i32,
) -> Result<u32, Breach> {
    let state = caller.data();
    if state.tool_calls >= state.limits.max_tool_calls {
        return Err(Breach::new(
            ErrorCode::ToolCallLimit,
            format!(
                "the job made more than its limit of {} tool calls",
                state.limits.max_tool_calls
            ),
        ));
    }
    let args_bytes = args_len as u32 as u64;
    if args_bytes > state.limits.max_tool_args_bytes {
        return Err(Breach::new(
            ErrorCode::ToolCallLimit,
            format!(
                "tool call arguments are {args_bytes} bytes of JSON; the limit is {}",
                state.limits.max_tool_args_bytes
            ),
        ));
    }
    let name_bytes = name_len as u32 as usize;
    if name_bytes > MAX_TOOL_NAME_BYTES {
        return Err(Breach::new(
            ErrorCode::ToolCallLimit,
            format!("the tool name is {name_bytes} bytes; the limit is {MAX_TOOL_NAME_BYTES}"),
        ));
    }
    let name = String::from_utf8_lossy(&guest_bytes(&caller, name_ptr, name_len)?).into_owned();
    // A lone surrogate's bytes become replacement characters, up to three times as long:
    // the limit holds for the name as it leaves, not as the script's bytes.
    if name.len() > MAX_TOOL_NAME_BYTES {
        return Err(Breach::new(
            ErrorCode::ToolCallLimit,
            format!(
                "the tool name is {} bytes as UTF-8; the limit is {MAX_TOOL_NAME_BYTES}",
                name.len()
            ),
        ));
    }
    let args_json =
        String::from_utf8_lossy(&guest_bytes(&caller, args_ptr, args_len)?).into_owned();
    let (args_json, depth) = make_well_formed(args_json);
    if depth > MAX_DEPTH {
        return Err(Breach::new(
            ErrorCode::ToolCallLimit,
            format!("tool call arguments are nested {depth} levels deep; the limit is {MAX_DEPTH}"),
        ));
    }
    let state = caller.data_mut();
    state.tool_calls += 1;
    let call_id = state.next_call_id;
    state.next_call_id += 1;
    state.pending_calls.insert(call_id);
    state
        .emit(Event::ToolCall(ToolCall {
            call_id: call_id.into(),
            name,
            args_json,
            client_answers: false,
        }))
        .await?;
    Ok(call_id)
}

/// Waits for the next tool result, whichever call it answers.
async fn tool_wait(mut caller: Caller<'_, JobState>) -> wasmtime::Result<u64> {
    let state = caller.data_mut();
    let result = match tokio::time::timeout_at(state.deadline.into(), state.tool_results.recv())
        .await
    {
        Ok(Some(result)) => result,
        Ok(None) => return Err(Breach::new(ErrorCode::Cancelled, "the caller went away").into()),
        Err(_) => return Err(Breach::timeout(&state.limits).into()),
    };
    let call_id = u32::try_from(result.call_id)
        .ok()
        .filter(|id| state.pending_calls.remove(id));
    let Some(call_id) = call_id else {
        let message = format!(
            "tool result for call id {}, which is not pending",
            result.call_id
        );
        state.caller_fault = Some(message.clone());
        return Err(CallerFault(message).into());
    };
    let (is_error, payload) = match result.outcome {
        Some(ToolOutcome::ResultJson(json)) => (false, json.into_bytes()),
        Some(ToolOutcome::Error(message)) => (true, message.into_bytes()),
        None => (true, b"the tool returned nothing".to_vec()),
    };
    let packed = u32::try_from(payload.len())
        .ok()
        .and_then(|len| {
            ToolAnswer {
                call_id,
                is_error,
                len,
            }
            .pack()
        })
        .ok_or_else(|| Breach::internal("tool result too large"))?;
    state.taken = payload;
    Ok(packed)
}

/// Bounds a script's error report by the job's result limit, as the result itself is:
/// the name to [`MAX_ERROR_NAME_BYTES`], the message to half the limit, the stack to what
/// is left. Each cut text ends with a marker that gives its full length.
pub fn bound_error(name: &mut String, message: &mut String, stack: &mut String, limit: u64) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    truncate(name, MAX_ERROR_NAME_BYTES.min(limit));
    truncate(message, limit / 2);
    truncate(stack, limit.saturating_sub(name.len() + message.len()));
}

fn truncate(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let marker = format!("… [truncated: {} bytes in all]", text.len());
    let mut end = max.saturating_sub(marker.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    if marker.len() <= max {
        text.push_str(&marker);
    }
}

impl JobState {
    /// What the guest reported through `finish`, as the job's outcome. The report is
    /// the guest's, so it is read as untrusted: any text, bounded here.
    pub fn reported_outcome(&self) -> final_event::Outcome {
        match self.outcome.as_ref() {
            Some(GuestOutcome::Result(json)) => final_event::Outcome::ResultJson(json.clone()),
            Some(GuestOutcome::Error(outcome, json)) => {
                let code = match outcome {
                    Outcome::ScriptError => ErrorCode::ScriptError,
                    Outcome::SyntaxError => ErrorCode::SyntaxError,
                    Outcome::Ok | Outcome::Internal => ErrorCode::Internal,
                };
                final_event::Outcome::Error(self.script_error(code, json))
            }
            None => final_event::Outcome::Error(JobError {
                code: ErrorCode::Internal as i32,
                message: "the engine ended without reporting an outcome".into(),
                ..Default::default()
            }),
        }
    }

    /// Turns the guest's JSON error description into a JobError.
    fn script_error(&self, code: ErrorCode, json: &str) -> JobError {
        let parsed: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        let text = |k: &str| {
            parsed
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let mut message = text("message");
        if message.is_empty() && parsed.is_null() {
            message = json.to_string();
        }
        let (mut name, mut stack) = (text("name"), text("stack"));
        bound_error(
            &mut name,
            &mut message,
            &mut stack,
            self.limits.max_result_bytes,
        );
        // An error at the very end of the input (a missing brace) points at the wrapper's
        // closing line, one past the script's last: report the script's last line instead.
        let script = std::str::from_utf8(&self.job.0).unwrap_or_default();
        let last_line = script.lines().count().max(1) as u64;
        let line = parsed
            .get("line")
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
            .min(last_line);
        JobError {
            code: code as i32,
            message,
            name,
            line: line as u32,
            stack,
        }
    }
}
