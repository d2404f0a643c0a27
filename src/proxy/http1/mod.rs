//! The HTTP/1.1 codec the direct paths and the raw client share: heads parsed in place
//! into byte ranges (`head`), chunked bodies followed to their end (`chunked`), and the
//! line writer.

pub mod chunked;
pub mod head;

/// Appends `name: value` and the line end.
#[inline]
pub fn push_header(w: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    w.extend_from_slice(name);
    w.extend_from_slice(b": ");
    w.extend_from_slice(value);
    w.extend_from_slice(b"\r\n");
}
