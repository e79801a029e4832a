//! Imports from the host (module `enclave`). Pointers and lengths are offsets into this
//! instance's linear memory. Any of them may trap when a limit is crossed; the host then
//! discards the instance.

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
    /// Blocks until a tool result is ready; returns `call_id << 32 | is_error << 31 | len`.
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
    unsafe { host_console(level, text.as_ptr(), text.len()) }
}

pub fn tool_start(name: &[u8], args_json: &[u8]) -> u32 {
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
    let packed = unsafe { host_tool_wait() };
    let call_id = (packed >> 32) as u32;
    let is_error = packed & (1 << 31) != 0;
    let len = (packed & 0x7fff_ffff) as usize;
    let mut buf = vec![0u8; len];
    unsafe { host_tool_take(buf.as_mut_ptr()) };
    (call_id, is_error, buf)
}

/// The job's code and input, `code_len` and `input_len` bytes long.
pub fn job_take(code_len: usize, input_len: usize) -> (Vec<u8>, Vec<u8>) {
    let mut code = vec![0u8; code_len];
    let mut input = vec![0u8; input_len];
    unsafe { host_job_take(code.as_mut_ptr(), input.as_mut_ptr()) };
    (code, input)
}

pub fn finish(kind: i32, payload: &[u8]) {
    unsafe { host_finish(kind, payload.as_ptr(), payload.len()) }
}

/// An allocation failed: the host ends the job (it traps the instance).
pub fn out_of_memory() -> ! {
    // SAFETY: the import takes no arguments and touches no guest memory.
    unsafe { host_out_of_memory() };
    // The host never returns from it; if it did, stop here all the same.
    std::process::abort()
}
