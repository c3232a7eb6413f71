//! An invocation run on its request's own task, never tied to it.
//!
//! An invocation must go on when whoever asked for it stops waiting: its
//! `wait-ms` ran out, its HTTP client went away (the connection's task
//! drops the handler), or its MCP call answered "pending". Handing every
//! invocation to a task of its own guarantees that, but costs a hand-off
//! (another task, usually another worker woken) on every request, though
//! almost every caller waits for the result. [`Detachable`] keeps the
//! guarantee without the hand-off: its owner runs it in place, and if the
//! owner drops it (or calls [`Detachable::detach`]) before it ends, what is
//! left of it goes on in a task of its own from where it was.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

type Run<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A future run in place by whoever awaits it, that goes on in a task of
/// its own if they stop awaiting it before it ends. Like a task's, its
/// panic is caught and answered as [`Panicked`].
pub struct Detachable<T: Send + 'static> {
    run: Option<Run<T>>,
}

/// The run panicked (a bug); the panic's message.
#[derive(Debug)]
pub struct Panicked(String);

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "it panicked: {}", self.0)
    }
}

fn message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

impl<T: Send + 'static> Detachable<T> {
    pub fn new(run: impl Future<Output = T> + Send + 'static) -> Detachable<T> {
        Detachable {
            run: Some(Box::pin(run)),
        }
    }

    /// Go on in a task of its own from here; `None` once it has ended.
    pub fn detach(mut self) -> Option<tokio::task::JoinHandle<T>> {
        self.run.take().map(tokio::spawn)
    }
}

impl<T: Send + 'static> Future for Detachable<T> {
    type Output = Result<T, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(run) = self.run.as_mut() else {
            return Poll::Ready(Err(Panicked("polled after it ended".into())));
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| run.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => {
                self.run = None;
                Poll::Ready(Ok(value))
            }
            Err(panic) => {
                // A task's panic drops its future too; one that panics
                // again while dropped is not let out either.
                if let Some(run) = self.run.take() {
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| drop(run)));
                }
                Poll::Ready(Err(Panicked(message(panic.as_ref()))))
            }
        }
    }
}

impl<T: Send + 'static> Drop for Detachable<T> {
    fn drop(&mut self) {
        let Some(run) = self.run.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(run);
            }
            // Dropped outside the runtime: only as the process ends, when
            // a task of its own would have been dropped as well.
            Err(_) => tracing::warn!("an unfinished invocation was dropped outside the runtime"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn awaited_it_runs_in_place() {
        let here = std::thread::current().id();
        let ran_on = Detachable::new(async move { std::thread::current().id() })
            .await
            .unwrap();
        assert_eq!(ran_on, here);
    }

    #[tokio::test]
    async fn dropped_before_it_ends_it_goes_on() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let run = {
            let finished = finished.clone();
            Detachable::new(async move {
                let _ = rx.await;
                finished.store(true, Ordering::SeqCst);
            })
        };
        // Polled once (started), then given up on, as a request is.
        let mut run = run;
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(10), &mut run)
                .await
                .is_err()
        );
        drop(run);
        tx.send(()).unwrap();
        for _ in 0..500 {
            if finished.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        panic!("the dropped run did not go on");
    }

    #[tokio::test]
    async fn detached_it_is_a_task_that_finishes() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let mut run = Detachable::new(async move { rx.await.unwrap_or(0) + 1 });
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(5), &mut run)
                .await
                .is_err()
        );
        let task = run.detach().expect("not ended");
        tx.send(41).unwrap();
        assert_eq!(task.await.unwrap(), 42);
    }

    #[tokio::test]
    async fn a_panic_is_answered_not_let_out() {
        let run = Detachable::new(async {
            panic!("boom");
        });
        let answer: Result<(), Panicked> = run.await;
        let e = answer.unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
    }
}
