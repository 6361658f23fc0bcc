//! Turning a forward pass's panic into a `Result`: layers and ops panic on
//! bad input (as Rust's indexing does), and
//! [`ModuleExt::try_forward`](crate::ModuleExt::try_forward) gives callers
//! that must not panic — a training loop, a server — the same message as an
//! error.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

/// A forward pass that panicked: what it said, e.g.
/// `Sequential[0] Linear(10 -> 3): expected input (…, 10), got [2, 7]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ForwardError {
    /// The panic's message: the layer and its place in the model, or the op,
    /// and the shapes.
    pub message: String,
}

thread_local! {
    /// Depth of [`catch_forward`] calls running on this thread; their panics
    /// are returned, not printed.
    static QUIET: Cell<usize> = const { Cell::new(0) };
}

static HOOK: Once = Once::new();

/// Runs `f`, returning its panic as a [`ForwardError`] instead of unwinding
/// further. The panic is not printed on this thread (a panic hook installed
/// once skips it and passes every other panic to the hook it replaced).
pub fn catch_forward<T>(f: impl FnOnce() -> T) -> Result<T, ForwardError> {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) == 0 {
                previous(info)
            }
        }))
    });
    struct Quiet;
    impl Drop for Quiet {
        fn drop(&mut self) {
            QUIET.with(|q| q.set(q.get() - 1));
        }
    }
    QUIET.with(|q| q.set(q.get() + 1));
    let quiet = Quiet;
    let r = catch_unwind(AssertUnwindSafe(f));
    drop(quiet);
    r.map_err(|payload| ForwardError {
        message: match payload.downcast::<String>() {
            Ok(s) => *s,
            Err(p) => p.downcast::<&'static str>().map_or_else(|_| "the forward pass panicked".into(), |s| (*s).into()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors_and_others_still_unwind() {
        assert_eq!(catch_forward(|| 3), Ok(3));
        let e = catch_forward(|| -> () { panic!("layer x: expected {}, got {}", 3, 4) }).unwrap_err();
        assert_eq!(e.message, "layer x: expected 3, got 4");
        let e = catch_forward(|| -> () { std::panic::panic_any(7u8) }).unwrap_err();
        assert_eq!(e.message, "the forward pass panicked");
        // Nested: the inner one is caught, the outer goes on.
        assert_eq!(
            catch_forward(|| catch_forward(|| -> () { panic!("inner") }).unwrap_err().message),
            Ok("inner".into())
        );
        // Outside, panics unwind as before.
        assert!(std::panic::catch_unwind(|| panic!("plain")).is_err());
    }
}
