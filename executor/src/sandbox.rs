//! The sandbox: a pre-initialised QuickJS module and a fresh instance of it for every job,
//! from one of two pools of instance slots.
//!
//! At start-up the guest is instantiated once, its `wizer-initialize` builds the engine
//! (runtime, context, prelude), and Wizer snapshots the result into a new module. Jobs
//! then instantiate that snapshot from the pooling allocator: its memory is mapped
//! copy-on-write from the module image, so a job pays neither engine start-up nor a
//! copy of the heap, and nothing one job does is visible to the next.
//!
//! The two pools bound what stays resident between jobs by a total, not per slot: a few
//! *warm* slots keep the memory every job touches mapped (a job there takes no page
//! faults on it), and take jobs first; the *cold* slots, enough for every job at once,
//! give all their memory back when a job ends. A burst of large jobs therefore leaves at
//! most [`SandboxConfig::max_resident`] behind, however many slots it used.

use std::sync::Arc;
use std::time::Instant;

use enclave_proto::v1::{
    ErrorCode, FinalEvent, JobError, JobStats, ToolResult, final_event, run_event::Event,
};
use tokio::sync::{Semaphore, mpsc};
use wasmtime::{
    Config, Engine, Extern, InstanceAllocationStrategy, InstancePre, Linker, Module, ModuleExport,
    PoolingAllocationConfig, Store, Trap, TypedFunc, UpdateDeadline,
};
use wasmtime_wizer::{InstanceState, SnapshotVal, ValType, Wizer};

use crate::epoch::EpochTicker;
use crate::host::{self, Breach, CallerFault, JobState};
use crate::limits::{LimitError, Limits};
use crate::wasi;

/// The guest module as built by build.rs (QuickJS compiled to wasm32-wasip1).
pub const GUEST_WASM: &[u8] = include_bytes!(env!("ENCLAVE_GUEST_WASM"));

/// Room in a pooled memory slot beyond the largest job heap, for the engine's own
/// baseline (static data, shadow stack, the snapshot's heap).
const MEMORY_SLOT_SLACK: usize = 32 << 20;

/// Enough for the snapshot's working set, which less would not cover (so would not
/// help); `cargo bench -p enclave-executor` measures it (docs/PERFORMANCE.md).
pub const DEFAULT_KEEP_RESIDENT: usize = 4 << 20;

/// What the warm slots may keep resident in total: 16 slots of 4 MiB, more jobs at once
/// than a small machine's cores run.
pub const DEFAULT_MAX_RESIDENT: usize = 64 << 20;

#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Jobs running at once; sizes the instance pool.
    pub max_concurrent_jobs: u32,
    /// No job's limits may exceed these.
    pub ceiling: Limits,
    /// Native stack for wasm code, which bounds how deeply a script can recurse.
    pub max_wasm_stack: usize,
    /// Bytes of each warm slot's linear memory (and of its table) kept mapped between
    /// jobs and reset in place instead of being returned to the kernel: a job then takes
    /// no page faults on what every job touches. Must cover the snapshot's working set
    /// (about 1.4 MiB) to help at all.
    pub keep_resident: usize,
    /// What all warm slots together may keep resident: there are
    /// `max_resident / keep_resident` of them (at most one per job); 0 means none.
    pub max_resident: usize,
}

impl SandboxConfig {
    /// The number of warm slots.
    pub fn warm_slots(&self) -> u32 {
        let slots = self
            .max_resident
            .checked_div(self.keep_resident)
            .unwrap_or(0);
        u32::try_from(slots)
            .unwrap_or(u32::MAX)
            .min(self.max_concurrent_jobs)
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            max_concurrent_jobs: 256,
            ceiling: Limits::ceiling(),
            max_wasm_stack: 512 << 10,
            keep_resident: DEFAULT_KEEP_RESIDENT,
            max_resident: DEFAULT_MAX_RESIDENT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("configuring wasmtime: {0}")]
    Engine(String),
    #[error("pre-initialising the guest: {0}")]
    Snapshot(String),
}

/// A job ready to run: code, optional JSON input, and resolved limits.
#[derive(Clone, Debug)]
pub struct JobSpec {
    pub code: String,
    pub input_json: String,
    pub limits: Limits,
}

#[derive(Clone, Copy)]
struct Exports {
    memory: ModuleExport,
    run: ModuleExport,
}

/// Instance slots of one pooling engine, with the snapshot compiled for it.
struct Pool {
    engine: Engine,
    pre: InstancePre<JobState>,
    exports: Exports,
    ticker: Arc<EpochTicker>,
}

impl Pool {
    fn new(engine: Engine, module: &Module) -> wasmtime::Result<Pool> {
        let mut linker = linker(&engine)?;
        linker.define_unknown_imports_as_traps(module)?;
        let export = |name: &str| {
            module
                .get_export_index(name)
                .ok_or_else(|| Breach::internal(format!("the guest does not export `{name}`")))
        };
        let exports = Exports {
            memory: export(enclave_abi::MEMORY)?,
            run: export(enclave_abi::RUN)?,
        };
        let pre = linker.instantiate_pre(module)?;
        let ticker = EpochTicker::spawn(&engine);
        Ok(Pool {
            engine,
            pre,
            exports,
            ticker,
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

pub struct Sandbox {
    /// The warm slots and a permit for each free one; `None` without any.
    warm: Option<(Pool, Semaphore)>,
    /// Slots for every job at once, which give their memory back after each.
    cold: Pool,
    /// Linear memory the snapshot starts with; a job's heap limit comes on top.
    memory_baseline: usize,
    config: SandboxConfig,
}

impl Sandbox {
    /// Configures the engine, snapshots the guest and compiles the snapshot. Takes a
    /// couple of seconds (two Cranelift compilations); done once per process.
    pub async fn new(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let engine_error = |e: wasmtime::Error| SandboxError::Engine(format!("{e:#}"));
        let snapshot_error = |e: wasmtime::Error| SandboxError::Snapshot(format!("{e:#}"));
        // One extra cold slot for the snapshot instance made at start-up.
        let cold_engine =
            engine(&config, config.max_concurrent_jobs + 1, 0).map_err(engine_error)?;
        let snapshot = snapshot(&cold_engine, &linker(&cold_engine).map_err(engine_error)?)
            .await
            .map_err(snapshot_error)?;
        let module = Module::new(&cold_engine, &snapshot).map_err(snapshot_error)?;
        // The guest names its imports in literals (`#[link_name]`): one the ABI does not
        // define is a guest out of step with this host.
        if let Some(unknown) = module.imports().find(|i| {
            i.module() == enclave_abi::MODULE && !enclave_abi::IMPORTS.contains(&i.name())
        }) {
            return Err(SandboxError::Snapshot(format!(
                "the guest imports `{}.{}`, which the host ABI (enclave-abi) does not define",
                enclave_abi::MODULE,
                unknown.name()
            )));
        }
        let memory_baseline = match module.get_export(enclave_abi::MEMORY) {
            Some(wasmtime::ExternType::Memory(m)) => (m.minimum() as usize) * (1 << 16),
            _ => return Err(SandboxError::Snapshot("the guest exports no memory".into())),
        };
        let warm = match config.warm_slots() {
            0 => None,
            slots => {
                let engine = engine(&config, slots, config.keep_resident).map_err(engine_error)?;
                let compiled = module.serialize().map_err(snapshot_error)?;
                #[allow(unsafe_code)]
                // SAFETY: `compiled` is what `serialize` produced a moment ago, in this
                // process, from a module of an engine with the same compilation settings
                // (the two differ only in their pools); wasmtime checks that too.
                let module =
                    unsafe { Module::deserialize(&engine, &compiled) }.map_err(snapshot_error)?;
                let pool = Pool::new(engine, &module).map_err(snapshot_error)?;
                Some((pool, Semaphore::new(slots as usize)))
            }
        };
        let cold = Pool::new(cold_engine, &module).map_err(snapshot_error)?;
        Ok(Sandbox {
            warm,
            cold,
            memory_baseline,
            config,
        })
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Whether the epoch thread sleeps because no job has run for a while (see
    /// [`crate::epoch`]); for tests and diagnostics.
    pub fn epoch_ticker_asleep(&self) -> bool {
        self.pools().all(|pool| pool.ticker.is_asleep())
    }

    fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.warm.iter().map(|(pool, _)| pool).chain([&self.cold])
    }

    /// The limits a job gets: its level's preset, its overrides, within our ceilings.
    pub fn limits_for(&self, job: &enclave_proto::v1::Job) -> Result<Limits, LimitError> {
        Limits::resolve(job.level(), job.limits.as_ref(), &self.config.ceiling)
    }

    /// Runs one job in a fresh instance. Console events and tool calls go to `events`;
    /// tool results come from `tool_results`. Returns the final event, or the caller's
    /// protocol fault. Dropping the future stops the job at once.
    pub async fn run(
        &self,
        spec: JobSpec,
        events: mpsc::Sender<Event>,
        tool_results: mpsc::Receiver<ToolResult>,
    ) -> Result<FinalEvent, CallerFault> {
        let JobSpec {
            code,
            input_json,
            limits,
        } = spec;
        let state = JobState::new(
            limits,
            self.memory_baseline,
            events,
            tool_results,
            (code.into_bytes(), input_json.into_bytes()),
        );
        // A warm slot if one is free. The permit outlives the store, whose drop gives the
        // slot back.
        let warm = self
            .warm
            .as_ref()
            .and_then(|(pool, free)| Some((pool, free.try_acquire().ok()?)));
        let pool = warm.as_ref().map_or(&self.cold, |(pool, _)| *pool);
        // Before any guest code runs: the epoch must advance while this job runs, or it
        // would have no time limit.
        let _running = pool.ticker.job_running();
        let mut store = Store::new(&pool.engine, state);
        store.limiter(|s| &mut s.memory_cap);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            let state = ctx.data();
            if Instant::now() >= state.deadline {
                Err(Breach::timeout(&state.limits).into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let run = drive(pool, &mut store).await;
        let state = store.data();
        let stats = JobStats {
            duration_us: state.started.elapsed().as_micros() as u64,
            tool_calls: state.tool_calls,
            console_bytes: state.console_bytes,
            memory_bytes: state.memory_cap.peak_bytes.max(self.memory_baseline) as u64,
        };
        let outcome = match run {
            Ok(()) => state.reported_outcome(),
            Err(error) => {
                if let Some(fault) = error.downcast_ref::<CallerFault>() {
                    return Err(CallerFault(fault.0.clone()));
                }
                final_event::Outcome::Error(trap_error(&error))
            }
        };
        Ok(FinalEvent {
            outcome: Some(outcome),
            stats: Some(stats),
        })
    }
}

/// Instantiates the snapshot in `pool` and runs the job's one guest call.
async fn drive(pool: &Pool, store: &mut Store<JobState>) -> wasmtime::Result<()> {
    let instance = pool.pre.instantiate_async(&mut *store).await?;
    let memory = match instance.get_module_export(&mut *store, &pool.exports.memory) {
        Some(Extern::Memory(m)) => m,
        _ => return Err(Breach::internal("guest memory missing").into()),
    };
    store.data_mut().memory = Some(memory);
    // One call per job: the guest pulls its code and input through `job_take`.
    let run: TypedFunc<(u32, u32, u64), ()> = instance
        .get_module_export(&mut *store, &pool.exports.run)
        .and_then(Extern::into_func)
        .ok_or_else(|| wasmtime::Error::new(Breach::internal("guest export missing")))?
        .typed(&*store)?;
    let state = store.data();
    let code_len =
        u32::try_from(state.job.0.len()).map_err(|_| Breach::internal("code too large"))?;
    let input_len =
        u32::try_from(state.job.1.len()).map_err(|_| Breach::internal("input too large"))?;
    let seed: u64 = rand::random();
    run.call_async(&mut *store, (code_len, input_len, seed))
        .await
}

/// The instance functions every pool links: the `enclave` ABI and the WASI stubs.
fn linker(engine: &Engine) -> wasmtime::Result<Linker<JobState>> {
    let mut linker = Linker::new(engine);
    host::add_to_linker(&mut linker)?;
    wasi::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// An engine whose pool has `slots` instance slots, each keeping `keep_resident` bytes
/// of memory mapped between jobs.
fn engine(config: &SandboxConfig, slots: u32, keep_resident: usize) -> wasmtime::Result<Engine> {
    let slots = slots.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(slots)
        .total_memories(slots)
        .total_tables(slots)
        .total_stacks(slots)
        .max_memory_size(config.ceiling.memory_bytes as usize + MEMORY_SLOT_SLACK)
        .linear_memory_keep_resident(keep_resident)
        // Tables are reset the same way (a few KiB); fiber stacks are not kept: measured,
        // zeroing them costs more than the faults it saves.
        .table_keep_resident(keep_resident)
        // Reset only the pages a job wrote (Linux 6.7+ PAGEMAP_SCAN), not all it kept
        // resident: a trivial job writes ~29 of the snapshot's 352 pages. Off by default
        // in wasmtime; it cuts the fresh-instance median (docs/PERFORMANCE.md).
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut c = Config::new();
    c.epoch_interruption(true)
        .max_wasm_stack(config.max_wasm_stack)
        .async_stack_size(config.max_wasm_stack + (1 << 20))
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&c)
}

/// Runs the guest's initialisation and snapshots the initialised instance.
async fn snapshot(engine: &Engine, linker: &Linker<JobState>) -> wasmtime::Result<Vec<u8>> {
    let wizer = Wizer::new();
    let (cx, instrumented) = wizer.instrument(GUEST_WASM)?;
    let module = Module::new(engine, &instrumented)?;
    let mut linker = linker.clone();
    linker.define_unknown_imports_as_traps(&module)?;
    let (events, _) = mpsc::channel(1);
    let (_, tool_results) = mpsc::channel(1);
    let state = JobState::new(
        Limits::ceiling(),
        usize::MAX / 2,
        events,
        tool_results,
        Default::default(),
    );
    let mut store = Store::new(engine, state);
    store.set_epoch_deadline(1 << 40);
    let instance = linker.instantiate_async(&mut store, &module).await?;
    if let Some(init) = instance.get_func(&mut store, "_initialize") {
        init.typed::<(), ()>(&store)?
            .call_async(&mut store, ())
            .await?;
    }
    instance
        .get_typed_func::<(), ()>(&mut store, wizer.get_init_func())?
        .call_async(&mut store, ())
        .await?;
    wizer
        .snapshot(
            &cx,
            &mut Snapshotting {
                store: &mut store,
                instance,
            },
        )
        .await
}

struct Snapshotting<'a> {
    store: &'a mut Store<JobState>,
    instance: wasmtime::Instance,
}

impl InstanceState for Snapshotting<'_> {
    async fn global_get(&mut self, name: &str, _: ValType) -> SnapshotVal {
        let global = self
            .instance
            .get_global(&mut *self.store, name)
            .expect("wizer names exported globals");
        match global.get(&mut *self.store) {
            wasmtime::Val::I32(x) => SnapshotVal::I32(x),
            wasmtime::Val::I64(x) => SnapshotVal::I64(x),
            wasmtime::Val::F32(x) => SnapshotVal::F32(x),
            wasmtime::Val::F64(x) => SnapshotVal::F64(x),
            wasmtime::Val::V128(x) => SnapshotVal::V128(x.as_u128()),
            other => panic!("unsupported global type in the guest: {other:?}"),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        let memory = self
            .instance
            .get_memory(&mut *self.store, name)
            .expect("wizer names exported memories");
        contents(memory.data(&*self.store))
    }
}

/// The guest finished normally: its own report.
/// The guest was stopped: by a host-side limit (memory included) or a wasm trap.
fn trap_error(error: &wasmtime::Error) -> JobError {
    let (code, message) = if let Some(breach) = error.downcast_ref::<Breach>() {
        (breach.code, breach.message.clone())
    } else if let Some(trap) = error.downcast_ref::<Trap>() {
        match trap {
            Trap::StackOverflow => (
                ErrorCode::StackOverflow,
                "maximum call stack size exceeded: the script recursed too deeply".to_string(),
            ),
            other => (ErrorCode::Internal, format!("the engine stopped: {other}")),
        }
    } else {
        (
            ErrorCode::Internal,
            format!("the engine stopped: {error:#}"),
        )
    };
    JobError {
        code: code as i32,
        message,
        ..Default::default()
    }
}
