//! Bounded waits for asynchronous effects, instead of bare sleeps.

use std::future::Future;
use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::time::Instant;

/// Marks an error as permanent: [`eventually`] returns it at once instead of retrying.
#[derive(Debug)]
pub struct Fatal(pub anyhow::Error);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Fatal {}

/// Calls `check` every `interval` until it returns `Ok`, and returns that value.
///
/// Fails after `timeout` with the last error `check` returned, or at once when `check` returns
/// a [`Fatal`] error (e.g. the process being waited for has exited). `check` is always called at
/// least once, and once more at the deadline.
pub async fn eventually<T, F, Fut>(timeout: Duration, interval: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return Ok(value),
            Err(e) if e.downcast_ref::<Fatal>().is_some() => return Err(e),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(anyhow!("condition not met within {timeout:?}; last error: {last:#}"));
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
    }
}

/// Asserts that an async condition becomes true within a bound, polling every 100 ms.
///
/// `assert_eventually!(timeout, async { bool })` or, with a message,
/// `assert_eventually!(timeout, async { bool }, "what was expected: {}", x)`. The block is
/// re-created on each poll, so it may borrow from the test.
#[macro_export]
macro_rules! assert_eventually {
    ($timeout:expr, $cond:expr $(,)?) => {
        $crate::assert_eventually!($timeout, $cond, "{}", stringify!($cond))
    };
    ($timeout:expr, $cond:expr, $($msg:tt)+) => {{
        let timeout: ::std::time::Duration = $timeout;
        let result = $crate::eventually(timeout, ::std::time::Duration::from_millis(100), || async {
            if $cond.await { Ok(()) } else { Err($crate::anyhow::anyhow!("still false")) }
        })
        .await;
        if result.is_err() {
            panic!("not true within {:?}: {}", timeout, format!($($msg)+));
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_the_first_success() {
        let calls = AtomicU32::new(0);
        let value = eventually(Duration::from_secs(5), Duration::from_millis(1), || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            if n < 3 { Err(anyhow!("not yet {n}")) } else { Ok(n) }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);
    }

    #[tokio::test]
    async fn fails_after_the_bound_with_the_last_error() {
        let err = eventually(Duration::from_millis(50), Duration::from_millis(10), || async {
            Err::<(), _>(anyhow!("boom"))
        })
        .await
        .unwrap_err();
        assert!(format!("{err}").contains("boom"), "{err}");
    }

    #[tokio::test]
    async fn stops_at_once_on_a_fatal_error() {
        let calls = AtomicU32::new(0);
        let err = eventually(Duration::from_secs(60), Duration::from_millis(1), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Fatal(anyhow!("gone")).into())
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(format!("{err}").contains("gone"), "{err}");
    }

    #[tokio::test]
    async fn assert_eventually_passes_when_the_condition_becomes_true() {
        let calls = AtomicU32::new(0);
        crate::assert_eventually!(Duration::from_secs(5), async { calls.fetch_add(1, Ordering::SeqCst) >= 2 });
    }
}
