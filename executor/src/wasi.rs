//! The few WASI preview-1 functions the guest's C library imports, implemented by hand.
//!
//! The guest gets no files, no environment, no arguments and no sockets: these stubs
//! are the whole of its view of the outside world, which is why they replace the
//! `wasmtime-wasi` crate (a far larger surface). Anything else it might import is
//! linked as a trap by `Linker::define_unknown_imports_as_traps`.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;
use wasmtime::{Caller, Extern, Linker, Memory};

use crate::host::{Breach, JobState};

const MODULE: &str = "wasi_snapshot_preview1";

// errno values from the WASI preview-1 spec.
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const ERRNO_SPIPE: i32 = 70;

/// Clocks are coarsened to this resolution: scripts have no business measuring time
/// finely, and fine timers are what timing side channels are built from.
const CLOCK_RESOLUTION_NS: u64 = 1_000_000;

pub fn add_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    linker.func_wrap(MODULE, "environ_sizes_get", sizes_get_none)?;
    linker.func_wrap(MODULE, "args_sizes_get", sizes_get_none)?;
    linker.func_wrap(
        MODULE,
        "environ_get",
        |_: Caller<'_, JobState>, _: i32, _: i32| ERRNO_SUCCESS,
    )?;
    linker.func_wrap(
        MODULE,
        "args_get",
        |_: Caller<'_, JobState>, _: i32, _: i32| ERRNO_SUCCESS,
    )?;
    linker.func_wrap(MODULE, "clock_time_get", clock_time_get)?;
    linker.func_wrap(
        MODULE,
        "clock_res_get",
        |mut c: Caller<'_, JobState>, _id: i32, out: i32| {
            write(&mut c, out, &CLOCK_RESOLUTION_NS.to_le_bytes())
        },
    )?;
    linker.func_wrap(MODULE, "random_get", random_get)?;
    linker.func_wrap(MODULE, "fd_write", fd_write)?;
    linker.func_wrap(MODULE, "fd_fdstat_get", fd_fdstat_get)?;
    linker.func_wrap(MODULE, "fd_close", |_: Caller<'_, JobState>, fd: i32| {
        if (0..=2).contains(&fd) {
            ERRNO_SUCCESS
        } else {
            ERRNO_BADF
        }
    })?;
    linker.func_wrap(
        MODULE,
        "fd_seek",
        |_: Caller<'_, JobState>, fd: i32, _: i64, _: i32, _: i32| {
            if (0..=2).contains(&fd) {
                ERRNO_SPIPE
            } else {
                ERRNO_BADF
            }
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_prestat_get",
        |_: Caller<'_, JobState>, _: i32, _: i32| ERRNO_BADF,
    )?;
    linker.func_wrap(
        MODULE,
        "fd_prestat_dir_name",
        |_: Caller<'_, JobState>, _: i32, _: i32, _: i32| ERRNO_BADF,
    )?;
    linker.func_wrap(MODULE, "sched_yield", |_: Caller<'_, JobState>| {
        ERRNO_SUCCESS
    })?;
    linker.func_wrap(
        MODULE,
        "proc_exit",
        |_: Caller<'_, JobState>, code: i32| -> wasmtime::Result<()> {
            Err(Breach::internal(format!("the engine exited with status {code}")).into())
        },
    )?;
    Ok(())
}

fn memory(caller: &mut Caller<'_, JobState>) -> Option<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m),
        _ => None,
    }
}

fn write(caller: &mut Caller<'_, JobState>, ptr: i32, bytes: &[u8]) -> i32 {
    match memory(caller) {
        Some(m) if m.write(&mut *caller, ptr as u32 as usize, bytes).is_ok() => ERRNO_SUCCESS,
        _ => ERRNO_FAULT,
    }
}

fn sizes_get_none(mut caller: Caller<'_, JobState>, count: i32, size: i32) -> i32 {
    let e = write(&mut caller, count, &0u32.to_le_bytes());
    if e != ERRNO_SUCCESS {
        return e;
    }
    write(&mut caller, size, &0u32.to_le_bytes())
}

fn clock_time_get(mut caller: Caller<'_, JobState>, id: i32, _precision: i64, out: i32) -> i32 {
    let ns = match id {
        // realtime
        0 => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        // monotonic, process and thread CPU time: time since the job started
        1..=3 => caller.data().started.elapsed().as_nanos() as u64,
        _ => return ERRNO_INVAL,
    };
    let coarse = ns - ns % CLOCK_RESOLUTION_NS;
    write(&mut caller, out, &coarse.to_le_bytes())
}

fn random_get(mut caller: Caller<'_, JobState>, ptr: i32, len: i32) -> i32 {
    let Some(m) = memory(&mut caller) else {
        return ERRNO_FAULT;
    };
    let (start, len) = (ptr as u32 as usize, len as u32 as usize);
    match m
        .data_mut(&mut caller)
        .get_mut(start..start.saturating_add(len))
    {
        Some(buf) => {
            rand::rng().fill_bytes(buf);
            ERRNO_SUCCESS
        }
        None => ERRNO_FAULT,
    }
}

/// Accepts writes to stdout/stderr and drops them: the engine only writes there when it
/// is about to abort, and scripts reach the console through the `enclave` imports.
fn fd_write(
    mut caller: Caller<'_, JobState>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    nwritten: i32,
) -> i32 {
    if !(1..=2).contains(&fd) {
        return ERRNO_BADF;
    }
    let Some(m) = memory(&mut caller) else {
        return ERRNO_FAULT;
    };
    let data = m.data(&caller);
    let mut total: u32 = 0;
    for i in 0..iovs_len.max(0) as usize {
        let at = iovs as u32 as usize + i * 8;
        let Some(iov) = data.get(at..at + 8) else {
            return ERRNO_FAULT;
        };
        let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        total = total.saturating_add(len);
    }
    write(&mut caller, nwritten, &total.to_le_bytes())
}

fn fd_fdstat_get(mut caller: Caller<'_, JobState>, fd: i32, out: i32) -> i32 {
    if !(0..=2).contains(&fd) {
        return ERRNO_BADF;
    }
    // fdstat: filetype u8 (2 = character device), flags u16, rights u64 x2; 24 bytes.
    let mut stat = [0u8; 24];
    stat[0] = 2;
    write(&mut caller, out, &stat)
}
