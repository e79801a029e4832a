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

use enclave_abi::Outcome;
use rquickjs::context::EvalOptions;
use rquickjs::function::{Func, This};
use rquickjs::promise::PromiseState;
use rquickjs::qjs;
use rquickjs::{Context, Ctx, Function, Object, Persistent, Promise, Runtime, Value};

mod abi;
mod alloc;
mod rng;

/// Filename scripts see in stack traces; the host looks for it to find line numbers.
const SCRIPT_NAME: &std::ffi::CStr = c"script.js";

struct Engine {
    /// Owns the engine the context lives in.
    _rt: Runtime,
    ctx: Context,
    /// `{ serialize, deliver, describe }` from the prelude, kept out of the script's reach.
    internals: Persistent<Object<'static>>,
    /// A second, empty context (no console, no tools: no way out) where a script that
    /// might close the function it is wrapped in is evaluated first; see [`escapes`].
    check: Context,
    /// The check context's own `Function.prototype.toString`, taken before any script ran.
    check_to_string: Persistent<Function<'static>>,
}

thread_local! {
    static ENGINE: RefCell<Option<Engine>> = const { RefCell::new(None) };
    /// Tool calls started and not yet answered.
    static PENDING_TOOLS: Cell<u32> = const { Cell::new(0) };
}

/// Runs once, at snapshot time.
#[unsafe(export_name = "wizer-initialize")]
pub extern "C" fn initialize() {
    let rt = Runtime::new_with_alloc(alloc::FatalOnFailure).expect("QuickJS runtime");
    let ctx = Context::full(&rt).expect("QuickJS context");
    let internals = ctx.with(|ctx| {
        let host = Object::new(ctx.clone())?;
        host.set("console", Func::from(host_console))?;
        host.set("toolStart", Func::from(host_tool_start))?;
        host.set("random", Func::from(rng::next_f64))?;
        let setup: Function =
            ctx.eval_with_options(include_str!("prelude.js"), options("prelude.js"))?;
        let internals: Object = setup.call((host,))?;
        Ok::<_, rquickjs::Error>(Persistent::save(&ctx, internals))
    });
    let internals = internals.expect("prelude");
    let check = Context::full(&rt).expect("QuickJS context");
    let check_to_string = check
        .with(|ctx| {
            let f: Function = ctx.eval("Function.prototype.toString")?;
            Ok::<_, rquickjs::Error>(Persistent::save(&ctx, f))
        })
        .expect("Function.prototype.toString");
    // Collect what set-up left behind so the snapshot starts lean, then set the next
    // collection's threshold as QuickJS itself does after a collection (1.5x the live
    // heap). Without this the snapshot keeps the initial 256 KiB threshold, below the
    // engine's own heap, and every job would begin with a full collection: measured,
    // most of a trivial job's instructions, and a dirty page for every object.
    rt.run_gc();
    let live = rt.memory_usage().malloc_size.max(0) as usize;
    rt.set_gc_threshold(live + live / 2);
    ENGINE.with(|e| {
        *e.borrow_mut() = Some(Engine {
            _rt: rt,
            ctx,
            internals,
            check,
            check_to_string,
        })
    });
}

/// Runs one job to completion and reports through `abi::finish`. The only call the
/// host makes per job: code and input come through `abi::job_take`.
///
/// The engine has no memory limit of its own: the host caps the linear memory and traps
/// the instance when an allocation would grow it past the job's limit, and `alloc.rs`
/// traps on any other failed allocation, so running out of memory ends the job whichever
/// allocation hits it, and no script can catch it.
#[unsafe(no_mangle)]
pub extern "C" fn run(code_len: usize, input_len: usize, seed: u64) {
    let (code, input) = abi::job_take(code_len, input_len);
    rng::seed(seed);
    ENGINE.with(|e| {
        let engine = e.borrow();
        let engine = engine.as_ref().expect("initialised by wizer-initialize");
        // Before entering the job's context: a runtime serves one context at a time.
        let escaped = escapes(engine, &code);
        engine
            .ctx
            .with(|ctx| run_job(&ctx, engine, &code, &input, escaped));
    });
}

fn options(filename: &str) -> EvalOptions {
    let mut opts = EvalOptions::default();
    opts.global = true;
    opts.strict = false;
    opts.filename = Some(filename.to_string());
    opts
}

/// Compiles (`JS_EVAL_FLAG_COMPILE_ONLY`) or runs source text as a global script.
/// Straight through `JS_Eval`, which takes a length: rquickjs's `eval` makes a C string
/// first, which refuses a NUL byte that is valid JavaScript in a string or a comment.
fn eval_raw(ctx: &Ctx<'_>, mut source: Vec<u8>, flags: u32) -> qjs::JSValue {
    let len = source.len();
    source.push(0); // JS_Eval reads one byte past the end
    // SAFETY: `source` is `len` bytes followed by a NUL, as JS_Eval requires, and
    // outlives the call; the context pointer comes from a live `Ctx`. The caller owns
    // the returned value.
    unsafe {
        qjs::JS_Eval(
            ctx.as_raw().as_ptr(),
            source.as_ptr().cast(),
            len as _,
            SCRIPT_NAME.as_ptr(),
            (qjs::JS_EVAL_TYPE_GLOBAL | flags) as i32,
        )
    }
}

/// The script is wrapped as text, `(async function () {` + code + `\n})`; code with an
/// unbalanced `}` could close that function and run statements of its own outside it.
/// Decided the way `new Function` is specified to: the wrapper is evaluated in the empty
/// check context, where whatever might run has nothing to reach, and the function it
/// yields must span the whole wrapper. Only a function whose source text is exactly that
/// span has it (a source text is what the parser took as one function), so no code that
/// closes the wrapper can pass, whatever it evaluates. Code without a `}` cannot close it.
fn escapes(engine: &Engine, code: &[u8]) -> bool {
    if !code.contains(&b'}') {
        return false;
    }
    let mut expected = Vec::with_capacity(code.len() + 24);
    expected.extend_from_slice(b"async function () {");
    expected.extend_from_slice(code);
    expected.extend_from_slice(b"\n}");
    let mut source = Vec::with_capacity(expected.len() + 2);
    source.push(b'(');
    source.extend_from_slice(&expected);
    source.push(b')');
    engine.check.with(|ctx| {
        // SAFETY: `eval_raw` returns an owned value; `from_raw` takes that ownership.
        let value = unsafe { Value::from_raw(ctx.clone(), eval_raw(&ctx, source, 0)) };
        if value.is_exception() {
            let _ = ctx.catch();
            return true;
        }
        let text = engine
            .check_to_string
            .clone()
            .restore(&ctx)
            .and_then(|to_string| to_string.call::<_, String>((This(value),)));
        match text {
            Ok(text) => text.as_bytes() != expected.as_slice(),
            Err(_) => {
                let _ = ctx.catch();
                true
            }
        }
    })
}

fn run_job<'js>(ctx: &Ctx<'js>, engine: &Engine, code: &[u8], input: &[u8], escaped: bool) {
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
    // Compiled first, run only once it is known to stay inside the wrapper.
    let compiled = eval_raw(ctx, source, qjs::JS_EVAL_FLAG_COMPILE_ONLY);
    // SAFETY: reads the tag of a value this function owns.
    if unsafe { qjs::JS_IsException(compiled) } {
        return report_exception(ctx, &internals, Outcome::SyntaxError);
    }
    if escaped {
        // SAFETY: `compiled` is owned and not used again.
        unsafe { qjs::JS_FreeValue(ctx.as_raw().as_ptr(), compiled) };
        return finish_json(
            Outcome::SyntaxError,
            r#"{"name":"SyntaxError","message":"the script closes the function it runs in (a `}` with no `{` of its own)"}"#,
        );
    }
    // SAFETY: JS_EvalFunction takes ownership of `compiled` and returns an owned value,
    // which `from_raw` takes over.
    let promise = unsafe {
        let raw = qjs::JS_EvalFunction(ctx.as_raw().as_ptr(), compiled);
        Value::from_raw(ctx.clone(), raw)
    };
    if promise.is_exception() {
        return report_exception(ctx, &internals, Outcome::ScriptError);
    }
    // The promise is read by the engine's own state, not through `then`: a script that
    // replaces `Promise.prototype.then` or `constructor` cannot keep its outcome from
    // being reported.
    let Some(promise) = promise.into_promise() else {
        return fail_internal("the wrapper did not return a promise");
    };
    loop {
        while ctx.execute_pending_job() {}
        match promise.state() {
            PromiseState::Resolved => return report_result(ctx, &internals, &promise),
            PromiseState::Rejected => {
                // Rethrows the reason as the pending exception.
                let _ = promise.result::<Value>();
                return report_exception(ctx, &internals, Outcome::ScriptError);
            }
            PromiseState::Pending => {}
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

/// Reports the value the script returned, as JSON.
fn report_result<'js>(ctx: &Ctx<'js>, internals: &Object<'js>, promise: &Promise<'js>) {
    let serialized = promise
        .result::<Value>()
        .and_then(Result::ok)
        .and_then(|value| {
            internals
                .get::<_, Function>("serialize")
                .and_then(|f| f.call::<_, String>((value,)))
                .ok()
        });
    match serialized {
        Some(json) => finish_json(Outcome::Ok, &json),
        None => report_exception(ctx, internals, Outcome::ScriptError),
    }
}

/// Reports the pending exception.
fn report_exception<'js>(ctx: &Ctx<'js>, internals: &Object<'js>, kind: Outcome) {
    let exception = ctx.catch();
    let described: Option<String> = internals
        .get::<_, Function>("describe")
        .and_then(|f| f.call((exception,)))
        .ok();
    match described {
        Some(json) => finish_json(kind, &json),
        // `describe` catches everything itself; this is the engine failing to call it.
        None => finish_json(
            kind,
            r#"{"name":"Error","message":"uncaught exception (the thrown value could not be described)"}"#,
        ),
    }
}

fn fail_internal(message: &str) {
    abi::finish(Outcome::Internal, message.as_bytes());
}

fn finish_json(kind: Outcome, json: &str) {
    abi::finish(kind, json.as_bytes());
}

fn host_console(level: i32, text: String) {
    abi::console(level, text.as_bytes());
}

fn host_tool_start(name: String, args_json: String) -> f64 {
    PENDING_TOOLS.set(PENDING_TOOLS.get() + 1);
    f64::from(abi::tool_start(name.as_bytes(), args_json.as_bytes()))
}
