//! The kernel/user ABI of Warden.
//!
//! Everything that crosses the kernel boundary lives here: ring-buffer records
//! ([`abi`]), map keys and values ([`maps`]) and the load-time configuration
//! the loader writes into read-only globals ([`config`]). Every type is
//! `#[repr(C)]`, explicitly padded, and its size and field offsets are asserted
//! at compile time, so a change that shifts a field breaks the build, not the
//! decoder. Integer tags cross the boundary, never Rust enums or `bool`s:
//! userspace converts them with `TryFrom` and counts what it cannot convert.
#![no_std]

pub mod abi;
pub mod config;
pub mod maps;

/// Asserts a type's size and the offsets of its fields at compile time.
#[macro_export]
macro_rules! assert_layout {
    ($ty:ty, size = $size:expr $(, $field:ident @ $off:expr)* $(,)?) => {
        const _: () = {
            assert!(::core::mem::size_of::<$ty>() == $size);
            $(assert!(::core::mem::offset_of!($ty, $field) == $off);)*
        };
    };
}
