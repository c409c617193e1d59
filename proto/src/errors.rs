//! An error and its causes as text, the one way the workspace prints them.

use std::error::Error;

/// `error`, then each of its sources in order.
pub fn causes<'a>(error: &'a (dyn Error + 'a)) -> impl Iterator<Item = &'a (dyn Error + 'a)> {
    let mut next = Some(error);
    std::iter::from_fn(move || {
        let e = next?;
        next = e.source().map(|s| s as &(dyn Error + 'a));
        Some(e)
    })
}

/// `error: cause: cause`, on one line: for a log field or an answer that has to stand on its own.
pub fn chain(error: &dyn Error) -> String {
    causes(error).map(ToString::to_string).collect::<Vec<_>>().join(": ")
}

/// The error, then each cause on a line of its own (`  caused by: ...`): what a binary's `main`
/// prints once, where a terminal has room (a log line does not: [`chain`]).
pub fn report(error: &dyn Error) -> String {
    let mut lines = causes(error).map(ToString::to_string);
    let first = lines.next().unwrap_or_default();
    lines.fold(first, |text, cause| text + "\n  caused by: " + &cause)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_in_order() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&e), "outer: inner");
        assert_eq!(report(&e), "outer\n  caused by: inner");
        assert_eq!(causes(&e).count(), 2);
        assert_eq!(chain(&std::io::Error::other("alone")), "alone");
    }
}
