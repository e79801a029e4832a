//! The guest side of the sandbox: a QuickJS engine compiled to `wasm32-wasip1`.
//!
//! The executor snapshots this module after `wizer-initialize` has created the runtime,
//! the context and the prelude (`prelude.js`), so a job starts from a ready engine. Each
//! job runs in a fresh instance of that snapshot: nothing a script does survives it.
//!
//! The host ABI (module `enclave`) is deliberately tiny; every limit that must not be
//! bypassable (time, memory, output, tool calls, result size) is enforced by the host,
//! which traps the instance. The guest only reports what happened.

use std::cell::{Cell, RefCell};

use rquickjs::context::EvalOptions;
use rquickjs::function::{Func, Opt};
use rquickjs::{Context, Ctx, Function, Object, Persistent, Runtime, Value};

mod abi;
mod rng;

/// Outcome kinds passed to `abi::finish`; the host maps them to error codes.
#[repr(i32)]
#[derive(Clone, Copy)]
enum Outcome {
    Ok = 0,
    ScriptError = 1,
    SyntaxError = 2,
    OutOfMemory = 3,
}

/// Filename scripts see in stack traces; the host looks for it to find line numbers.
const SCRIPT_NAME: &str = "script.js";

struct Engine {
    rt: Runtime,
    ctx: Context,
    /// `{ settle, deliver, describe }` from the prelude, kept out of the script's reach.
    internals: Persistent<Object<'static>>,
}

thread_local! {
    static ENGINE: RefCell<Option<Engine>> = const { RefCell::new(None) };
    /// Set by the prelude's `done` once the job's promise settles.
    static DONE: Cell<bool> = const { Cell::new(false) };
    /// Tool calls started and not yet answered.
    static PENDING_TOOLS: Cell<u32> = const { Cell::new(0) };
}

/// Runs once, at snapshot time.
#[unsafe(export_name = "wizer-initialize")]
pub extern "C" fn initialize() {
    let rt = Runtime::new().expect("QuickJS runtime");
    let ctx = Context::full(&rt).expect("QuickJS context");
    let internals = ctx.with(|ctx| {
        let host = Object::new(ctx.clone())?;
        host.set("console", Func::from(host_console))?;
        host.set("toolStart", Func::from(host_tool_start))?;
        host.set("done", Func::from(host_done))?;
        host.set("random", Func::from(rng::next_f64))?;
        let setup: Function =
            ctx.eval_with_options(include_str!("prelude.js"), options("prelude.js"))?;
        let internals: Object = setup.call((host,))?;
        Ok::<_, rquickjs::Error>(Persistent::save(&ctx, internals))
    });
    let internals = internals.expect("prelude");
    // Collect what set-up left behind so the snapshot starts lean, then set the next
    // collection's threshold as QuickJS itself does after a collection (1.5x the live
    // heap). Without this the snapshot keeps the initial 256 KiB threshold, below the
    // engine's own heap, and every job would begin with a full collection: measured,
    // most of a trivial job's instructions, and a dirty page for every object.
    rt.run_gc();
    let live = rt.memory_usage().malloc_size.max(0) as usize;
    rt.set_gc_threshold(live + live / 2);
    ENGINE.with(|e| *e.borrow_mut() = Some(Engine { rt, ctx, internals }));
}

/// Runs one job to completion and reports through `abi::finish`. The only call the
/// host makes per job: code and input come through `abi::job_take`.
#[unsafe(no_mangle)]
pub extern "C" fn run(code_len: usize, input_len: usize, seed: u64, memory_limit: u64) {
    let (code, input) = abi::job_take(code_len, input_len);
    rng::seed(seed);
    ENGINE.with(|e| {
        let engine = e.borrow();
        let engine = engine.as_ref().expect("initialised by wizer-initialize");
        engine.rt.set_memory_limit(memory_limit as usize);
        engine.ctx.with(|ctx| run_job(&ctx, engine, &code, &input));
    });
}

fn options(filename: &str) -> EvalOptions {
    let mut opts = EvalOptions::default();
    opts.global = true;
    opts.strict = false;
    opts.filename = Some(filename.to_string());
    opts
}

fn run_job<'js>(ctx: &Ctx<'js>, engine: &Engine, code: &[u8], input: &[u8]) {
    let internals = match engine.internals.clone().restore(ctx) {
        Ok(i) => i,
        Err(e) => return fail_internal(&format!("prelude lost: {e}")),
    };
    if !input.is_empty() {
        match ctx.json_parse(input.to_vec()) {
            Ok(value) => {
                if ctx.globals().set("input", value).is_err() {
                    return report_exception(ctx, &internals, Outcome::ScriptError);
                }
            }
            Err(_) => return report_exception(ctx, &internals, Outcome::ScriptError),
        }
    }
    // The script is the body of an async function, so top-level `await` and `return` work.
    // The prefix has no newline: line numbers in errors are the script's own.
    let mut source = Vec::with_capacity(code.len() + 64);
    source.extend_from_slice(b"(async function () {");
    source.extend_from_slice(code);
    source.extend_from_slice(b"\n})()");
    let promise: Value = match ctx.eval_with_options(source, options(SCRIPT_NAME)) {
        Ok(p) => p,
        Err(_) => return report_exception(ctx, &internals, Outcome::SyntaxError),
    };
    let settle: Function = match internals.get("settle") {
        Ok(f) => f,
        Err(e) => return fail_internal(&format!("prelude broken: {e}")),
    };
    if settle.call::<_, ()>((promise,)).is_err() {
        return report_exception(ctx, &internals, Outcome::ScriptError);
    }
    loop {
        while ctx.execute_pending_job() {}
        if DONE.get() {
            return;
        }
        if PENDING_TOOLS.get() == 0 {
            return finish_json(
                Outcome::ScriptError,
                r#"{"name":"Error","message":"the script is waiting for a promise that can never settle (no tool call is pending)"}"#,
            );
        }
        let (call_id, is_error, payload) = abi::wait_tool_result();
        PENDING_TOOLS.set(PENDING_TOOLS.get() - 1);
        let deliver: Function = match internals.get("deliver") {
            Ok(f) => f,
            Err(e) => return fail_internal(&format!("prelude broken: {e}")),
        };
        let payload = String::from_utf8_lossy(&payload).into_owned();
        if deliver.call::<_, ()>((call_id, is_error, payload)).is_err() {
            return report_exception(ctx, &internals, Outcome::ScriptError);
        }
    }
}

/// Reports the pending exception; QuickJS's own "out of memory" gets its own outcome.
fn report_exception<'js>(ctx: &Ctx<'js>, internals: &Object<'js>, kind: Outcome) {
    let exception = ctx.catch();
    let described: Option<String> = internals
        .get::<_, Function>("describe")
        .and_then(|f| f.call((exception,)))
        .ok();
    match described {
        Some(json) => {
            let kind = if json.contains(r#""message":"out of memory""#) {
                Outcome::OutOfMemory
            } else {
                kind
            };
            finish_json(kind, &json)
        }
        // Describing failed: almost always because memory is exhausted.
        None => finish_json(
            Outcome::OutOfMemory,
            r#"{"name":"InternalError","message":"out of memory"}"#,
        ),
    }
}

fn fail_internal(message: &str) {
    abi::finish(-1, message.as_bytes());
}

fn finish_json(kind: Outcome, json: &str) {
    DONE.set(true);
    abi::finish(kind as i32, json.as_bytes());
}

fn host_console(level: i32, text: String) {
    abi::console(level, text.as_bytes());
}

fn host_tool_start(name: String, args_json: String) -> f64 {
    PENDING_TOOLS.set(PENDING_TOOLS.get() + 1);
    f64::from(abi::tool_start(name.as_bytes(), args_json.as_bytes()))
}

/// Called by the prelude when the job's promise settles: `ok` with the result's JSON, or
/// an error description (JSON) otherwise.
fn host_done(ok: bool, json: String, oom: Opt<bool>) {
    let kind = match (ok, oom.0.unwrap_or(false)) {
        (true, _) => Outcome::Ok,
        (false, true) => Outcome::OutOfMemory,
        (false, false) => Outcome::ScriptError,
    };
    finish_json(kind, &json);
}
