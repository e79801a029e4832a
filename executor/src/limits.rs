//! Per-job limits: the four security-level presets (named as enclave-vm names them),
//! per-job overrides, and the executor's ceilings that no override may exceed.

use std::time::Duration;

use enclave_proto::v1::{self, SecurityLevel};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Everything a job is bounded by, resolved from a preset, overrides and ceilings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall clock for the whole job, time spent waiting for tool results included.
    pub timeout: Duration,
    /// Memory the script may use: the sandbox's linear memory may grow this far past
    /// the engine's own baseline; an allocation that would go further ends the job.
    pub memory_bytes: u64,
    pub max_tool_calls: u32,
    /// Bytes of console text (after formatting) over the whole job.
    pub max_console_bytes: u64,
    /// Bytes of the result's JSON.
    pub max_result_bytes: u64,
    /// Bytes of one tool call's JSON arguments.
    pub max_tool_args_bytes: u64,
}

impl Limits {
    /// The preset of a security level; UNSPECIFIED means STANDARD.
    pub fn preset(level: SecurityLevel) -> Limits {
        let (secs, mem_mib, tools, console, result, args) = match level {
            SecurityLevel::Strict => (5, 16, 10, 64 * KIB, 256 * KIB, 64 * KIB),
            SecurityLevel::Secure => (15, 32, 50, 256 * KIB, MIB, 256 * KIB),
            SecurityLevel::Unspecified | SecurityLevel::Standard => {
                (30, 64, 100, MIB, 4 * MIB, MIB)
            }
            SecurityLevel::Permissive => (60, 128, 1000, 10 * MIB, 8 * MIB, 4 * MIB),
        };
        Limits {
            timeout: Duration::from_secs(secs),
            memory_bytes: mem_mib * MIB,
            max_tool_calls: tools,
            max_console_bytes: console,
            max_result_bytes: result,
            max_tool_args_bytes: args,
        }
    }

    /// The default ceilings: the most permissive preset.
    pub fn ceiling() -> Limits {
        Limits::preset(SecurityLevel::Permissive)
    }

    /// What a job asks for: its level's preset with its overrides on top, unchecked.
    /// The broker reads its time limit and tool-call budget from this; only an
    /// executor, which knows its ceilings, can [`resolve`](Self::resolve) it.
    pub fn requested(level: SecurityLevel, overrides: Option<&v1::Limits>) -> Limits {
        let mut limits = Limits::preset(level);
        if let Some(o) = overrides {
            if let Some(ms) = o.timeout_ms {
                limits.timeout = Duration::from_millis(ms);
            }
            set(&mut limits.memory_bytes, o.memory_bytes);
            if let Some(n) = o.max_tool_calls {
                limits.max_tool_calls = n;
            }
            set(&mut limits.max_console_bytes, o.max_console_bytes);
            set(&mut limits.max_result_bytes, o.max_result_bytes);
            set(&mut limits.max_tool_args_bytes, o.max_tool_args_bytes);
        }
        limits
    }

    /// Applies a job's overrides on top of its level's preset. An override above the
    /// ceiling is an error rather than a silent clamp: the caller asked for something
    /// this executor will not give, and should know.
    pub fn resolve(
        level: SecurityLevel,
        overrides: Option<&v1::Limits>,
        ceiling: &Limits,
    ) -> Result<Limits, LimitError> {
        let mut limits = Limits::requested(level, overrides);
        limits.check_ceiling(ceiling)?;
        if limits.timeout.is_zero() {
            return Err(LimitError::Zero("timeout_ms"));
        }
        if limits.memory_bytes < MIN_MEMORY_BYTES {
            return Err(LimitError::TooSmall {
                name: "memory_bytes",
                value: limits.memory_bytes,
                min: MIN_MEMORY_BYTES,
            });
        }
        Ok(limits)
    }

    /// Refuses any limit above the ceiling, whether it came from an override or from a
    /// preset more generous than an operator's ceilings.
    fn check_ceiling(&mut self, ceiling: &Limits) -> Result<(), LimitError> {
        check(
            "timeout_ms",
            self.timeout.as_millis() as u64,
            ceiling.timeout.as_millis() as u64,
        )?;
        check("memory_bytes", self.memory_bytes, ceiling.memory_bytes)?;
        check(
            "max_tool_calls",
            self.max_tool_calls.into(),
            ceiling.max_tool_calls.into(),
        )?;
        check(
            "max_console_bytes",
            self.max_console_bytes,
            ceiling.max_console_bytes,
        )?;
        check(
            "max_result_bytes",
            self.max_result_bytes,
            ceiling.max_result_bytes,
        )?;
        check(
            "max_tool_args_bytes",
            self.max_tool_args_bytes,
            ceiling.max_tool_args_bytes,
        )
    }
}

/// Below this QuickJS cannot even start a job.
pub const MIN_MEMORY_BYTES: u64 = MIB;

fn set(field: &mut u64, value: Option<u64>) {
    if let Some(v) = value {
        *field = v;
    }
}

fn check(name: &'static str, value: u64, max: u64) -> Result<(), LimitError> {
    if value > max {
        Err(LimitError::AboveCeiling { name, value, max })
    } else {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("limit {name} = {value} is above this executor's ceiling of {max}")]
    AboveCeiling {
        name: &'static str,
        value: u64,
        max: u64,
    },
    #[error("limit {name} = {value} is below the minimum of {min}")]
    TooSmall {
        name: &'static str,
        value: u64,
        min: u64,
    },
    #[error("limit {0} must not be zero")]
    Zero(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_documented_table() {
        let strict = Limits::preset(SecurityLevel::Strict);
        assert_eq!(strict.timeout, Duration::from_secs(5));
        assert_eq!(strict.memory_bytes, 16 * MIB);
        assert_eq!(strict.max_tool_calls, 10);
        assert_eq!(strict.max_console_bytes, 64 * KIB);
        let permissive = Limits::preset(SecurityLevel::Permissive);
        assert_eq!(permissive.timeout, Duration::from_secs(60));
        assert_eq!(permissive.memory_bytes, 128 * MIB);
        assert_eq!(permissive.max_tool_calls, 1000);
        assert_eq!(permissive.max_console_bytes, 10 * MIB);
        assert_eq!(
            Limits::preset(SecurityLevel::Unspecified),
            Limits::preset(SecurityLevel::Standard)
        );
    }

    #[test]
    fn overrides_apply_and_ceilings_refuse() {
        let ceiling = Limits::preset(SecurityLevel::Secure);
        let o = v1::Limits {
            timeout_ms: Some(1200),
            max_tool_calls: Some(3),
            ..Default::default()
        };
        let l = Limits::resolve(SecurityLevel::Strict, Some(&o), &ceiling).unwrap();
        assert_eq!(l.timeout, Duration::from_millis(1200));
        assert_eq!(l.max_tool_calls, 3);
        assert_eq!(l.memory_bytes, 16 * MIB);

        let o = v1::Limits {
            memory_bytes: Some(64 * MIB),
            ..Default::default()
        };
        let err = Limits::resolve(SecurityLevel::Strict, Some(&o), &ceiling).unwrap_err();
        assert_eq!(
            err,
            LimitError::AboveCeiling {
                name: "memory_bytes",
                value: 64 * MIB,
                max: 32 * MIB
            }
        );
        // A preset above the ceiling is refused too, not silently granted.
        assert!(Limits::resolve(SecurityLevel::Permissive, None, &ceiling).is_err());
        let o = v1::Limits {
            timeout_ms: Some(0),
            ..Default::default()
        };
        assert_eq!(
            Limits::resolve(SecurityLevel::Strict, Some(&o), &ceiling),
            Err(LimitError::Zero("timeout_ms"))
        );
    }
}
