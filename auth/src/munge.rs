//! A small safe wrapper of libmunge (Debian's `libmunge-dev`): a credential for a payload, made
//! by the local `munged`, and the uid and payload of a credential, checked by it. MUNGE is what
//! SLURM's tools and daemons use; every host of a cluster runs `munged` with one shared key, and
//! `munged` refuses a credential decoded twice (replay) or past its time to live (5 min).
//! libmunge is linked statically, so the tools still load no library but glibc.
#![allow(unsafe_code)]

use crate::AuthError;
use std::ffi::{c_char, c_int, c_void, CStr, CString};

extern "C" {
    fn munge_encode(cred: *mut *mut c_char, ctx: *mut c_void, buf: *const c_void, len: c_int) -> c_int;
    fn munge_decode(
        cred: *const c_char,
        ctx: *mut c_void,
        buf: *mut *mut c_void,
        len: *mut c_int,
        uid: *mut libc::uid_t,
        gid: *mut libc::gid_t,
    ) -> c_int;
    fn munge_strerror(e: c_int) -> *const c_char;
}

/// `EMUNGE_SOCKET`: `munged` could not be reached.
const EMUNGE_SOCKET: c_int = 6;

/// What a valid credential says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub uid: u32,
    pub gid: u32,
    pub payload: Vec<u8>,
}

fn error_text(code: c_int) -> String {
    // SAFETY: munge_strerror returns a pointer to a static string for any code (never freed).
    let text = unsafe { munge_strerror(code) };
    if text.is_null() {
        return format!("MUNGE error {code}");
    }
    // SAFETY: non-null, NUL-terminated and static, as above.
    unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned()
}

fn failure(what: &str, code: c_int) -> AuthError {
    if code == EMUNGE_SOCKET {
        return AuthError::MungedUnreachable(format!("{what}: {} (is munged running on this host?)", error_text(code)));
    }
    AuthError::Munge(format!("{what}: {}", error_text(code)))
}

/// A credential for the calling process's uid and gid, carrying `payload`.
pub fn encode(payload: &[u8]) -> Result<String, AuthError> {
    let len = c_int::try_from(payload.len()).map_err(|_| AuthError::Munge("the MUNGE payload is too large".into()))?;
    let mut cred: *mut c_char = std::ptr::null_mut();
    // SAFETY: `payload` is valid for `len` bytes; libmunge writes a malloc'd string to `cred`.
    let code = unsafe { munge_encode(&mut cred, std::ptr::null_mut(), payload.as_ptr().cast(), len) };
    if cred.is_null() {
        return Err(failure("cannot get a MUNGE credential", code));
    }
    // SAFETY: libmunge made `cred` a NUL-terminated string that we own and free once.
    let text = unsafe { CStr::from_ptr(cred) }.to_string_lossy().into_owned();
    // SAFETY: allocated by libmunge with malloc, not used after this.
    unsafe { libc::free(cred.cast()) };
    if code != 0 {
        return Err(failure("cannot get a MUNGE credential", code));
    }
    Ok(text)
}

/// Checks `credential` with the local `munged`: who made it, and its payload.
pub fn decode(credential: &str) -> Result<Decoded, AuthError> {
    let cred =
        CString::new(credential).map_err(|_| AuthError::Munge("the MUNGE credential holds a NUL byte".into()))?;
    let mut buf: *mut c_void = std::ptr::null_mut();
    let mut len: c_int = 0;
    let (mut uid, mut gid): (libc::uid_t, libc::gid_t) = (0, 0);
    // SAFETY: `cred` is NUL-terminated; the out-pointers are valid for writes.
    let code = unsafe { munge_decode(cred.as_ptr(), std::ptr::null_mut(), &mut buf, &mut len, &mut uid, &mut gid) };
    let payload = if buf.is_null() {
        Vec::new()
    } else {
        let len = usize::try_from(len).unwrap_or(0);
        // SAFETY: libmunge allocated `len` bytes (plus a NUL) at `buf`, which we own.
        let bytes = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }.to_vec();
        // SAFETY: allocated by libmunge with malloc (also on some errors), freed once here.
        unsafe { libc::free(buf) };
        bytes
    };
    if code != 0 {
        return Err(failure("the MUNGE credential was refused", code));
    }
    Ok(Decoded { uid, gid, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `munged` answers here; under CI it must.
    fn munged() -> bool {
        match encode(b"probe") {
            Ok(_) => true,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("SKIPPED: no munged here ({e})");
                false
            }
            Err(e) => panic!("munged must run under CI (.ci/run starts it): {e}"),
        }
    }

    #[test]
    fn a_credential_names_its_maker_carries_its_payload_and_is_taken_once() {
        if !munged() {
            return;
        }
        let credential = encode(b"digest").expect("encode");
        let decoded = decode(&credential).expect("decode");
        assert_eq!(decoded.uid, nix::unistd::getuid().as_raw());
        assert_eq!(decoded.payload, b"digest");
        let again = decode(&credential).unwrap_err().to_string();
        assert!(again.contains("eplayed"), "{again}");
        assert!(decode("MUNGE:garbage:").is_err());
        assert!(decode("a\0b").is_err());
    }
}
