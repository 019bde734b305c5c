//! The panic boundary, the per-thread last error, and pointer/string conversions.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::smallmind_status;
use crate::error::{Error, Result};

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

pub(crate) fn set_last_error(message: &str) {
    // Interior NULs cannot cross into C; they only come from user text echoed in a message.
    let clean = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // `try_with`: during thread-local teardown (a host calling in from a destructor of its
    // own thread-locals) the message is dropped rather than panicking across the boundary.
    let _ = LAST_ERROR.try_with(|e| {
        if let Ok(mut slot) = e.try_borrow_mut() {
            *slot = Some(clean);
        }
    });
}

pub(crate) fn clear_last_error() {
    let _ = LAST_ERROR.try_with(|e| {
        if let Ok(mut slot) = e.try_borrow_mut() {
            *slot = None;
        }
    });
}

/// Pointer to this thread's last error message (valid until this thread's next call), or NULL.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR
        .try_with(|e| {
            e.try_borrow()
                .ok()
                .and_then(|s| s.as_ref().map(|s| s.as_ptr()))
                .unwrap_or(std::ptr::null())
        })
        .unwrap_or(std::ptr::null())
}

/// Runs `body`, converting its error or panic into a status and the thread's last error.
pub(crate) fn ffi_call(body: impl FnOnce() -> Result<()>) -> smallmind_status {
    clear_last_error();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => smallmind_status::SMALLMIND_OK,
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.kind.into()
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            set_last_error(&format!("internal error (please report): {what}"));
            smallmind_status::SMALLMIND_ERR_INTERNAL
        }
    }
}

/// Borrows a required C string argument as UTF-8.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid during the call.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, name: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(Error::invalid_argument(format!("{name} is NULL")));
    }
    // SAFETY: `ptr` is non-null (checked just above) and, by this fn's # Safety, NUL-terminated and
    // alive for the call.
    let cstr = unsafe { CStr::from_ptr(ptr) };
    cstr.to_str().map_err(|e| {
        Error::invalid_argument(format!(
            "{name} is not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })
}

/// Hands a Rust string to C; freed by `smallmind_string_free`.
pub(crate) fn string_to_c(s: String) -> Result<*mut c_char> {
    CString::new(s)
        .map(CString::into_raw)
        .map_err(|_| Error::internal("a returned string contained a NUL byte"))
}

/// Checks an output pointer before any work is done.
pub(crate) fn out_arg<T>(ptr: *mut T, name: &str) -> Result<()> {
    if ptr.is_null() {
        Err(Error::invalid_argument(format!("{name} is NULL")))
    } else {
        Ok(())
    }
}
