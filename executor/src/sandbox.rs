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
//!
//! Snapshotting and compiling take seconds, which every process start would pay. With a
//! [`SandboxConfig::snapshot_dir`] the compiled snapshot is kept there and the next start
//! maps it in instead (milliseconds); an image build fills the directory once
//! ([`precompile`]), so a new container serves at once. The file's name carries a hash of
//! the guest and of the engine's compilation settings, and wasmtime checks its own
//! version and the CPU's features when loading: a file that does not fit is ignored and
//! the snapshot is compiled again.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use enclave_proto::v1::{
    ErrorCode, FinalEvent, JobError, JobStats, ToolResult, final_event, run_event::Event,
};
use tokio::sync::{Semaphore, mpsc};
use wasmtime::{
    Config, Engine, Extern, InstanceAllocationStrategy, InstancePre, Linker, Module, ModuleExport,
    PoolingAllocationConfig, Store, Trap, TypedFunc, UpdateDeadline,
};
use wasmtime_wizer::{InstanceState, SnapshotVal, ValType, Wizer};

use crate::cpu_time;
use crate::epoch::EpochTicker;
use crate::host::{self, Breach, CallerFault, JobState};
use crate::limits::{LimitError, Limits};
use crate::priority::{Priority, Turn};
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
    /// Where the compiled snapshot is kept between process starts; `None`: compiled at
    /// every start. What is in it runs as native code in this process, so only whoever
    /// may run code as the executor may be able to write there.
    pub snapshot_dir: Option<PathBuf>,
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
            snapshot_dir: None,
        }
    }
}

/// Where the compiled snapshot a sandbox runs came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotSource {
    /// Snapshotted and compiled in this process (and kept, given a directory that takes it).
    Compiled,
    /// Mapped from [`SandboxConfig::snapshot_dir`].
    Loaded,
}

impl std::fmt::Display for SnapshotSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SnapshotSource::Compiled => "compiled",
            SnapshotSource::Loaded => "loaded",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("configuring wasmtime: {0}")]
    Engine(String),
    #[error("pre-initialising the guest: {0}")]
    Snapshot(String),
    #[error("keeping the compiled snapshot in {path}: {error}")]
    Keep {
        path: PathBuf,
        error: std::io::Error,
    },
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
    source: SnapshotSource,
    /// Which running jobs go first (crate::priority).
    priority: Arc<Priority>,
}

impl Sandbox {
    /// Configures the engine and compiles the snapshot, or loads it from
    /// [`SandboxConfig::snapshot_dir`]. Compiling takes a couple of seconds (a Wizer run
    /// and two Cranelift compilations); done once per process.
    pub async fn new(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let engine_error = |e: wasmtime::Error| SandboxError::Engine(format!("{e:#}"));
        let snapshot_error = |e: wasmtime::Error| SandboxError::Snapshot(format!("{e:#}"));
        // One extra cold slot for the snapshot instance made at start-up.
        let cold_engine =
            engine(&config, config.max_concurrent_jobs + 1, 0).map_err(engine_error)?;
        let (module, source) = match &config.snapshot_dir {
            Some(dir) => load_or_keep(&cold_engine, dir).await?,
            None => (compile(&cold_engine).await?, SnapshotSource::Compiled),
        };
        let memory_baseline = match module.get_export(enclave_abi::MEMORY) {
            Some(wasmtime::ExternType::Memory(m)) => (m.minimum() as usize) * (1 << 16),
            _ => return Err(SandboxError::Snapshot("the guest exports no memory".into())),
        };
        let warm = match config.warm_slots() {
            0 => None,
            slots => {
                let engine = engine(&config, slots, config.keep_resident).map_err(engine_error)?;
                let compiled = module.serialize().map_err(snapshot_error)?;
                // SAFETY: `compiled` is what `serialize` produced a moment ago, in this
                // process, from a module of an engine with the same compilation settings
                // (the two differ only in their pools); wasmtime checks that too.
                #[allow(unsafe_code)]
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
            source,
            priority: Priority::new(),
        })
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Whether the snapshot was compiled at start-up or loaded.
    pub fn snapshot_source(&self) -> SnapshotSource {
        self.source
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
        self.run_in_turn(spec, events, tool_results, self.turn())
            .await
            .outcome
    }

    /// A job's place among the running ones, taken when it is admitted: from then on
    /// busy jobs step aside for it, before it even gets a thread.
    pub(crate) fn turn(&self) -> Turn {
        self.priority.start()
    }

    /// [`Sandbox::run`] with the turn taken at admission.
    pub(crate) async fn run_in_turn(
        &self,
        spec: JobSpec,
        events: mpsc::Sender<Event>,
        tool_results: mpsc::Receiver<ToolResult>,
        mut turn: Turn,
    ) -> Ran {
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
        store.epoch_deadline_callback(move |ctx| {
            let state = ctx.data();
            if Instant::now() >= state.deadline {
                return Err(Breach::timeout(&state.limits).into());
            }
            Ok(UpdateDeadline::YieldCustom(1, turn.tick()))
        });
        let mut instantiate = Duration::ZERO;
        let (run, cpu) = cpu_time::measured(drive(pool, &mut store, &mut instantiate)).await;
        let cost = JobCost { instantiate, cpu };
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
                    return Ran {
                        outcome: Err(CallerFault(fault.0.clone())),
                        cost,
                    };
                }
                final_event::Outcome::Error(trap_error(&error))
            }
        };
        Ran {
            outcome: Ok(FinalEvent {
                outcome: Some(outcome),
                stats: Some(stats),
            }),
            cost,
        }
    }
}

/// How a job ended, and what it cost.
pub(crate) struct Ran {
    pub outcome: Result<FinalEvent, CallerFault>,
    pub cost: JobCost,
}

/// What a job cost the machine, for the executor's metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JobCost {
    /// Making its instance from the snapshot.
    pub instantiate: Duration,
    /// CPU time of its thread(s) while they ran it, instantiation included.
    pub cpu: Duration,
}

/// Instantiates the snapshot in `pool` (the time it took in `instantiate`) and runs the
/// job's one guest call.
async fn drive(
    pool: &Pool,
    store: &mut Store<JobState>,
    instantiate: &mut Duration,
) -> wasmtime::Result<()> {
    let began = Instant::now();
    let instantiating = pool.pre.instantiate_async(&mut *store);
    let span = tracing::info_span!("sandbox start");
    let instance = tracing::Instrument::instrument(instantiating, span).await?;
    *instantiate = began.elapsed();
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

/// Compiles the snapshot into `config.snapshot_dir` (which it must name) for later starts
/// to load, and returns the file's path: what an image build runs.
pub async fn precompile(config: &SandboxConfig) -> Result<PathBuf, SandboxError> {
    let engine_error = |e: wasmtime::Error| SandboxError::Engine(format!("{e:#}"));
    let dir = config
        .snapshot_dir
        .as_deref()
        .ok_or_else(|| SandboxError::Engine("no snapshot directory to compile into".into()))?;
    let engine = engine(config, 1, 0).map_err(engine_error)?;
    let module = compile(&engine).await?;
    keep(&engine, &module, dir)
}

/// The snapshot from `dir` if a file there fits this guest and engine; else compiled,
/// and kept in `dir` when it can be (a read-only directory only costs the next start).
async fn load_or_keep(
    engine: &Engine,
    dir: &Path,
) -> Result<(Module, SnapshotSource), SandboxError> {
    let path = snapshot_path(engine, dir);
    if path.exists() {
        // SAFETY: deserialising runs the file's machine code later; the file is trusted
        // like the executable itself (`SandboxConfig::snapshot_dir` says who may write
        // there). wasmtime refuses files from another version, other compilation settings
        // or for CPU features this machine lacks; the name covers the guest.
        #[allow(unsafe_code)]
        match unsafe { Module::deserialize_file(engine, &path) } {
            Ok(module) => return Ok((module, SnapshotSource::Loaded)),
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %format!("{e:#}"),
                "the compiled snapshot does not load here; compiling it again"
            ),
        }
    }
    let module = compile(engine).await?;
    if let Err(e) = keep(engine, &module, dir) {
        tracing::warn!(error = %e, "the compiled snapshot is not kept; the next start compiles it again");
    }
    Ok((module, SnapshotSource::Compiled))
}

/// Writes `module` to its file in `dir`, whole or not at all: processes starting at once
/// may read and write it together.
fn keep(engine: &Engine, module: &Module, dir: &Path) -> Result<PathBuf, SandboxError> {
    let path = snapshot_path(engine, dir);
    let bytes = module
        .serialize()
        .map_err(|e| SandboxError::Snapshot(format!("{e:#}")))?;
    let partial = dir.join(format!(
        ".{}.{}.partial",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("snapshot"),
        std::process::id()
    ));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::File::create(&partial))
        .and_then(|mut file| {
            file.write_all(&bytes)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&partial, &path));
    written.map_err(|error| {
        let _ = std::fs::remove_file(&partial);
        SandboxError::Keep {
            path: path.clone(),
            error,
        }
    })?;
    Ok(path)
}

/// The snapshot's file in `dir`, named for this guest and what compiling it depends on.
fn snapshot_path(engine: &Engine, dir: &Path) -> PathBuf {
    let mut hasher = DefaultHasher::new();
    GUEST_WASM.hash(&mut hasher);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    dir.join(format!("guest-{:016x}.cwasm", hasher.finish()))
}

/// Snapshots the guest and compiles the snapshot for `engine`, checking its imports.
async fn compile(engine: &Engine) -> Result<Module, SandboxError> {
    let snapshot_error = |e: wasmtime::Error| SandboxError::Snapshot(format!("{e:#}"));
    let linker = linker(engine).map_err(snapshot_error)?;
    let snapshot = snapshot(engine, &linker).await.map_err(snapshot_error)?;
    Module::new(engine, &snapshot).map_err(snapshot_error)
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
