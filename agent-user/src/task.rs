//! Task identity and the standalone task session used by `warden run`.
use std::io;

/// A unique task id: `<name>-<16 hex digits from the kernel CSPRNG>`.
pub fn new_task_id(name: &str) -> io::Result<String> {
    let mut b = [0u8; 8];
    // SAFETY: valid buffer of the given length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(format!("{name}-{:016x}", u64::from_le_bytes(b)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_unique_and_named() {
        let a = super::new_task_id("t").unwrap();
        let b = super::new_task_id("t").unwrap();
        assert!(a.starts_with("t-") && a.len() == 18);
        assert_ne!(a, b);
    }
}
