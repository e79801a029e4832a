//! Imports from the host (module `enclave`, names as `enclave_abi::import` gives them:
//! `#[link_name]` takes literals only, and the host refuses a guest whose imports the
//! ABI does not define). Pointers and lengths are offsets into this instance's linear
//! memory. Any of them may trap when a limit is crossed; the host then discards the
//! instance.
//!
//! Every call below is sound for the same reason: each pointer comes from a live slice
//! or vector with its own length beside it, the host reads or writes only within
//! `[ptr, ptr + len)` of this instance's memory (and traps the instance rather than
//! go outside it), and no Rust reference to that memory is held across the call.

use enclave_abi::ToolAnswer;

#[link(wasm_import_module = "enclave")]
unsafe extern "C" {
    #[link_name = "console"]
    fn host_console(level: i32, ptr: *const u8, len: usize);
    #[link_name = "tool_start"]
    fn host_tool_start(
        name_ptr: *const u8,
        name_len: usize,
        args_ptr: *const u8,
        args_len: usize,
    ) -> u32;
    /// Blocks until a tool result is ready; returns a packed [`ToolAnswer`].
    #[link_name = "tool_wait"]
    fn host_tool_wait() -> u64;
    /// Copies the result announced by the last `tool_wait` to `ptr`.
    #[link_name = "tool_take"]
    fn host_tool_take(ptr: *mut u8);
    /// Copies the job's code and input (lengths given to `run`) to the two buffers.
    #[link_name = "job_take"]
    fn host_job_take(code_ptr: *mut u8, input_ptr: *mut u8);
    #[link_name = "finish"]
    fn host_finish(kind: i32, ptr: *const u8, len: usize);
    /// Ends the job with MEMORY_LIMIT; never returns.
    #[link_name = "out_of_memory"]
    fn host_out_of_memory();
}

pub fn console(level: i32, text: &[u8]) {
    // SAFETY: see the module comment; the host reads `text` only.
    unsafe { host_console(level, text.as_ptr(), text.len()) }
}

pub fn tool_start(name: &[u8], args_json: &[u8]) -> u32 {
    // SAFETY: see the module comment; the host reads both slices only.
    unsafe {
        host_tool_start(
            name.as_ptr(),
            name.len(),
            args_json.as_ptr(),
            args_json.len(),
        )
    }
}

/// Returns `(call_id, is_error, payload)`.
pub fn wait_tool_result() -> (u32, bool, Vec<u8>) {
    // SAFETY: takes no pointer.
    let answer = ToolAnswer::unpack(unsafe { host_tool_wait() });
    let mut buf = vec![0u8; answer.len as usize];
    // SAFETY: see the module comment; the host writes the `answer.len` bytes it just
    // announced, which is `buf`'s length.
    unsafe { host_tool_take(buf.as_mut_ptr()) };
    (answer.call_id, answer.is_error, buf)
}

/// The job's code and input, `code_len` and `input_len` bytes long.
pub fn job_take(code_len: usize, input_len: usize) -> (Vec<u8>, Vec<u8>) {
    let mut code = vec![0u8; code_len];
    let mut input = vec![0u8; input_len];
    // SAFETY: see the module comment; the host writes exactly the code and input whose
    // lengths it passed to `run`, which are these buffers' lengths.
    unsafe { host_job_take(code.as_mut_ptr(), input.as_mut_ptr()) };
    (code, input)
}

pub fn finish(outcome: enclave_abi::Outcome, payload: &[u8]) {
    // SAFETY: see the module comment; the host reads `payload` only.
    unsafe { host_finish(outcome as i32, payload.as_ptr(), payload.len()) }
}

/// An allocation failed: the host ends the job (it traps the instance).
pub fn out_of_memory() -> ! {
    // SAFETY: the import takes no arguments and touches no guest memory.
    unsafe { host_out_of_memory() };
    // The host never returns from it; if it did, stop here all the same.
    std::process::abort()
}
