//! The executor's host imports (`executor/src/host.rs`), called the way a compromised
//! guest could: any sequence of calls, any pointers and lengths, any bytes in memory, any
//! report through `finish`, any tool results from the caller. Each call either returns or
//! ends the job with a [`Breach`] or a [`CallerFault`] (never a panic, never another
//! error), and whatever leaves the sandbox stays inside the job's limits.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use enclave_executor::Limits;
use enclave_executor::host::{self, Breach, CallerFault, JobState};
use enclave_proto::v1::{ToolResult, final_event, run_event::Event, tool_result::Outcome};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tokio::sync::mpsc;
use wasmtime::{Engine, Instance, Linker, Module, Store};

/// Re-exports every import, so the harness can call each with arguments of its choice.
const GUEST: &str = r#"
(module
  (import "enclave" "console" (func $console (param i32 i32 i32)))
  (import "enclave" "tool_start" (func $tool_start (param i32 i32 i32 i32) (result i32)))
  (import "enclave" "tool_wait" (func $tool_wait (result i64)))
  (import "enclave" "tool_take" (func $tool_take (param i32)))
  (import "enclave" "job_take" (func $job_take (param i32 i32)))
  (import "enclave" "out_of_memory" (func $out_of_memory))
  (import "enclave" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 1 64)
  (func (export "console") (param i32 i32 i32)
    local.get 0 local.get 1 local.get 2 call $console)
  (func (export "tool_start") (param i32 i32 i32 i32) (result i32)
    local.get 0 local.get 1 local.get 2 local.get 3 call $tool_start)
  (func (export "tool_wait") (result i64) call $tool_wait)
  (func (export "tool_take") (param i32) local.get 0 call $tool_take)
  (func (export "job_take") (param i32 i32) local.get 0 local.get 1 call $job_take)
  (func (export "out_of_memory") call $out_of_memory)
  (func (export "finish") (param i32 i32 i32)
    local.get 0 local.get 1 local.get 2 call $finish)
  (func (export "grow") (param i32) (result i32) local.get 0 memory.grow)
)
"#;

/// The module's initial memory, the job's memory baseline.
const PAGE: usize = 1 << 16;

#[derive(Arbitrary, Debug)]
enum Call {
    Console(i32, i32, i32),
    ToolStart(i32, i32, i32, i32),
    ToolWait,
    ToolTake(i32),
    JobTake(i32, i32),
    OutOfMemory,
    Finish(i32, i32, i32),
    Grow(i32),
}

#[derive(Arbitrary, Debug)]
struct Input {
    memory: Vec<u8>,
    code: Vec<u8>,
    input: Vec<u8>,
    /// Limits small enough for inputs to cross them.
    max_console_bytes: u16,
    max_result_bytes: u16,
    max_tool_args_bytes: u16,
    max_tool_calls: u8,
    memory_pages: u8,
    /// What the caller answers, in order: a call id and a result or an error.
    results: Vec<(u64, Option<Result<String, String>>)>,
    calls: Vec<Call>,
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    engine: Engine,
    module: Module,
    linker: Linker<JobState>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let engine = Engine::default();
        let module = Module::new(&engine, GUEST).unwrap();
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Harness {
            runtime,
            engine,
            module,
            linker,
        }
    })
}

fuzz_target!(|input: Input| {
    let harness = harness();
    harness.runtime.block_on(run(harness, input));
});

async fn run(harness: &Harness, input: Input) {
    let limits = Limits {
        timeout: Duration::from_secs(10),
        memory_bytes: u64::from(input.memory_pages) * PAGE as u64,
        max_tool_calls: u32::from(input.max_tool_calls),
        max_console_bytes: u64::from(input.max_console_bytes),
        max_result_bytes: u64::from(input.max_result_bytes),
        max_tool_args_bytes: u64::from(input.max_tool_args_bytes),
    };
    // Room for every event the calls can make: sending never waits.
    let (events_tx, mut events) = mpsc::channel(input.calls.len().max(1));
    let (results_tx, results_rx) = mpsc::channel(input.results.len().max(1));
    for (call_id, outcome) in input.results {
        let outcome = outcome.map(|o| match o {
            Ok(json) => Outcome::ResultJson(json),
            Err(message) => Outcome::Error(message),
        });
        results_tx
            .try_send(ToolResult { call_id, outcome })
            .unwrap();
    }
    // Once they are taken, the caller has gone away.
    drop(results_tx);
    let state = JobState::new(
        limits.clone(),
        PAGE,
        events_tx,
        results_rx,
        (input.code, input.input),
    );
    let mut store = Store::new(&harness.engine, state);
    store.limiter(|s| &mut s.memory_cap);
    let instance = harness
        .linker
        .instantiate_async(&mut store, &harness.module)
        .await
        .unwrap();
    let memory = instance.get_memory(&mut store, "memory").unwrap();
    let n = input.memory.len().min(PAGE);
    memory.write(&mut store, 0, &input.memory[..n]).unwrap();
    store.data_mut().memory = Some(memory);

    for call in input.calls {
        let ended = call_one(&mut store, &instance, call).await;
        if let Err(error) = ended {
            assert!(
                error.downcast_ref::<Breach>().is_some()
                    || error.downcast_ref::<CallerFault>().is_some(),
                "a host call failed with neither a breach nor a caller fault: {error:?}"
            );
            break;
        }
    }

    let state = store.data();
    let mut console = 0u64;
    let mut lines = 0u64;
    while let Ok(event) = events.try_recv() {
        match event {
            Event::Console(line) => {
                console += line.text.len() as u64;
                lines += 1;
            }
            Event::ToolCall(call) => {
                assert!(call.name.len() <= host::MAX_TOOL_NAME_BYTES);
                assert!(call.args_json.len() as u64 <= limits.max_tool_args_bytes * 3);
            }
            other => panic!("the sandbox sent an event of the caller's: {other:?}"),
        }
    }
    assert!(
        console + lines * host::CONSOLE_LINE_OVERHEAD <= limits.max_console_bytes,
        "console output past its limit"
    );
    assert!(state.tool_calls <= limits.max_tool_calls);
    let limit = limits.max_result_bytes as usize;
    match state.reported_outcome() {
        final_event::Outcome::ResultJson(json) => {
            assert!(json.len() <= limit, "a result past its limit")
        }
        final_event::Outcome::Error(error) => {
            // The name keeps up to 256 bytes and the message half the limit whatever the
            // limit; past 512 bytes the three fit in it.
            let reported = error.name.len() + error.message.len() + error.stack.len();
            assert!(
                reported <= limit.max(256) + 128,
                "an error report of {reported} bytes past the result limit of {limit}"
            );
        }
    }
}

async fn call_one(
    store: &mut Store<JobState>,
    instance: &Instance,
    call: Call,
) -> wasmtime::Result<()> {
    macro_rules! call {
        ($name:literal, $params:ty, $results:ty, $args:expr) => {
            instance
                .get_typed_func::<$params, $results>(&mut *store, $name)?
                .call_async(&mut *store, $args)
                .await
                .map(|_| ())
        };
    }
    match call {
        Call::Console(level, ptr, len) => call!("console", (i32, i32, i32), (), (level, ptr, len)),
        Call::ToolStart(a, b, c, d) => {
            call!("tool_start", (i32, i32, i32, i32), i32, (a, b, c, d))
        }
        Call::ToolWait => call!("tool_wait", (), i64, ()),
        Call::ToolTake(ptr) => call!("tool_take", i32, (), ptr),
        Call::JobTake(code, input) => call!("job_take", (i32, i32), (), (code, input)),
        Call::OutOfMemory => call!("out_of_memory", (), (), ()),
        Call::Finish(kind, ptr, len) => call!("finish", (i32, i32, i32), (), (kind, ptr, len)),
        Call::Grow(pages) => call!("grow", i32, i32, pages),
    }
}
