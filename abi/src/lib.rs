//! The contract between the sandboxed engine (`guest/`) and its host (`executor/`),
//! defined once: both sides use this crate, so neither can drift from the other.
//!
//! The guest imports functions from module [`MODULE`] ([`IMPORTS`]) and exports
//! [`RUN`], `run(code_len: u32, input_len: u32, seed: u64)`: it pulls the job's code and
//! input with `job_take`, runs it, and reports once through `finish(kind, ptr, len)`
//! with an [`Outcome`]. Tool results come back through `tool_wait`, which answers a
//! [`ToolAnswer`] packed into a `u64`, and `tool_take`, which copies its payload.
#![no_std]

/// The import module of every host function.
pub const MODULE: &str = "enclave";

/// Names of the host functions, all in [`MODULE`].
pub mod import {
    /// `console(level: i32, ptr, len)`: one line of console output.
    pub const CONSOLE: &str = "console";
    /// `tool_start(name_ptr, name_len, args_ptr, args_len) -> call_id`.
    pub const TOOL_START: &str = "tool_start";
    /// `tool_wait() -> u64`: blocks for the next tool result, a packed
    /// [`ToolAnswer`](crate::ToolAnswer).
    pub const TOOL_WAIT: &str = "tool_wait";
    /// `tool_take(ptr)`: copies the payload `tool_wait` announced.
    pub const TOOL_TAKE: &str = "tool_take";
    /// `job_take(code_ptr, input_ptr)`: copies the job's code and input.
    pub const JOB_TAKE: &str = "job_take";
    /// `finish(kind, ptr, len)`: the job's [`Outcome`](crate::Outcome) and payload.
    pub const FINISH: &str = "finish";
    /// `out_of_memory()`: ends the job with MEMORY_LIMIT; never returns.
    pub const OUT_OF_MEMORY: &str = "out_of_memory";
}

/// Every host function the guest may import. The guest names them in `#[link_name]`
/// attributes, which take literals only; the host refuses a guest that imports anything
/// else from [`MODULE`], so the two cannot drift apart.
pub const IMPORTS: [&str; 7] = [
    import::CONSOLE,
    import::TOOL_START,
    import::TOOL_WAIT,
    import::TOOL_TAKE,
    import::JOB_TAKE,
    import::FINISH,
    import::OUT_OF_MEMORY,
];

/// The guest's one entry point per job.
pub const RUN: &str = "run";

/// The guest's linear memory.
pub const MEMORY: &str = "memory";

/// What the guest reports through `finish`.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The payload is the result's JSON.
    Ok = 0,
    /// The script threw; the payload describes the error as JSON.
    ScriptError = 1,
    /// The script did not compile; the payload describes the error as JSON.
    SyntaxError = 2,
    /// The engine failed in a way no script should cause; the payload is a message.
    Internal = -1,
}

impl Outcome {
    /// The outcome `finish` was given; an unknown kind is the engine failing.
    pub fn from_kind(kind: i32) -> Outcome {
        match kind {
            0 => Outcome::Ok,
            1 => Outcome::ScriptError,
            2 => Outcome::SyntaxError,
            _ => Outcome::Internal,
        }
    }
}

/// The answer `tool_wait` returns: which call it answers, whether the payload is an
/// error message (else the result's JSON), and the payload's length, packed as
/// `call_id << 32 | is_error << 31 | len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ToolAnswer {
    pub call_id: u32,
    pub is_error: bool,
    pub len: u32,
}

impl ToolAnswer {
    /// The longest payload the packing can carry.
    pub const MAX_LEN: u32 = 0x7fff_ffff;

    /// `None` when `len` is over [`Self::MAX_LEN`].
    pub fn pack(self) -> Option<u64> {
        (self.len <= Self::MAX_LEN).then(|| {
            (u64::from(self.call_id) << 32) | (u64::from(self.is_error) << 31) | u64::from(self.len)
        })
    }

    pub fn unpack(packed: u64) -> ToolAnswer {
        ToolAnswer {
            call_id: (packed >> 32) as u32,
            is_error: packed & (1 << 31) != 0,
            len: (packed & u64::from(Self::MAX_LEN)) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_answers_survive_packing_and_long_payloads_do_not_pack() {
        for answer in [
            ToolAnswer {
                call_id: 0,
                is_error: false,
                len: 0,
            },
            ToolAnswer {
                call_id: u32::MAX,
                is_error: true,
                len: ToolAnswer::MAX_LEN,
            },
            ToolAnswer {
                call_id: 7,
                is_error: true,
                len: 12,
            },
        ] {
            assert_eq!(ToolAnswer::unpack(answer.pack().unwrap()), answer);
        }
        let too_long = ToolAnswer {
            call_id: 1,
            is_error: false,
            len: ToolAnswer::MAX_LEN + 1,
        };
        assert_eq!(too_long.pack(), None);
    }

    #[test]
    fn outcome_kinds_are_the_numbers_finish_carries() {
        for outcome in [
            Outcome::Ok,
            Outcome::ScriptError,
            Outcome::SyntaxError,
            Outcome::Internal,
        ] {
            assert_eq!(Outcome::from_kind(outcome as i32), outcome);
        }
        assert_eq!(Outcome::from_kind(3), Outcome::Internal);
    }
}
