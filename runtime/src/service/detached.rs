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
//!
//! A run in place advances only while its owner polls it: an owner that
//! waits on anything else meanwhile (MCP sends the client notifications
//! and progress) must move it to its own task first ([`Run::detach_now`]),
//! or the run would stand still, its time limit running on, for as long as
//! the client is slow to read.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A future run in place by whoever awaits it, that goes on in a task of
/// its own if they stop awaiting it before it ends. Like a task's, its
/// panic is caught and answered as [`Panicked`].
pub struct Detachable<T: Send + 'static> {
    run: Option<Boxed<T>>,
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

/// A run awaited in place until [`Run::detach_now`] moves it to a task of
/// its own: for an owner that must also wait on other things (sending the
/// client notifications, a timer), during which a run in place would stand
/// still, its time limit running on.
pub enum Run<T: Send + 'static> {
    Here(Detachable<T>),
    Task(tokio::task::JoinHandle<T>),
}

impl<T: Send + 'static> Run<T> {
    pub fn new(run: impl Future<Output = T> + Send + 'static) -> Run<T> {
        Run::Here(Detachable::new(run))
    }

    /// From here on, a task of its own (if it has not ended).
    pub fn detach_now(&mut self) {
        if let Run::Here(here) = self
            && let Some(task) = std::mem::replace(here, Detachable { run: None }).detach()
        {
            *self = Run::Task(task);
        }
    }
}

impl<T: Send + 'static> Future for Run<T> {
    type Output = Result<T, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Run::Here(here) => Pin::new(here).poll(cx).map_err(|e| e.to_string()),
            Run::Task(task) => Pin::new(task).poll(cx).map_err(|e| e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn awaited_it_runs_in_place_and_detached_in_a_task_of_its_own() {
        tokio::spawn(async {
            let here = tokio::task::id();
            let ran_in = Detachable::new(async { tokio::task::id() }).await.unwrap();
            // The awaiting task's own: no task of its own was made.
            assert_eq!(here, ran_in);
            let mut run = Run::new(async {
                tokio::task::yield_now().await;
                tokio::task::id()
            });
            assert!(futures_poll_once(&mut run).await.is_pending());
            run.detach_now();
            assert!(matches!(run, Run::Task(_)));
            let ran_in = run.await.unwrap();
            assert_ne!(ran_in, here, "detached, it is a task of its own");
        })
        .await
        .unwrap();
    }

    /// Poll `f` once, as a `select!` does before another branch wins.
    async fn futures_poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
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
