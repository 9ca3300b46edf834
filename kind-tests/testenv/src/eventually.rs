//! Bounded waits for asynchronous effects, instead of bare sleeps.

use std::future::Future;
use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::time::Instant;

/// Calls `check` every `interval` until it returns `Ok`, and returns that value.
///
/// Fails after `timeout` with the last error `check` returned. `check` is always called at least
/// once, and once more at the deadline.
pub async fn eventually<T, F, Fut>(timeout: Duration, interval: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(anyhow!(
                "condition not met within {timeout:?}; last error: {last:#}"
            ));
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
            if n < 3 {
                Err(anyhow!("not yet {n}"))
            } else {
                Ok(n)
            }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);
    }

    #[tokio::test]
    async fn fails_after_the_bound_with_the_last_error() {
        let err = eventually(
            Duration::from_millis(50),
            Duration::from_millis(10),
            || async { Err::<(), _>(anyhow!("boom")) },
        )
        .await
        .unwrap_err();
        assert!(format!("{err}").contains("boom"), "{err}");
    }

    #[tokio::test]
    async fn assert_eventually_passes_when_the_condition_becomes_true() {
        let calls = AtomicU32::new(0);
        crate::assert_eventually!(Duration::from_secs(5), async {
            calls.fetch_add(1, Ordering::SeqCst) >= 2
        });
    }
}
