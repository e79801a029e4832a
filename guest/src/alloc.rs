//! The engine's allocator: libc's, as QuickJS uses by default, except that an allocation
//! that fails ends the job. QuickJS would raise a catchable "out of memory" exception,
//! and a script could swallow it and go on; most failures already trap in the host
//! (memory growth past the job's limit), this covers the rest (a single request too
//! large for the allocator to even try).

use std::ffi::c_void;

use rquickjs::allocator::Allocator;

use crate::abi;

unsafe extern "C" {
    fn malloc(size: usize) -> *mut c_void;
    fn calloc(count: usize, size: usize) -> *mut c_void;
    fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void;
    fn free(ptr: *mut c_void);
    fn malloc_usable_size(ptr: *mut c_void) -> usize;
}

pub struct FatalOnFailure;

fn checked(ptr: *mut c_void, requested: bool) -> *mut u8 {
    if ptr.is_null() && requested {
        abi::out_of_memory();
    }
    ptr.cast()
}

// SAFETY: every function forwards to wasi-libc's malloc family, which returns null or a
// region of at least the requested size aligned for any type (16 bytes on wasm32).
unsafe impl Allocator for FatalOnFailure {
    fn alloc(&mut self, size: usize) -> *mut u8 {
        // SAFETY: malloc accepts any size.
        checked(unsafe { malloc(size) }, size != 0)
    }

    fn calloc(&mut self, count: usize, size: usize) -> *mut u8 {
        // SAFETY: calloc accepts any sizes and checks their product for overflow.
        checked(unsafe { calloc(count, size) }, count != 0 && size != 0)
    }

    unsafe fn dealloc(&mut self, ptr: *mut u8) {
        // SAFETY: the caller passes a pointer from this allocator (or null).
        unsafe { free(ptr.cast()) }
    }

    unsafe fn realloc(&mut self, ptr: *mut u8, new_size: usize) -> *mut u8 {
        // SAFETY: the caller passes a pointer from this allocator (or null).
        checked(unsafe { realloc(ptr.cast(), new_size) }, new_size != 0)
    }

    unsafe fn usable_size(ptr: *mut u8) -> usize {
        // SAFETY: the caller passes a pointer from this allocator.
        unsafe { malloc_usable_size(ptr.cast()) }
    }
}
